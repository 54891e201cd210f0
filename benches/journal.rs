//! Journal append + group commit: nanoseconds per durable record at a given number of
//! concurrent appenders, and the records each fdatasync carried — for the journal alone
//! (target: under 2 µs per record at batches of 100+) and with the sled views a node
//! projects behind the acknowledgements.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paygate::storage::journal::{JournalEnd, JournalHandle, JournalOptions, PROJECT_GATHER};
use paygate::storage::{Storage, StorageOptions};
use paygate_actors::ids::{IdGenerator, ShardId};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{OrderEvent, OrderSpec, PayMethod, QueryPolicy};
use paygate_actors::ports::{Journal, Record};

fn record(ids: &mut IdGenerator, i: u64) -> Record {
    let id = ids.next(1_700_000_000_000);
    let spec = OrderSpec::new(
        "M20240101001",
        format!("J{i}"),
        Money::from_minor(100, Currency::CNY),
        "journal bench",
        PayMethod::Sandbox,
    );
    let created = OrderEvent::created(id.clone(), spec, "sandbox".into(), 1_700_000_000_000, 1_800_000);
    let accepted = OrderEvent::ChannelAccepted { code_url: format!("sandbox://{id}"), channel_trade_no: None, at: 1 };
    Record::Order { pay_order_no: id, seq: 1, events: vec![created, accepted] }
}

fn run_appends(rt: &tokio::runtime::Runtime, journal: &Arc<JournalHandle>, records: Vec<Record>, concurrency: usize) {
    rt.block_on(async {
        // `concurrency` appenders in flight at once, like that many busy orders.
        let chunk = records.len().div_ceil(concurrency).max(1);
        let mut pending = records.into_iter();
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let mine: Vec<Record> = pending.by_ref().take(chunk).collect();
            let journal = Arc::clone(journal);
            tasks.push(tokio::spawn(async move {
                for r in mine {
                    journal.append(r).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn bench_group(c: &mut Criterion, name: &str, journal: Arc<JournalHandle>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let mut ids = IdGenerator::new(ShardId(1), 0);
    let mut n = 0u64;
    for concurrency in [1usize, 10, 100, 1000, 4000] {
        let stats = journal.stats();
        let (syncs_before, records_before) =
            (stats.syncs.load(Ordering::Relaxed), stats.records.load(Ordering::Relaxed));
        group.bench_with_input(BenchmarkId::from_parameter(concurrency), &concurrency, |b, &concurrency| {
            b.iter_custom(|iters| {
                let records: Vec<Record> = (0..iters).map(|i| record(&mut ids, n + i)).collect();
                n += iters;
                let start = Instant::now();
                run_appends(&rt, &journal, records, concurrency);
                // Until the views show every record too: they trail the acknowledgements.
                while !journal.caught_up() {
                    std::thread::yield_now();
                }
                start.elapsed()
            })
        });
        let syncs = stats.syncs.load(Ordering::Relaxed) - syncs_before;
        let records = stats.records.load(Ordering::Relaxed) - records_before;
        println!(
            "  {name}/{concurrency}: {:.1} records per fdatasync over {records} records",
            records as f64 / syncs.max(1) as f64
        );
    }
    group.finish();
}

/// The journal alone: frame, group commit, fdatasync, acknowledge.
fn journal_only(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let opts = JournalOptions {
        dir: dir.path().to_path_buf(),
        segment_bytes: 256 << 20,
        max_batch: 4096,
        queue: 1 << 20,
        gather: PROJECT_GATHER,
        reserve_bytes: 0,
    };
    let (journal, _threads) = JournalHandle::start(opts, JournalEnd::default(), None).unwrap();
    bench_group(c, "journal_append_group_commit", Arc::new(journal));
}

/// The whole path of a record: journal, then the sled views (snapshot, index, timer),
/// timed until the views show every record.
fn journal_and_views(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&StorageOptions {
        data_dir: dir.path().to_path_buf(),
        segment_bytes: 256 << 20,
        max_batch: 4096,
        queue: 1 << 20,
        cache_bytes: 256 << 20,
        reserve_bytes: 0,
        accept_data_loss: false,
        query_policy: QueryPolicy::default(),
    })
    .unwrap();
    bench_group(c, "journal_and_views_durable_record", Arc::new(storage.journal.clone()));
}

/// The same allocator as the `paygate` binary, so figures match the node.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

criterion_group!(benches, journal_only, journal_and_views);
criterion_main!(benches);
