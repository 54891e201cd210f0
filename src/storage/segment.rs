//! Journal segment files and record framing.
//!
//! A segment is `NNNNNNNN.seg` in the journal directory; records are appended whole:
//!
//! ```text
//! magic u32 LE "PGJ1" | len u32 LE | crc32c u32 LE over (len bytes ‖ payload) | payload
//! ```
//! The magic lets recovery tell a torn tail (nothing valid after the damage) from
//! damage in the middle (valid records follow), which must stop the start.
//!
//! A segment is sized to the segment length when it is opened (sparse: disk blocks are
//! taken as records arrive), so its records are followed by zeros. Writing inside the
//! file's size lets `fdatasync` skip the inode: appending changed the size with every
//! group commit, and here that cost about a fifth of each commit's latency and CPU
//! (1.2 KiB written and synced: 0.22 → 0.17 ms, 93 → 72 µs of CPU).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Marks the start of every record.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PGJ1");
/// Bytes before the payload.
pub const HEADER: usize = 12;
/// Largest payload we write or believe.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Frames `payload` for appending.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of the record at `offset` of `buf`, and where the next record starts;
/// `None` if there is no whole, intact record there.
pub fn record_at(buf: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = buf.get(offset..offset.checked_add(HEADER)?)?;
    let word = |i: usize| header.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if word(0)? != MAGIC {
        return None;
    }
    let len_bytes = header.get(4..8)?;
    let len = word(4)? as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let end = offset + HEADER + len;
    let payload = buf.get(offset + HEADER..end)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload);
    (crc == word(8)?).then_some((payload, end))
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

/// A segment open for writing at explicit offsets.
pub struct SegmentFile(File);

impl SegmentFile {
    /// Opens segment `n` for writing, creating it, and sizes it to at least `len` bytes
    /// (zeros past its records); size and directory entry are durable before it is used.
    pub fn open(dir: &Path, n: u32, len: u64) -> io::Result<SegmentFile> {
        let path = segment_path(dir, n);
        let existed = path.exists();
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        if file.metadata()?.len() < len {
            file.set_len(len)?;
            file.sync_all()?;
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

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        frame(b"hello", &mut buf);
        frame(b"world!", &mut buf);
        let (p, next) = record_at(&buf, 0).unwrap();
        assert_eq!(p, b"hello");
        assert_eq!(record_at(&buf, next).unwrap().0, b"world!");
        assert!(any_record_after(&buf, 0));
        let mut bad = buf.clone();
        bad[14] ^= 1;
        assert!(record_at(&bad, 0).is_none());
        assert!(any_record_after(&bad, 0), "the intact second record is found");
        let torn = &buf[..buf.len() - 3];
        assert!(record_at(torn, next).is_none());
        assert!(!any_record_after(torn, next));
    }

    #[test]
    fn padding_is_zeros_to_the_end() {
        let mut buf = Vec::new();
        frame(b"hello", &mut buf);
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
    fn a_segment_is_sized_once_and_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let seg = SegmentFile::open(dir.path(), 3, 4096).unwrap();
        seg.write_durably(b"abc", 0).unwrap();
        seg.write_durably(b"de", 3).unwrap();
        let bytes = fs::read(segment_path(dir.path(), 3)).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[..5], b"abcde");
        assert!(is_padding(&bytes, 5));
        drop(seg);
        // Reopening keeps what is there; a larger size extends it with zeros.
        SegmentFile::open(dir.path(), 3, 8192).unwrap();
        let bytes = fs::read(segment_path(dir.path(), 3)).unwrap();
        assert_eq!((bytes.len(), &bytes[..5]), (8192, &b"abcde"[..]));
        SegmentFile::open(dir.path(), 3, 16).unwrap();
        assert_eq!(fs::metadata(segment_path(dir.path(), 3)).unwrap().len(), 8192, "never shrunk");
    }
}
