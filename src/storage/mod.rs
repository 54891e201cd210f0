//! Storage: the journal (source of truth) and the sled views derived from it.
//!
//! On open, every segment is checked record by record; zeros after a segment's last
//! record are its unused end. A damaged record at the very end of the last segment
//! with nothing intact after it is a torn write that was never acknowledged: it is cut
//! off. Damage anywhere else stops the start with the segment and offset. The views
//! are then brought up to the end of the journal by replay, and rebuilt from scratch if
//! they are missing, unreadable or inconsistent.

pub mod codec;
pub mod journal;
pub mod segment;
pub mod views;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use paygate_actors::order::QueryPolicy;

use self::codec::decode_record;
use self::journal::{JournalHandle, JournalOptions, PROJECT_GATHER};
use self::segment::{any_record_after, list_segments, read_segment, record_at, segment_path, written_len};
use self::views::{Position, ProjectError, Views};

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
    /// Active query policy (timers are derived with it).
    pub query_policy: QueryPolicy,
}

/// Why the node cannot start on this data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A record in the middle of the journal is damaged.
    #[error(
        "journal segment {segment} is damaged at byte offset {offset} ({reason}); intact records follow, so \
         this is not a torn tail and nothing will be skipped. Restore the segment from a replica or backup"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The journal cannot be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The journal does not replay into a consistent state even into fresh views.
    #[error("the journal does not replay consistently: {0}")]
    Inconsistent(String),
}

/// What recovery did, for the log and for benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Records checked.
    pub records: u64,
    /// Records replayed into the views.
    pub replayed: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
    /// Whether the views were rebuilt from scratch.
    pub rebuilt_views: bool,
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
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Storage {
    /// Stops the journal once everything appended is durable and projected, and closes
    /// the views. Every clone of the journal handle must be gone, or this waits for them.
    pub fn close(self) {
        let Storage { journal, views, threads, .. } = self;
        drop(journal);
        for t in threads {
            let _ = t.join();
        }
        drop(views);
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpenError {
    let context = context.into();
    move |source| OpenError::Io { context, source }
}

/// How many replayed records go into one atomic views batch.
const REPLAY_CHUNK: usize = 4096;

impl Storage {
    /// Opens `opts.data_dir`, recovers, and starts the journal writer.
    pub fn open(opts: &StorageOptions) -> Result<Storage, OpenError> {
        let started = Instant::now();
        let journal_dir = opts.data_dir.join("journal");
        let views_dir = opts.data_dir.join("views");
        std::fs::create_dir_all(&journal_dir).map_err(io(format!("creating {}", journal_dir.display())))?;
        let mut report = RecoveryReport::default();
        let mut views = match Views::open(&views_dir, opts.query_policy, opts.cache_bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "views unreadable; rebuilding them from the journal");
                report.rebuilt_views = true;
                fresh_views(&views_dir, opts)?
            }
        };
        let end = match recover(&journal_dir, &views, &mut report) {
            Ok(end) => end,
            Err(Recovery::Open(e)) => return Err(e),
            Err(Recovery::Views(e)) => {
                tracing::warn!(error = %e, "views disagree with the journal; rebuilding them from the journal");
                drop(views);
                views = fresh_views(&views_dir, opts)?;
                // The first pass may already have cut a torn tail; keep that in the report.
                report =
                    RecoveryReport { rebuilt_views: true, torn_bytes: report.torn_bytes, ..RecoveryReport::default() };
                recover(&journal_dir, &views, &mut report).map_err(|e| match e {
                    Recovery::Open(e) => e,
                    Recovery::Views(e) => OpenError::Inconsistent(e.to_string()),
                })?
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
        Ok(Storage { journal, views, report, threads })
    }
}

fn fresh_views(dir: &Path, opts: &StorageOptions) -> Result<Views, OpenError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    Views::open(dir, opts.query_policy, opts.cache_bytes)
        .map_err(|e| OpenError::Inconsistent(format!("cannot create views: {e}")))
}

enum Recovery {
    Open(OpenError),
    Views(ProjectError),
}

/// Checks every record, cuts a torn tail, replays what the views lack; returns the end.
fn recover(dir: &Path, views: &Views, report: &mut RecoveryReport) -> Result<Position, Recovery> {
    let segments = list_segments(dir).map_err(|e| Recovery::Open(io(format!("listing {}", dir.display()))(e)))?;
    let applied = views.applied().map_err(Recovery::Views)?;
    let mut end = Position { segment: segments.last().copied().unwrap_or(0), offset: 0 };
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
    let mut chunk_end = Position::default();
    for (i, &n) in segments.iter().enumerate() {
        let path = segment_path(dir, n);
        let buf = read_segment(&path).map_err(|e| Recovery::Open(io(format!("reading {}", path.display()))(e)))?;
        let last = i + 1 == segments.len();
        let mut offset = 0usize;
        while offset < buf.len() {
            let Some((payload, next)) = record_at(&buf, offset) else {
                let written = written_len(&buf, offset);
                if written == 0 {
                    break; // the segment's unused end
                }
                if last && !any_record_after(&buf, offset) {
                    cut_tail(&path, offset as u64).map_err(Recovery::Open)?;
                    report.torn_bytes = written as u64;
                    tracing::warn!(segment = %path.display(), offset, bytes = report.torn_bytes, "cut a torn tail");
                    break;
                }
                return Err(Recovery::Open(OpenError::Corrupt {
                    segment: path,
                    offset: offset as u64,
                    reason: "checksum or framing mismatch".into(),
                }));
            };
            report.records += 1;
            let here = Position { segment: n, offset: next as u64 };
            if here > applied {
                let record = decode_record(payload).map_err(|e| {
                    Recovery::Open(OpenError::Corrupt {
                        segment: path.clone(),
                        offset: offset as u64,
                        reason: e.to_string(),
                    })
                })?;
                chunk.push(record);
                chunk_end = here;
                if chunk.len() >= REPLAY_CHUNK {
                    views.project(chunk.iter(), chunk_end).map_err(Recovery::Views)?;
                    report.replayed += chunk.len() as u64;
                    chunk.clear();
                }
            }
            offset = next;
        }
        end = Position { segment: n, offset: offset as u64 };
    }
    if !chunk.is_empty() {
        views.project(chunk.iter(), chunk_end).map_err(Recovery::Views)?;
        report.replayed += chunk.len() as u64;
    }
    if applied > end {
        return Err(Recovery::Views(ProjectError::Inconsistent(format!(
            "views reflect journal position {applied:?} beyond its end {end:?}"
        ))));
    }
    Ok(end)
}

fn cut_tail(path: &Path, at: u64) -> Result<(), OpenError> {
    let f = OpenOptions::new().write(true).open(path).map_err(io(format!("opening {}", path.display())))?;
    f.set_len(at).and_then(|()| f.sync_all()).map_err(io(format!("truncating {}", path.display())))
}
