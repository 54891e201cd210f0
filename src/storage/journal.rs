//! The journal writer: one per node. Records from every shard are queued; a writer
//! thread encodes whatever has accumulated into one reused buffer, appends it with one
//! `fdatasync` (group commit) and acknowledges each caller with its ticket. A projector
//! thread then folds the batch into the views and publishes how far it got, so the
//! views' cost is off the answer's path; order actors stay live until the views show
//! their last record (see [`Journal`]).
//!
//! An I/O error on the journal aborts the process: durability can no longer be
//! promised, and recovery on restart restores exactly what was acknowledged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paygate_actors::ports::{BoxFuture, Journal, Record, StorageError, Ticket};
use tokio::sync::oneshot;

use super::codec::encode_record_into;
use super::segment::{frame, SegmentFile};
use super::views::{Position, Views};

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
        end: Position,
        views: Option<Arc<Views>>,
    ) -> std::io::Result<(JournalHandle, Vec<std::thread::JoinHandle<()>>)> {
        let file = SegmentFile::open(&opts.dir, end.segment, opts.segment_bytes)?;
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
}

/// A durable batch on its way to the views: its records, the last ticket among them
/// and the journal position after them.
struct Synced {
    records: Vec<Record>,
    last_ticket: Ticket,
    end: Position,
}

fn write_loop(
    rx: Receiver<Pending>,
    projector: SyncSender<Synced>,
    mut file: SegmentFile,
    mut pos: Position,
    opts: JournalOptions,
    stats: &JournalStats,
) {
    let (mut buf, mut scratch, mut envelope) = (Vec::with_capacity(1 << 20), Vec::new(), Vec::new());
    let mut ticket: Ticket = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(opts.max_batch.min(1024));
        batch.push(first);
        while batch.len() < opts.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        buf.clear();
        batch.retain_mut(|p| match encode_record_into(&p.record, &mut scratch, &mut envelope) {
            Ok(()) => {
                frame(&envelope, &mut buf);
                true
            }
            Err(e) => {
                let (done, _) = oneshot::channel();
                let _ = std::mem::replace(&mut p.done, done).send(Err(StorageError(e.to_string())));
                false
            }
        });
        if batch.is_empty() {
            continue;
        }
        if pos.offset > 0 && pos.offset + buf.len() as u64 > opts.segment_bytes {
            pos = Position { segment: pos.segment + 1, offset: 0 };
            file = SegmentFile::open(&opts.dir, pos.segment, opts.segment_bytes)
                .unwrap_or_else(|e| fatal("cannot open a new segment", &e));
        }
        let started = Instant::now();
        if let Err(e) = file.write_durably(&buf, pos.offset) {
            fatal("journal write failed", &e);
        }
        metrics::histogram!("paygate_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("paygate_journal_batch_records").record(batch.len() as f64);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        pos.offset += buf.len() as u64;
        let mut records = Vec::with_capacity(batch.len());
        for p in batch {
            ticket += 1;
            let _ = p.done.send(Ok(ticket));
            records.push(p.record);
        }
        if projector.send(Synced { records, last_ticket: ticket, end: pos }).is_err() {
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
        if let Some(Err(e)) = views.as_ref().map(|v| v.project(records.iter(), end)) {
            // The records are durable; the views are derived and are rebuilt on start.
            fatal("projecting the journal into the views failed", &e);
        }
        metrics::histogram!("paygate_views_project_seconds").record(started.elapsed().as_secs_f64());
        stats.views_batches.fetch_add(1, Ordering::Relaxed);
        projected.store(last_ticket, Ordering::Release);
    }
    if let Some(Err(e)) = views.map(|v| v.flush()) {
        tracing::error!(error = %e, "flushing views on shutdown failed");
    }
}

impl Journal for JournalHandle {
    fn is_projected(&self, ticket: Ticket) -> bool {
        self.projected.load(Ordering::Acquire) >= ticket
    }

    fn append(&self, record: Record) -> BoxFuture<Result<Ticket, StorageError>> {
        let (done, rx) = oneshot::channel();
        let queued = match self.tx.try_send(Pending { record, done }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StorageError("journal queue is full".into())),
            Err(TrySendError::Disconnected(_)) => Err(StorageError("journal is stopped".into())),
        };
        let started = Instant::now();
        Box::pin(async move {
            queued?;
            let answer = rx.await;
            metrics::histogram!("paygate_journal_append_seconds").record(started.elapsed().as_secs_f64());
            answer.unwrap_or_else(|_| Err(StorageError("journal stopped before the record was durable".into())))
        })
    }
}
