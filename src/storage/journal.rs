//! The journal writer: one per node. Records from every shard are queued; a writer
//! thread encodes whatever has accumulated into one reused buffer, appends it with one
//! `fdatasync` (group commit) and acknowledges each caller with its ticket. A projector
//! thread then folds the batch into the views and publishes how far it got, so the
//! views' cost is off the answer's path; order actors stay live until the views show
//! their last record (see [`Journal`]).
//!
//! Every record gets the next journal sequence number and the next of its shard
//! ([`Sequence`]), assigned here, in the one place records are ordered.
//!
//! A full disk is not a crash: segments take their disk when they are created, so the
//! writer learns of it when it rolls to a new segment (or when free space would fall
//! below the reserve). It then refuses appends with [`StorageError::Full`], which the
//! API answers `STORAGE_FULL`, tries again every second, and takes writes again by
//! itself once space is freed. Any other I/O error on the journal aborts the process:
//! durability can no longer be promised, and recovery on restart restores exactly what
//! was acknowledged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paygate_actors::ports::{BoxFuture, Journal, Record, StorageError, Ticket};
use tokio::sync::oneshot;

use super::codec::encode_record_into;
use super::segment::{frame, SegmentFile, SegmentHeader, Sequence, MAX_PAYLOAD, SEGMENT_HEADER};
use super::views::{Applied, Position, ProjectError, Views};

/// Journal tuning.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The journal directory.
    pub dir: PathBuf,
    /// A segment is closed once it passes this size.
    pub segment_bytes: u64,
    /// Most records in one group commit.
    pub max_batch: usize,
    /// Most records waiting; beyond it appends are refused (the node is saturated).
    pub queue: usize,
    /// How long the projector lets synced batches gather before it writes them to the
    /// views ([`PROJECT_GATHER`] in a node).
    pub gather: Duration,
    /// Disk that must stay free beside a new segment (for the views, logs and the
    /// operator); below it the journal refuses writes as if the disk were full.
    pub reserve_bytes: u64,
}

/// Where the journal ends: the next append's position and sequence numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalEnd {
    /// Just past the last record (offset 0: a segment that has no header yet).
    pub position: Position,
    /// The `seq` of the last record (0: none).
    pub seq: u64,
    /// Each shard's last `shard_seq`.
    pub shard_seqs: HashMap<u16, u64>,
}

struct Pending {
    record: Record,
    done: oneshot::Sender<Result<Ticket, StorageError>>,
}

/// Counters of the writer: group commits and the records they carried.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// fdatasync calls (one per group commit).
    pub syncs: AtomicU64,
    /// Records made durable.
    pub records: AtomicU64,
    /// Batches written to the views (each gathers one or more group commits).
    pub views_batches: AtomicU64,
    /// Whether the journal refuses writes because the disk is full.
    pub full: AtomicBool,
}

/// The node's journal: cheap to clone into every actor.
#[derive(Clone)]
pub struct JournalHandle {
    tx: SyncSender<Pending>,
    stats: Arc<JournalStats>,
    /// The highest ticket the views show.
    projected: Arc<AtomicU64>,
}

fn fatal(what: &str, e: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %e, "{what}; stopping so that recovery restores the acknowledged state");
    eprintln!("paygate: fatal: {what}: {e}");
    std::process::abort()
}

