//! Journal segment files and record framing.
//!
//! A segment is `NNNNNNNN.seg` in the journal directory; records are appended whole:
//!
//! ```text
//! magic u32 LE "PGJ1" | len u32 LE | crc32c u32 LE over (len bytes ‖ payload) | payload
//! ```
//! The magic lets recovery tell a torn tail (nothing valid after the damage) from
//! damage in the middle (valid records follow), which must stop the start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
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

/// Opens a segment for appending, creating it (and making its directory entry durable).
pub fn open_for_append(dir: &Path, n: u32) -> io::Result<File> {
    let path = segment_path(dir, n);
    let existed = path.exists();
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    if !existed {
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
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
}
