//! Storage: the journal (source of truth) and the sled views derived from it.
//!
//! The data directory is locked first ([`lock`]): one process per directory. On open,
//! every segment is checked record by record, and every record's sequence must be the
//! next one (see [`segment`]); zeros after a segment's last record are its unused end.
//! A damaged record at the very end of the last segment with nothing intact after it is
//! a torn write that was never acknowledged: it is cut off. Damage, a gap, a duplicate
//! or a reordered record anywhere else stops the start with the segment, the offset and
//! the last good record.
//!
//! The views remember the sequence of the last record they applied. Views ahead of the
//! journal are proof that acknowledged records are missing from it (a lost write-back,
//! a bad block, an older copy restored): the node refuses to start rather than serve
//! without them, unless the operator says `--accept-data-loss`. Otherwise the views are
//! brought up to the end of the journal by replay, and rebuilt from scratch only when
//! they are proven bad (corrupt, inconsistent, another layout) — never because a read
//! or write of them failed (a full disk).

pub mod codec;
pub mod journal;
pub mod lock;
pub mod segment;
pub mod views;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use paygate_actors::order::QueryPolicy;

use self::codec::decode_record;
use self::journal::{JournalEnd, JournalHandle, JournalOptions, PROJECT_GATHER};
use self::lock::{DataDirLock, LockError};
use self::segment::{
    any_record_after, is_padding, list_segments, read_segment, record_at, segment_path, written_len, SegmentHeader,
    SEGMENT_HEADER,
};
use self::views::{Applied, Position, ProjectError, Views};

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The data directory (`journal/` and `views/` live below it).
    pub data_dir: PathBuf,
    /// Segment size before rolling.
    pub segment_bytes: u64,
    /// Most records per group commit.
    pub max_batch: usize,
    /// Most records waiting for the writer.
    pub queue: usize,
    /// sled's page cache.
    pub cache_bytes: u64,
    /// Disk kept free beside a new segment; below it writes are refused as when full.
    pub reserve_bytes: u64,
    /// Start even when the views prove that acknowledged records are missing from the
    /// journal, rebuilding the views from what is left. An operator's decision, never a
    /// default.
    pub accept_data_loss: bool,
    /// Active query policy (timers are derived with it).
    pub query_policy: QueryPolicy,
}

/// What to tell an operator about a place in the journal.
fn describe(a: Applied) -> String {
    match a.seq {
        0 => "none (no intact record before it)".to_owned(),
        seq => format!("record {seq}, ending at segment {} offset {}", a.position.segment, a.position.offset),
    }
}

/// Why the node cannot start on this data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A record in the middle of the journal is damaged, missing or out of sequence.
    #[error(
        "journal segment {segment} is damaged at byte offset {offset}: {reason}. The last good record is {last_good}. \
         This is not a torn tail, so nothing will be skipped: restore the journal from a replica or backup \
         (`paygate journal verify` reports what is there)"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// The last intact record before it.
        last_good: String,
    },
    /// The views show records the journal no longer has: acknowledged records are lost.
    #[error(
        "acknowledged records are missing from the journal: the views show {views}, but the journal in {journal} \
         ends at {last_good}. Its tail was lost or damaged (a lost write-back, a bad disk block, an older copy \
         restored). Restore the journal from a replica or backup that has those records \
         (`paygate journal verify` reports what is there); only to serve without them, knowing they are lost, \
         start with --accept-data-loss"
    )]
    DataLoss {
        /// How far the views reflect the journal.
        views: String,
        /// The journal directory.
        journal: PathBuf,
        /// The journal's last intact record.
        last_good: String,
    },
    /// The journal or the views cannot be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The views cannot be read now (not proven bad: they are kept).
    #[error("the views in {dir} cannot be read ({reason}); they are left as they are")]
    ViewsUnreadable {
        /// The views directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The journal does not replay into a consistent state even into fresh views.
    #[error("the journal does not replay consistently: {0}")]
    Inconsistent(String),
    /// Another process holds the data directory.
    #[error(transparent)]
    Locked(#[from] LockError),
}

/// What recovery did, for the log and for benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Records checked.
    pub records: u64,
    /// Records replayed into the views.
    pub replayed: u64,
    /// Bytes cut from a torn tail (in `journal verify`: that would be cut).
    pub torn_bytes: u64,
    /// Whether the views were rebuilt from scratch.
    pub rebuilt_views: bool,
    /// Segments read.
    pub segments: u64,
    /// Where the journal ends.
    pub end: Applied,
    /// How long it took.
    pub millis: u128,
}