impl JournalHandle {
    /// Starts the writer and projector threads, appending at `end` of segment `end.segment`.
    /// The threads end once every handle is dropped and the last batch is projected.
    /// Without `views` records are acknowledged once durable (benchmarks of the journal
    /// alone); a node always projects.
    pub fn start(
        opts: JournalOptions,
        end: JournalEnd,
        views: Option<Arc<Views>>,
    ) -> std::io::Result<(JournalHandle, Vec<std::thread::JoinHandle<()>>)> {
        let file = SegmentFile::open(&opts.dir, end.position.segment, opts.segment_bytes)?;
        let (tx, rx) = mpsc::sync_channel::<Pending>(opts.queue);
        let (ptx, prx) = mpsc::sync_channel::<Synced>(1024);
        let stats = Arc::new(JournalStats::default());
        let projected = Arc::new(AtomicU64::new(0));
        let counters = Arc::clone(&stats);
        let gather = opts.gather;
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(rx, ptx, file, end, opts, &counters))?;
        let published = Arc::clone(&projected);
        let counters = Arc::clone(&stats);
        let projector = std::thread::Builder::new()
            .name("journal-projector".into())
            .spawn(move || project_loop(prx, views, gather, &published, &counters))?;
        Ok((JournalHandle { tx, stats, projected }, vec![writer, projector]))
    }

    /// The writer's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Whether the views show every durable record.
    pub fn caught_up(&self) -> bool {
        self.projected.load(Ordering::Acquire) >= self.stats.records.load(Ordering::Acquire)
    }

    /// Whether writes are refused because the disk is full.
    pub fn is_full(&self) -> bool {
        self.stats.full.load(Ordering::Acquire)
    }
}

/// A durable batch on its way to the views: its records, the last ticket among them
/// and the journal position after them.
struct Synced {
    records: Vec<Record>,
    last_ticket: Ticket,
    end: Applied,
}

/// How often a full journal tries again to take disk for its next segment.
const FULL_RETRY: Duration = Duration::from_secs(1);

/// Free bytes for unprivileged writers on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Opens segment `n` with its disk taken, if the disk has room for it and the reserve.
fn open_segment(opts: &JournalOptions, n: u32) -> Result<SegmentFile, String> {
    let free = free_bytes(&opts.dir).map_err(|e| format!("cannot read free space: {e}"))?;
    let need = opts.segment_bytes.saturating_add(opts.reserve_bytes);
    if free < need {
        return Err(format!("{free} bytes free, a new segment and the reserve need {need}"));
    }
    SegmentFile::open(&opts.dir, n, opts.segment_bytes).map_err(|e| format!("creating segment {n}: {e}"))
}

fn set_full(stats: &JournalStats, full: bool, why: &str) {
    if stats.full.swap(full, Ordering::AcqRel) != full {
        metrics::gauge!("paygate_storage_full").set(if full { 1.0 } else { 0.0 });
        if full {
            metrics::counter!("paygate_alerts_total", "kind" => "storage_full").increment(1);
            tracing::error!(why, "the journal's disk is full: writes are refused (STORAGE_FULL) until space is freed");
        } else {
            tracing::warn!("the journal has disk again: writes resume");
        }
    }
}

/// Refuses every record of `batch` with `error`.
fn refuse(batch: Vec<Pending>, error: &StorageError) {
    for p in batch {
        let _ = p.done.send(Err(error.clone()));
    }
}

/// The numbering of records: the journal's sequence and each shard's.
struct Numbering {
    seq: u64,
    shards: HashMap<u16, u64>,
}

impl Numbering {
    fn next(&mut self, record: &Record) -> Sequence {
        let shard = record.shard().0;
        let shard_seq = self.shards.entry(shard).or_insert(0);
        *shard_seq += 1;
        self.seq += 1;
        Sequence { seq: self.seq, shard, shard_seq: *shard_seq }
    }

    /// Takes back the numbers of records that were not written, newest first.
    fn undo(&mut self, records: &[Record]) {
        for record in records.iter().rev() {
            if let Some(n) = self.shards.get_mut(&record.shard().0) {
                *n -= 1;
            }
            self.seq -= 1;
        }
    }
}

