//! Journal segment files and record framing.
//!
//! A segment is `NNNNNNNN.seg` in the journal directory. It opens with a header that
//! names the segment and the sequence number of its first record, then holds records
//! appended whole:
//!
//! ```text
//! header: magic u32 LE "PGS2" | segment u32 | first_seq u64 | 12 zero bytes | crc32c u32 over bytes 4..28
//! record: magic u32 LE "PGJ2" | len u32 | seq u64 | shard u16 | shard_seq u64 | crc32c u32 over bytes 4..26 ‖ payload | payload
//! ```
//! `seq` numbers every record of the journal from 1 without gaps; `shard_seq` numbers the
//! records of one shard the same way, so a shard's history can later move between nodes
//! and be fenced by its sequence. Recovery believes a record only where its sequence is
//! the next one expected: a gap, a duplicate or a reordered record in the middle, a
//! segment renamed or missing, all stop the start. The magic lets recovery tell a torn
//! tail (nothing valid after the damage) from damage in the middle (valid records
//! follow).
//!
//! A segment takes its whole length of disk when it is created (`fallocate`), so a full
//! disk shows when a segment is opened, never in the middle of a group commit; its
//! records are followed by zeros. Writing inside the file's size also lets `fdatasync`
//! skip the inode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Marks the start of every record.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PGJ2");
/// Marks a segment's header.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"PGS2");
/// Bytes before a record's payload.
pub const HEADER: usize = 30;
/// Bytes of a segment's header; its first record starts here.
pub const SEGMENT_HEADER: usize = 32;
/// Largest payload we write or believe.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Where a record stands: its place in the journal and in its shard's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// Position among all records, from 1.
    pub seq: u64,
    /// The shard whose order the record is about.
    pub shard: u16,
    /// Position among that shard's records, from 1.
    pub shard_seq: u64,
}

/// One intact record read from a segment.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The record's encoded payload.
    pub payload: &'a [u8],
    /// Its sequence numbers.
    pub sequence: Sequence,
    /// Where the next record starts.
    pub next: usize,
}

/// Frames `payload` with its sequence numbers for appending.
pub fn frame(payload: &[u8], sequence: Sequence, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&sequence.seq.to_le_bytes());
    out.extend_from_slice(&sequence.shard.to_le_bytes());
    out.extend_from_slice(&sequence.shard_seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(out.get(start + 4..).unwrap_or_default()), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    b.get(i..i + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

/// The record at `offset` of `buf`; `None` if there is no whole, intact record there.
pub fn record_at(buf: &[u8], offset: usize) -> Option<Frame<'_>> {
    let header = buf.get(offset..offset.checked_add(HEADER)?)?;
    if u32_at(header, 0)? != MAGIC {
        return None;
    }
    let len = u32_at(header, 4)? as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let end = offset + HEADER + len;
    let payload = buf.get(offset + HEADER..end)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(header.get(4..26)?), payload);
    if crc != u32_at(header, 26)? {
        return None;
    }
    let sequence = Sequence { seq: u64_at(header, 8)?, shard: u16_at(header, 16)?, shard_seq: u64_at(header, 18)? };
    Some(Frame { payload, sequence, next: end })
}

/// A segment's header: which segment it is and the sequence of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's index (its file name).
    pub segment: u32,
    /// The `seq` of its first record.
    pub first_seq: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.segment.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&[0; 12]);
        let crc = crc32c::crc32c(out.get(start + 4..).unwrap_or_default());
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// The header at the start of `buf`, if it is whole and intact.
    pub fn decode(buf: &[u8]) -> Option<SegmentHeader> {
        let h = buf.get(..SEGMENT_HEADER)?;
        if u32_at(h, 0)? != SEGMENT_MAGIC || crc32c::crc32c(h.get(4..28)?) != u32_at(h, 28)? {
            return None;
        }
        Some(SegmentHeader { segment: u32_at(h, 4)?, first_seq: u64_at(h, 8)? })
    }
}

/// How many bytes from `offset` on are not the zeros at the end of `buf`.
pub fn written_len(buf: &[u8], offset: usize) -> usize {
    buf.get(offset..).map_or(0, |rest| rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1))
}

/// Whether `buf` holds nothing but zeros from `offset` on: the unused end of a segment.
pub fn is_padding(buf: &[u8], offset: usize) -> bool {
    written_len(buf, offset) == 0
}

/// Whether any intact record starts after `offset` in `buf`.
pub fn any_record_after(buf: &[u8], offset: usize) -> bool {
    let magic = MAGIC.to_le_bytes();
    (offset + 1..buf.len().saturating_sub(HEADER - 1))
        .any(|i| buf.get(i..i + 4) == Some(&magic[..]) && record_at(buf, i).is_some())
}

/// The segment file name for index `n`.
pub fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