/// An opened data directory.
pub struct Storage {
    /// Append side.
    pub journal: JournalHandle,
    /// Read side.
    pub views: Arc<Views>,
    /// What recovery did.
    pub report: RecoveryReport,
    /// This process's hold on the data directory; whoever keeps it keeps the directory.
    pub lock: Arc<DataDirLock>,
    /// The journal's writer and projector, which end once every journal handle is gone.
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

impl Storage {
    /// Stops the journal once everything appended is durable and projected, and closes
    /// the views. Every clone of the journal handle must be gone, or this waits for them.
    pub fn close(self) {
        let Storage { journal, views, threads, lock, .. } = self;
        drop(journal);
        for t in threads {
            let _ = t.join();
        }
        drop(views);
        drop(lock);
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpenError {
    let context = context.into();
    move |source| OpenError::Io { context, source }
}

/// How long [`open_sled`] waits for a database this process is still closing.
const SLED_CLOSING: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a sled database. sled locks its files, and one this process closed a moment
/// ago (a node restarted in-process) is released only once its last handle is gone, so a
/// held lock is waited for, [`SLED_CLOSING`] at most. Under a node, the data directory's
/// own lock rules out any other holder; elsewhere (`paygate sim`) a second process gets
/// sled's error after the wait.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + SLED_CLOSING;
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// How many replayed records go into one atomic views batch.
const REPLAY_CHUNK: usize = 4096;

/// Opens the views, rebuilding them only when they are proven bad.
fn open_views(dir: &Path, opts: &StorageOptions, report: &mut RecoveryReport) -> Result<Views, OpenError> {
    match Views::open(dir, opts.query_policy, opts.cache_bytes) {
        Ok(v) => Ok(v),
        Err(e) if e.proves_views_bad() => {
            tracing::warn!(error = %e, "views unusable; rebuilding them from the journal");
            report.rebuilt_views = true;
            fresh_views(dir, opts)
        }
        Err(e) => Err(OpenError::ViewsUnreadable { dir: dir.to_owned(), reason: e.to_string() }),
    }
}

impl Storage {
    /// Opens `opts.data_dir`, recovers, and starts the journal writer.
    pub fn open(opts: &StorageOptions) -> Result<Storage, OpenError> {
        let started = Instant::now();
        // Before anything below the directory is read, let alone changed.
        let lock = Arc::new(DataDirLock::acquire(&opts.data_dir)?);
        let journal_dir = opts.data_dir.join("journal");
        let views_dir = opts.data_dir.join("views");
        std::fs::create_dir_all(&journal_dir).map_err(io(format!("creating {}", journal_dir.display())))?;
        let mut report = RecoveryReport::default();
        let mut views = open_views(&views_dir, opts, &mut report)?;
        let end = match recover(&journal_dir, &views, &mut report) {
            Ok(end) => end,
            Err(Recovery::Open(OpenError::DataLoss { views: shown, journal, last_good })) => {
                if !opts.accept_data_loss {
                    return Err(OpenError::DataLoss { views: shown, journal, last_good });
                }
                tracing::error!(
                    views = %shown, journal_ends_at = %last_good,
                    "--accept-data-loss: acknowledged records are missing from the journal and are given up; \
                     rebuilding the views from what is left"
                );
                metrics::counter!("paygate_alerts_total", "kind" => "data_loss_accepted").increment(1);
                views = rebuild(views, &views_dir, opts, &mut report)?;
                recover(&journal_dir, &views, &mut report).map_err(Recovery::into_open)?
            }
            Err(Recovery::Open(e)) => return Err(e),
            Err(Recovery::Views(e)) if e.proves_views_bad() => {
                tracing::warn!(error = %e, "views disagree with the journal; rebuilding them from the journal");
                views = rebuild(views, &views_dir, opts, &mut report)?;
                recover(&journal_dir, &views, &mut report).map_err(Recovery::into_open)?
            }
            Err(Recovery::Views(e)) => {
                return Err(OpenError::ViewsUnreadable { dir: views_dir, reason: e.to_string() });
            }
        };
        let views = Arc::new(views);
        let (journal, threads) = JournalHandle::start(
            JournalOptions {
                dir: journal_dir.clone(),
                segment_bytes: opts.segment_bytes,
                max_batch: opts.max_batch,
                queue: opts.queue,
                gather: PROJECT_GATHER,
                reserve_bytes: opts.reserve_bytes,
            },
            end,
            Some(Arc::clone(&views)),
        )
        .map_err(io("starting the journal writer"))?;
        report.millis = started.elapsed().as_millis();
        tracing::info!(
            records = report.records,
            replayed = report.replayed,
            torn_bytes = report.torn_bytes,
            rebuilt_views = report.rebuilt_views,
            millis = report.millis as u64,
            "storage recovered"
        );
        Ok(Storage { journal, views, report, lock, threads })
    }

    /// Checks the journal of `data_dir` against itself and its views, changing nothing
    /// in the journal (a torn tail is reported, not cut): `paygate journal verify`.
    pub fn verify(data_dir: &Path, cache_bytes: u64) -> Result<VerifyReport, OpenError> {
        // Taking the lock would create a mistyped directory; there is nothing to verify.
        if !data_dir.join("journal").is_dir() {
            return Err(OpenError::Io {
                context: format!("{} holds no journal", data_dir.display()),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let _lock = DataDirLock::acquire(data_dir)?;
        let journal_dir = data_dir.join("journal");
        let views_dir = data_dir.join("views");
        let mut report = RecoveryReport::default();
        let scanned = scan(&journal_dir, false, &mut report, |_, _| Ok(()));
        let views = match views_dir.exists() {
            true => match Views::open(&views_dir, QueryPolicy::default(), cache_bytes) {
                Ok(v) => v.applied().map(Some).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            false => Ok(None),
        };
        let damage = match scanned {
            Ok(_) => None,
            Err(e) => Some(e.into_open().to_string()),
        };
        let missing = match (&damage, &views) {
            (None, Ok(Some(a))) if views_ahead(*a, report.end) => Some(*a),
            _ => None,
        };
        Ok(VerifyReport { report, damage, views, missing })
    }
}

/// What `paygate journal verify` found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Segments, records, the torn tail and the end.
    pub report: RecoveryReport,
    /// Damage that stops a start, if any.
    pub damage: Option<String>,
    /// How far the views reflect the journal (none: no views), or why they are unreadable.
    pub views: Result<Option<Applied>, String>,
    /// Set when the views show records the journal lacks.
    pub missing: Option<Applied>,
}

impl VerifyReport {
    /// Whether a node would start on this directory without an operator's decision.
    pub fn is_sound(&self) -> bool {
        self.damage.is_none() && self.missing.is_none()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.report;
        writeln!(f, "segments: {}", r.segments)?;
        writeln!(f, "records:  {} intact, in sequence", r.records)?;
        writeln!(f, "end:      {}", describe(r.end))?;
        if r.torn_bytes > 0 {
            writeln!(f, "torn:     {} bytes of an unacknowledged last write (cut on the next start)", r.torn_bytes)?;
        }
        match &self.views {
            Ok(Some(a)) => writeln!(f, "views:    {}", describe(*a))?,
            Ok(None) => writeln!(f, "views:    none (rebuilt from the journal on the next start)")?,
            Err(e) => writeln!(f, "views:    unreadable: {e}")?,
        }
        if let Some(e) = &self.damage {
            writeln!(f, "DAMAGED:  {e}")?;
        }
        if let Some(a) = self.missing {
            writeln!(
                f,
                "DATA LOSS: the views show {} but the journal ends at {}: acknowledged records are missing",
                describe(a),
                describe(r.end)
            )?;
        }
        if self.is_sound() {
            writeln!(f, "verdict:  sound")?;
        }
        Ok(())
    }
}

/// Drops `views` and starts over with empty ones, keeping what was cut in the report.
fn rebuild(views: Views, dir: &Path, opts: &StorageOptions, report: &mut RecoveryReport) -> Result<Views, OpenError> {
    drop(views);
    let fresh = fresh_views(dir, opts)?;
    *report = RecoveryReport { rebuilt_views: true, torn_bytes: report.torn_bytes, ..RecoveryReport::default() };
    Ok(fresh)
}

fn fresh_views(dir: &Path, opts: &StorageOptions) -> Result<Views, OpenError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    Views::open(dir, opts.query_policy, opts.cache_bytes)
        .map_err(|e| OpenError::ViewsUnreadable { dir: dir.to_owned(), reason: format!("cannot create them: {e}") })
}

enum Recovery {
    Open(OpenError),
    Views(ProjectError),
}

impl Recovery {
    fn into_open(self) -> OpenError {
        match self {
            Recovery::Open(e) => e,
            Recovery::Views(e) => OpenError::Inconsistent(e.to_string()),
        }
    }
}

/// Whether views that applied up to `applied` show more than a journal ending at `end`
/// holds: proof that acknowledged records are missing from it.
fn views_ahead(applied: Applied, end: Applied) -> bool {
    applied.seq > end.seq || (applied.seq == end.seq && applied.position > end.position)
}

/// Checks every record, cuts a torn tail, replays what the views lack; returns where the
/// journal ends, or [`OpenError::DataLoss`] when the views show more than it holds.
fn recover(dir: &Path, views: &Views, report: &mut RecoveryReport) -> Result<JournalEnd, Recovery> {
    let applied = views.applied().map_err(Recovery::Views)?;
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
    let mut chunk_end = Applied::default();
    let mut replayed = 0u64;
    let end = scan(dir, true, report, |payload, here| {
        if here.seq <= applied.seq {
            return Ok(());
        }
        let record = decode_record(payload).map_err(|e| {
            Recovery::Open(OpenError::Inconsistent(format!("record {} does not decode: {e}", here.seq)))
        })?;
        chunk.push(record);
        chunk_end = here;
        if chunk.len() >= REPLAY_CHUNK {
            views.project(chunk.iter(), chunk_end).map_err(Recovery::Views)?;
            replayed += chunk.len() as u64;
            chunk.clear();
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        views.project(chunk.iter(), chunk_end).map_err(Recovery::Views)?;
        replayed += chunk.len() as u64;
    }
    report.replayed = replayed;
    if views_ahead(applied, report.end) {
        return Err(Recovery::Open(OpenError::DataLoss {
            views: describe(applied),
            journal: dir.to_owned(),
            last_good: describe(report.end),
        }));
    }
    Ok(end)
}

/// Reads every segment of `dir` in order, checking framing, checksums and sequences,
/// and hands each intact record to `each` with where it ends. A torn tail is cut when
/// `cut_torn` (recovery), only counted otherwise (verify).
fn scan(
    dir: &Path,
    cut_torn: bool,
    report: &mut RecoveryReport,
    mut each: impl FnMut(&[u8], Applied) -> Result<(), Recovery>,
) -> Result<JournalEnd, Recovery> {
    let segments = list_segments(dir).map_err(|e| Recovery::Open(io(format!("listing {}", dir.display()))(e)))?;
    let mut end = JournalEnd {
        position: Position { segment: segments.last().copied().unwrap_or(0), offset: 0 },
        seq: 0,
        shard_seqs: HashMap::new(),
    };
    let mut last_good = Applied::default();
    for (i, &n) in segments.iter().enumerate() {
        let path = segment_path(dir, n);
        let corrupt = |offset: usize, reason: String, last_good: Applied| {
            Recovery::Open(OpenError::Corrupt {
                segment: path.clone(),
                offset: offset as u64,
                reason,
                last_good: describe(last_good),
            })
        };
        // Nothing trims the journal yet: it starts at segment 0, and no number is skipped.
        if u32::try_from(i).ok() != Some(n) {
            return Err(corrupt(0, format!("segment {i} is missing before it"), last_good));
        }
        let buf = read_segment(&path).map_err(|e| Recovery::Open(io(format!("reading {}", path.display()))(e)))?;
        report.segments += 1;
        let last = i + 1 == segments.len();
        if is_padding(&buf, 0) {
            if last {
                // Created, never written: the writer gives it its header.
                end.position = Position { segment: n, offset: 0 };
                break;
            }
            return Err(corrupt(0, "the segment is empty, yet later segments exist".into(), last_good));
        }
        if buf.starts_with(b"PGJ1") {
            // Never mistaken for a torn write (which would cut it): it is a whole journal.
            return Err(corrupt(
                0,
                "it was written in the earlier journal format (PGJ1, records without sequence numbers), which \
                 this build does not read"
                    .into(),
                last_good,
            ));
        }
        let header = match SegmentHeader::decode(&buf) {
            Some(h) => h,
            None if last && !any_record_after(&buf, 0) => {
                cut_torn_tail(&path, 0, &buf, cut_torn, report).map_err(Recovery::Open)?;
                end.position = Position { segment: n, offset: 0 };
                break;
            }
            None => return Err(corrupt(0, "the segment header is damaged".into(), last_good)),
        };
        if header.segment != n {
            return Err(corrupt(0, format!("its header names segment {}", header.segment), last_good));
        }
        if header.first_seq != end.seq + 1 {
            return Err(corrupt(
                0,
                format!("its first record is number {}, where {} was expected", header.first_seq, end.seq + 1),
                last_good,
            ));
        }
        let mut offset = SEGMENT_HEADER;
        while offset < buf.len() {
            let Some(frame) = record_at(&buf, offset) else {
                if written_len(&buf, offset) == 0 {
                    break; // the segment's unused end
                }
                if last && !any_record_after(&buf, offset) {
                    cut_torn_tail(&path, offset, &buf, cut_torn, report).map_err(Recovery::Open)?;
                    break;
                }
                return Err(corrupt(
                    offset,
                    "checksum or framing mismatch, and intact records follow".into(),
                    last_good,
                ));
            };
            let s = frame.sequence;
            let shard_last = end.shard_seqs.entry(s.shard).or_insert(0);
            if s.seq != end.seq + 1 || s.shard_seq != *shard_last + 1 {
                return Err(corrupt(
                    offset,
                    format!(
                        "record number {} (shard {} number {}) where {} (shard number {}) was expected: a gap, a \
                         duplicate or a record out of order",
                        s.seq,
                        s.shard,
                        s.shard_seq,
                        end.seq + 1,
                        *shard_last + 1
                    ),
                    last_good,
                ));
            }
            *shard_last = s.shard_seq;
            end.seq = s.seq;
            report.records += 1;
            let here = Applied { position: Position { segment: n, offset: frame.next as u64 }, seq: s.seq };
            each(frame.payload, here)?;
            last_good = here;
            offset = frame.next;
        }
        end.position = Position { segment: n, offset: offset as u64 };
    }
    report.end = Applied { position: end.position, seq: end.seq };
    Ok(end)
}

/// A damaged write at `offset` of the last segment with nothing intact after it: a
/// write that was never acknowledged. Cut (recovery) or only counted (verify).
fn cut_torn_tail(
    path: &Path,
    offset: usize,
    buf: &[u8],
    cut: bool,
    report: &mut RecoveryReport,
) -> Result<(), OpenError> {
    report.torn_bytes = written_len(buf, offset) as u64;
    if cut {
        let f = OpenOptions::new().write(true).open(path).map_err(io(format!("opening {}", path.display())))?;
        f.set_len(offset as u64).and_then(|()| f.sync_all()).map_err(io(format!("truncating {}", path.display())))?;
        tracing::warn!(segment = %path.display(), offset, bytes = report.torn_bytes, "cut a torn tail");
    }
    Ok(())
}