fn write_loop(
    rx: Receiver<Pending>,
    projector: SyncSender<Synced>,
    mut file: SegmentFile,
    end: JournalEnd,
    opts: JournalOptions,
    stats: &JournalStats,
) {
    let (mut buf, mut scratch, mut envelope) = (Vec::with_capacity(1 << 20), Vec::new(), Vec::new());
    let mut ticket: Ticket = 0;
    let mut pos = end.position;
    let mut numbering = Numbering { seq: end.seq, shards: end.shard_seqs };
    // Set while the next segment could not get its disk, with when that was last tried.
    let mut rolling: Option<u32> = None;
    let mut tried = Instant::now();
    loop {
        let first = if rolling.is_some() {
            match rx.recv_timeout(FULL_RETRY) {
                Ok(p) => Some(p),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(p) => Some(p),
                Err(_) => return,
            }
        };
        if let Some(n) = rolling.filter(|_| tried.elapsed() >= FULL_RETRY) {
            tried = Instant::now();
            match open_segment(&opts, n) {
                Ok(f) => {
                    (file, pos, rolling) = (f, Position { segment: n, offset: 0 }, None);
                    set_full(stats, false, "");
                }
                Err(why) => set_full(stats, true, &why),
            }
        }
        let Some(first) = first else { continue };
        let mut batch = Vec::with_capacity(opts.max_batch.min(1024));
        batch.push(first);
        while batch.len() < opts.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if rolling.is_some() {
            refuse(batch, &StorageError::Full("the journal's disk is full".into()));
            continue;
        }
        buf.clear();
        batch.retain_mut(|p| {
            let refused = match encode_record_into(&p.record, &mut scratch, &mut envelope) {
                // Checked before the write, never after: a record the reader would not
                // believe must not be acknowledged.
                Ok(()) if envelope.len() > MAX_PAYLOAD => {
                    Some(format!("record of {} bytes exceeds the journal's {MAX_PAYLOAD}", envelope.len()))
                }
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            };
            match refused {
                None => {
                    frame(&envelope, numbering.next(&p.record), &mut buf);
                    true
                }
                Some(why) => {
                    let (done, _) = oneshot::channel();
                    let _ = std::mem::replace(&mut p.done, done).send(Err(StorageError::Failed(why)));
                    false
                }
            }
        });
        if batch.is_empty() {
            continue;
        }
        if pos.offset > 0 && pos.offset + buf.len() as u64 > opts.segment_bytes {
            let n = pos.segment + 1;
            match open_segment(&opts, n) {
                Ok(f) => (file, pos) = (f, Position { segment: n, offset: 0 }),
                Err(why) => {
                    set_full(stats, true, &why);
                    (rolling, tried) = (Some(n), Instant::now());
                    let records: Vec<Record> = batch.iter().map(|p| p.record.clone()).collect();
                    numbering.undo(&records);
                    refuse(batch, &StorageError::Full(why));
                    continue;
                }
            }
        }
        let started = Instant::now();
        let written = if pos.offset == 0 {
            // A segment's first write carries its header: both are durable, or neither.
            let mut first_write = Vec::with_capacity(SEGMENT_HEADER + buf.len());
            let first_seq = numbering.seq + 1 - batch.len() as u64;
            SegmentHeader { segment: pos.segment, first_seq }.encode(&mut first_write);
            first_write.extend_from_slice(&buf);
            file.write_durably(&first_write, 0).map(|()| first_write.len())
        } else {
            file.write_durably(&buf, pos.offset).map(|()| buf.len())
        };
        let written = written.unwrap_or_else(|e| fatal("journal write failed", &e));
        metrics::histogram!("paygate_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("paygate_journal_batch_records").record(batch.len() as f64);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        pos.offset += written as u64;
        let mut records = Vec::with_capacity(batch.len());
        for p in batch {
            ticket += 1;
            let _ = p.done.send(Ok(ticket));
            records.push(p.record);
        }
        let end = Applied { position: pos, seq: numbering.seq };
        if projector.send(Synced { records, last_ticket: ticket, end }).is_err() {
            return;
        }
    }
}

/// How long a node's projector lets synced batches gather before it writes them to the
/// views.
///
/// sled seals every batch into its own log buffer and hands it to its IO pool, whose
/// seven threads all wake for each one: at ~4 records per fsync that was ~3 context
/// switches per pay in sled's pool alone. The views lag the journal by this much more,
/// which nothing waits on but passivation (which checks, and waits, per order).
pub const PROJECT_GATHER: Duration = Duration::from_millis(5);
/// A backlog this large is written at once, without waiting to gather more.
const PROJECT_BACKLOG: usize = 256;
/// The most records one views batch takes.
const PROJECT_MAX_RECORDS: usize = 4096;

fn project_loop(
    rx: Receiver<Synced>,
    views: Option<Arc<Views>>,
    gather: Duration,
    projected: &AtomicU64,
    stats: &JournalStats,
) {
    while let Ok(first) = rx.recv() {
        let gathered_until = Instant::now() + gather;
        let Synced { mut records, mut last_ticket, mut end } = first;
        let mut drain = |records: &mut Vec<Record>| {
            while records.len() < PROJECT_MAX_RECORDS {
                let Ok(more) = rx.try_recv() else { break };
                records.extend(more.records);
                (last_ticket, end) = (more.last_ticket, more.end);
            }
        };
        drain(&mut records);
        if records.len() < PROJECT_BACKLOG {
            std::thread::sleep(gathered_until.saturating_duration_since(Instant::now()));
            drain(&mut records);
        }
        let started = Instant::now();
        if let Some(v) = views.as_ref() {
            project_until_done(v, &records, end);
        }
        metrics::histogram!("paygate_views_project_seconds").record(started.elapsed().as_secs_f64());
        stats.views_batches.fetch_add(1, Ordering::Relaxed);
        projected.store(last_ticket, Ordering::Release);
    }
    if let Some(Err(e)) = views.map(|v| v.flush()) {
        tracing::error!(error = %e, "flushing views on shutdown failed");
    }
}

/// Writes `records` to the views, trying again while the views' disk fails (full, say):
/// the records are durable in the journal, and order actors stay in memory until the
/// views show them. Views that disagree with the journal are a bug: stop, and recovery
/// rebuilds them.
fn project_until_done(views: &Views, records: &[Record], end: Applied) {
    let mut attempt = 0u32;
    loop {
        match views.project(records.iter(), end) {
            Ok(()) => return,
            Err(ProjectError::Sled(sled::Error::Io(e))) => {
                if attempt.is_multiple_of(60) {
                    metrics::counter!("paygate_alerts_total", "kind" => "views_write_failed").increment(1);
                    tracing::error!(error = %e, "writing the views failed; retrying (the journal has the records)");
                }
                attempt = attempt.saturating_add(1);
                std::thread::sleep(FULL_RETRY);
            }
            Err(e) => fatal("projecting the journal into the views failed", &e),
        }
    }
}

impl Journal for JournalHandle {
    fn is_projected(&self, ticket: Ticket) -> bool {
        self.projected.load(Ordering::Acquire) >= ticket
    }

    fn writable(&self) -> Result<(), StorageError> {
        match self.is_full() {
            true => Err(StorageError::Full("the journal's disk is full".into())),
            false => Ok(()),
        }
    }

    fn append(&self, record: Record) -> BoxFuture<Result<Ticket, StorageError>> {
        let (done, rx) = oneshot::channel();
        let queued = match self.tx.try_send(Pending { record, done }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StorageError::Failed("journal queue is full".into())),
            Err(TrySendError::Disconnected(_)) => Err(StorageError::Failed("journal is stopped".into())),
        };
        let started = Instant::now();
        Box::pin(async move {
            queued?;
            let answer = rx.await;
            metrics::histogram!("paygate_journal_append_seconds").record(started.elapsed().as_secs_f64());
            answer.unwrap_or_else(|_| Err(StorageError::Failed("journal stopped before the record was durable".into())))
        })
    }
}