/// The segment indexes present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|s| s.parse::<u32>().ok()) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Reads a whole segment.
pub fn read_segment(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Takes `len` bytes of disk for `file` (its size becomes at least `len`). Where the
/// filesystem cannot `fallocate`, zeros are written instead: either way the blocks are
/// ours before a record needs them.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            let have = file.metadata()?.len();
            let zeros = vec![0u8; 1 << 20];
            let mut at = have;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(zeros.get(..n).unwrap_or_default(), at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A segment open for writing at explicit offsets.
pub struct SegmentFile(File);

impl SegmentFile {
    /// Opens segment `n` for writing, creating it, and gives it at least `len` bytes of
    /// disk (zeros past its records); size and directory entry are durable before it is
    /// used. A new segment that cannot get its disk is removed again, so a full disk
    /// leaves nothing half made behind.
    pub fn open(dir: &Path, n: u32, len: u64) -> io::Result<SegmentFile> {
        let path = segment_path(dir, n);
        let existed = path.exists();
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        let sized =
            if file.metadata()?.len() < len { reserve(&file, len).and_then(|()| file.sync_all()) } else { Ok(()) };
        if let Err(e) = sized {
            if !existed {
                drop(file);
                let _ = fs::remove_file(&path);
            }
            return Err(e);
        }
        if !existed {
            File::open(dir)?.sync_all()?;
        }
        Ok(SegmentFile(file))
    }

    /// Writes `buf` at `offset` and makes it durable. Past the segment's size (a batch
    /// larger than a segment) the file grows, and the commit also writes the new size.
    pub fn write_durably(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)?;
        self.0.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> Sequence {
        Sequence { seq: n, shard: 3, shard_seq: n + 10 }
    }

    #[test]
    fn frames_round_trip_with_their_sequence_and_detect_damage() {
        let mut buf = Vec::new();
        frame(b"hello", seq(1), &mut buf);
        frame(b"world!", seq(2), &mut buf);
        let first = record_at(&buf, 0).unwrap();
        assert_eq!((first.payload, first.sequence), (&b"hello"[..], seq(1)));
        let second = record_at(&buf, first.next).unwrap();
        assert_eq!((second.payload, second.sequence), (&b"world!"[..], seq(2)));
        assert!(any_record_after(&buf, 0));
        for flip in [5, 9, 17, 20, HEADER + 1] {
            let mut bad = buf.clone();
            bad[flip] ^= 1;
            assert!(record_at(&bad, 0).is_none(), "byte {flip} is covered by the checksum");
        }
        let torn = &buf[..buf.len() - 3];
        assert!(record_at(torn, first.next).is_none());
        assert!(!any_record_after(torn, first.next));
    }

    #[test]
    fn a_segment_header_names_its_segment_and_first_record() {
        let mut buf = Vec::new();
        let h = SegmentHeader { segment: 7, first_seq: 12_345 };
        h.encode(&mut buf);
        assert_eq!(buf.len(), SEGMENT_HEADER);
        assert_eq!(SegmentHeader::decode(&buf), Some(h));
        buf[9] ^= 1;
        assert_eq!(SegmentHeader::decode(&buf), None);
        assert_eq!(SegmentHeader::decode(&[0; SEGMENT_HEADER]), None);
    }

    #[test]
    fn padding_is_zeros_to_the_end() {
        let mut buf = Vec::new();
        frame(b"hello", seq(1), &mut buf);
        let end = buf.len();
        buf.resize(end + 100, 0);
        assert!(is_padding(&buf, end));
        assert!(is_padding(&buf, buf.len()), "an exactly full segment");
        assert_eq!(written_len(&buf, end), 0);
        buf[end + 40] = 7;
        assert!(!is_padding(&buf, end));
        assert_eq!(written_len(&buf, end), 41);
        assert!(!is_padding(&buf, end - 1), "a record is not padding");
    }

    #[test]
    fn a_segment_takes_its_disk_once_and_is_written_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let seg = SegmentFile::open(dir.path(), 3, 1 << 20).unwrap();
        let meta = fs::metadata(segment_path(dir.path(), 3)).unwrap();
        assert!(meta.blocks() * 512 >= 1 << 20, "the blocks are taken, not sparse: {}", meta.blocks());
        seg.write_durably(b"abc", 0).unwrap();
        seg.write_durably(b"de", 3).unwrap();
        let bytes = fs::read(segment_path(dir.path(), 3)).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(&bytes[..5], b"abcde");
        assert!(is_padding(&bytes, 5));
        drop(seg);
        // Reopening keeps what is there; a larger size extends it with zeros.
        SegmentFile::open(dir.path(), 3, 2 << 20).unwrap();
        let bytes = fs::read(segment_path(dir.path(), 3)).unwrap();
        assert_eq!((bytes.len(), &bytes[..5]), (2 << 20, &b"abcde"[..]));
        SegmentFile::open(dir.path(), 3, 16).unwrap();
        assert_eq!(fs::metadata(segment_path(dir.path(), 3)).unwrap().len(), 2 << 20, "never shrunk");
    }
}
