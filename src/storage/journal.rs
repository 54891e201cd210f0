//! The journal writer: one per node. Records from every shard are queued; a writer
//! thread encodes whatever has accumulated into one buffer and appends it with one
//! `fdatasync` (group commit), then a projector thread folds the batch into the views
//! and acknowledges each caller. The two threads pipeline: batch N is projected while
//! N+1 is synced.
//!
//! Allocation is kept off the threads that do not own it: the writer encodes into
//! buffers it reuses, and each record goes back to its caller with the acknowledgement,
//! to be freed on the thread that built it (a cross-thread free costs several times a
//! local one).
//!
//! An I/O error on the journal aborts the process: durability can no longer be
//! promised, and recovery on restart restores exactly what was acknowledged.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use paygate_actors::ports::{BoxFuture, Journal, Record, StorageError};
use tokio::sync::oneshot;

use super::codec::encode_record_into;
use super::segment::{frame, open_for_append};
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
}

struct Pending {
    record: Record,
    done: oneshot::Sender<Result<Record, StorageError>>,
}

/// Counters of the writer: group commits and the records they carried.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// fdatasync calls (one per group commit).
    pub syncs: AtomicU64,
    /// Records made durable.
    pub records: AtomicU64,
}

/// The node's journal: cheap to clone into every actor.
#[derive(Clone)]
pub struct JournalHandle {
    tx: SyncSender<Pending>,
    stats: Arc<JournalStats>,
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
        let file = open_for_append(&opts.dir, end.segment)?;
        let (tx, rx) = mpsc::sync_channel::<Pending>(opts.queue);
        let (ptx, prx) = mpsc::sync_channel::<(Vec<Pending>, Position)>(64);
        let stats = Arc::new(JournalStats::default());
        let counters = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(rx, ptx, file, end, opts, &counters))?;
        let projector =
            std::thread::Builder::new().name("journal-projector".into()).spawn(move || project_loop(prx, views))?;
        Ok((JournalHandle { tx, stats }, vec![writer, projector]))
    }

    /// The writer's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }
}

fn write_loop(
    rx: Receiver<Pending>,
    projector: SyncSender<(Vec<Pending>, Position)>,
    mut file: File,
    mut pos: Position,
    opts: JournalOptions,
    stats: &JournalStats,
) {
    let (mut buf, mut scratch, mut envelope) = (Vec::with_capacity(1 << 20), Vec::new(), Vec::new());
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
            file = open_for_append(&opts.dir, pos.segment).unwrap_or_else(|e| fatal("cannot open a new segment", &e));
        }
        let started = Instant::now();
        if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
            fatal("journal write failed", &e);
        }
        metrics::histogram!("paygate_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("paygate_journal_batch_records").record(batch.len() as f64);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        pos.offset += buf.len() as u64;
        if projector.send((batch, pos)).is_err() {
            return;
        }
    }
}

fn project_loop(rx: Receiver<(Vec<Pending>, Position)>, views: Option<Arc<Views>>) {
    while let Ok((mut batch, mut end)) = rx.recv() {
        // Fold every synced batch already waiting into one views batch: sled's cost is
        // mostly per batch, and the writer never waits for us.
        while let Ok((more, more_end)) = rx.try_recv() {
            batch.extend(more);
            end = more_end;
        }
        if let Some(Err(e)) = views.as_ref().map(|v| v.project(batch.iter().map(|p| &p.record), end)) {
            // The record is durable; the views are derived and will be rebuilt on start.
            fatal("projecting the journal into the views failed", &e);
        }
        for p in batch {
            let _ = p.done.send(Ok(p.record));
        }
    }
    if let Some(Err(e)) = views.map(|v| v.flush()) {
        tracing::error!(error = %e, "flushing views on shutdown failed");
    }
}

impl Journal for JournalHandle {
    fn append(&self, record: Record) -> BoxFuture<Result<(), StorageError>> {
        let (done, rx) = oneshot::channel();
        let queued = match self.tx.try_send(Pending { record, done }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StorageError("journal queue is full".into())),
            Err(TrySendError::Disconnected(_)) => Err(StorageError("journal is stopped".into())),
        };
        Box::pin(async move {
            queued?;
            match rx.await {
                // Dropped here, on the thread that built it.
                Ok(answer) => answer.map(drop),
                Err(_) => Err(StorageError("journal stopped before the record was durable".into())),
            }
        })
    }
}
