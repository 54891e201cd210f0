//! Durability: the real binary killed with SIGKILL mid-load, journals with torn tails
//! and damaged middles, and expiry timers across a restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use paygate::storage::segment::{
    is_padding, list_segments, record_at, segment_path, written_len, HEADER, SEGMENT_HEADER,
};
use paygate::storage::{Storage, StorageOptions};
use paygate_actors::ids::{IdGenerator, ShardId};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{Order, OrderEvent, OrderSpec, PayMethod, QueryPolicy};
use paygate_actors::ports::{Journal, Record};

fn open_storage(data: &Path) -> Storage {
    open_storage_with(data, 64 << 20)
}

fn open_storage_with(data: &Path, segment_bytes: u64) -> Storage {
    Storage::open(&options(data, segment_bytes)).unwrap()
}

fn all_orders(storage: &Storage) -> Vec<Order> {
    storage.views.orders().map(|o| o.unwrap()).collect()
}

#[test]
fn kill_9_mid_load_loses_no_acknowledged_order_and_retries_make_exactly_one() {
    let data = tempfile::tempdir().unwrap();
    let node = BinNode::start(data.path(), &[]);
    let client = node.client();
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let unanswered: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Set just before the kill: a request sent before it went to a live node, so if it
    // has no answer it was in flight when the node died. Requests sent after it (to a
    // dying or dead node) are not counted as in flight.
    let killing = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (client, acked, unanswered) = (client.clone(), acked.clone(), unanswered.clone());
            let (stop, killing) = (stop.clone(), killing.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let order_no = format!("KILL-{w}-{i}");
                    let to_a_live_node = !killing.load(Ordering::SeqCst);
                    match client.post_signed("/api/v1/payment/pay", Client::pay_params(&order_no, "1.23")) {
                        Some(a) if a.code() == "SUCCESS" => {
                            acked.lock().unwrap().insert(order_no, a.data("pay_order_no").to_owned());
                        }
                        _ => {
                            if to_a_live_node {
                                unanswered.lock().unwrap().push(order_no);
                            }
                            if stop.load(Ordering::SeqCst) {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Let load build up, then kill without warning.
    eventually(Duration::from_secs(30), || (acked.lock().unwrap().len() >= 300).then_some(()))
        .expect("the node acknowledged payments under load");
    killing.store(true, Ordering::SeqCst);
    node.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let unanswered = unanswered.lock().unwrap().clone();
    assert!(!unanswered.is_empty(), "requests were in flight when the node died");

    let node = BinNode::start(data.path(), &[]);
    let client = node.client();
    for (order_no, id) in &acked {
        let q = client.query_no(order_no);
        assert_eq!((q.code(), q.data("pay_order_no")), ("SUCCESS", id.as_str()), "acknowledged {order_no} lost");
    }
    for order_no in &unanswered {
        let a = client.pay(order_no, "1.23");
        assert_eq!(a.code(), "SUCCESS", "retrying {order_no}: {a:?}");
        let again = client.pay(order_no, "1.23");
        assert_eq!(again.data("pay_order_no"), a.data("pay_order_no"));
    }
    node.kill9();

    // Exactly one order per order_no, and every acknowledged id is among them.
    let storage = open_storage(data.path());
    let orders = all_orders(&storage);
    let mut seen = HashSet::new();
    for o in &orders {
        assert!(seen.insert(o.spec.order_no.clone()), "two orders for {}", o.spec.order_no);
        if let Some(id) = acked.get(&o.spec.order_no) {
            assert_eq!(id, o.pay_order_no.as_str());
        }
    }
    assert_eq!(orders.len(), acked.len() + unanswered.len());
}

/// Makes a data directory with orders A (paid) and B (PAYING); returns where the last
/// record (B's creation with the channel's acceptance) starts and ends in segment 0.
fn journal_with_two_orders() -> (tempfile::TempDir, String, String, usize, usize) {
    let t = TestNode::start();
    let c = t.client();
    let a = c.pay("TORN-A", "1.00").data("pay_order_no").to_owned();
    t.node().sandbox.as_ref().unwrap().pay(&a).unwrap();
    wait_status(&c, &a, "SUCCESS", Duration::from_secs(10));
    let b = c.pay("TORN-B", "2.00").data("pay_order_no").to_owned();
    let mut t = t;
    t.node.take().unwrap().stop();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(t.dir.path(), dir.path());
    let buf = std::fs::read(segment_path(&dir.path().join("journal"), 0)).unwrap();
    let (mut start, mut end) = (SEGMENT_HEADER, SEGMENT_HEADER);
    while let Some(frame) = record_at(&buf, end) {
        start = end;
        end = frame.next;
    }
    assert!(is_padding(&buf, end), "the journal is intact, and zeros follow its records");
    (dir, a, b, start, end)
}

/// A copy of the data directory `original` whose segment 0 loses its bytes from `cut`
/// to `end`: zeroed (a torn write in a sized segment, or a lost write-back), or cut off
/// (`shorten`).
fn torn_copy(original: &Path, cut: usize, end: usize, shorten: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(original, dir.path());
    let seg = segment_path(&dir.path().join("journal"), 0);
    let file = OpenOptions::new().write(true).open(&seg).unwrap();
    if shorten {
        file.set_len(cut as u64).unwrap();
    } else {
        file.write_all_at(&vec![0; end - cut], cut as u64).unwrap();
    }
    (dir, seg)
}

#[test]
fn a_torn_tail_is_cut_and_the_node_starts_with_everything_before_it() {
    let (original, a, b, start, end) = journal_with_two_orders();
    let intact = std::fs::read(segment_path(&original.path().join("journal"), 0)).unwrap();
    // A torn write in a sized segment leaves part of a record followed by zeros; a
    // shortened file is the same tear in a segment written before segments were sized.
    let tears = [(start + 1, false), (start + 7, false), (start + 12, true), (start + 20, false), (end - 1, true)];
    for (cut, shorten) in tears {
        let (dir, seg) = torn_copy(original.path(), cut, end, shorten);
        // A torn write was never acknowledged, so the views never saw it.
        std::fs::remove_dir_all(dir.path().join("views")).unwrap();
        let t = TestNode::start_in(dir, |_| {});
        // What is left of the record, up to its last byte that is not zero.
        let torn = intact.get(..cut).map(|b| written_len(b, start)).unwrap();
        assert!(torn > 0 && torn <= cut - start);
        assert_eq!(t.node().recovery.torn_bytes, torn as u64, "cut at {cut}");
        let bytes = std::fs::read(&seg).unwrap();
        assert!(is_padding(&bytes, start), "cut at {cut}: the torn record is gone");
        let c = t.client();
        assert_eq!(c.query_id(&a).data("status"), "SUCCESS", "cut at {cut}");
        // B's only record was torn: B never happened, and its repeated request creates it.
        assert_eq!(c.query_id(&b).code(), "ORDER_NOT_FOUND", "cut at {cut}");
        let again = c.pay("TORN-B", "2.00");
        assert_eq!(again.data("status"), "PAYING");
        assert_ne!(again.data("pay_order_no"), b);
    }
}

#[test]
fn damage_in_the_middle_of_a_segment_refuses_to_start_naming_segment_and_offset() {
    let (dir, _, _, _, _) = journal_with_two_orders();
    let seg = segment_path(&dir.path().join("journal"), 0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[SEGMENT_HEADER + HEADER + 5] ^= 0x40; // inside the first record's payload
    std::fs::write(&seg, &bytes).unwrap();
    let out = BinNode::command(dir.path(), free_port(), &[]).output().unwrap();
    assert!(!out.status.success(), "the node must not start on a damaged journal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("00000000.seg") && stderr.contains(&format!("offset {SEGMENT_HEADER}")), "{stderr}");
    assert!(stderr.contains("last good record is none"), "{stderr}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut or rewritten");
}

#[test]
fn expiry_timers_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    // One "minute" of expiry lasts one second here.
    let env = [("PAYGATE_ORDERS__MINUTE_MS", "1000")];
    let node = BinNode::start(data.path(), &env);
    let c = node.client();
    let mut p = Client::pay_params("EXP-1", "4.00");
    p.insert("expire_minutes".into(), "3".into());
    let short = c.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    let mut p = Client::pay_params("EXP-2", "4.00");
    p.insert("expire_minutes".into(), "600".into());
    let long = c.call("/api/v1/payment/pay", p).data("pay_order_no").to_owned();
    node.kill9();
    std::thread::sleep(Duration::from_secs(4));
    let node = BinNode::start(data.path(), &env);
    let c = node.client();
    wait_status(&c, &short, "EXPIRED", Duration::from_secs(15));
    assert_eq!(c.query_id(&long).data("status"), "PAYING", "only the due order expired");
}

/// Group commits that follow each other closely reach sled as one views batch (sled's
/// cost is per batch: it seals and writes each one on its own), and the views still
/// show every record.
#[test]
fn group_commits_close_together_reach_the_views_as_one_batch() {
    use paygate::storage::journal::{JournalEnd, JournalHandle, JournalOptions};
    use paygate::storage::views::Views;

    let dir = tempfile::tempdir().unwrap();
    let views = Arc::new(Views::open(&dir.path().join("views"), QueryPolicy::default(), 16 << 20).unwrap());
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    let opts = JournalOptions {
        dir: dir.path().join("journal"),
        segment_bytes: 64 << 20,
        max_batch: 1024,
        queue: 1024,
        gather: Duration::from_millis(500),
        reserve_bytes: 0,
    };
    let (journal, _threads) = JournalHandle::start(opts, JournalEnd::default(), Some(Arc::clone(&views))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ids = IdGenerator::new(ShardId(1), 0);
    let appends = 20;
    for i in 0..appends {
        // Awaited one by one: every record is its own group commit.
        rt.block_on(journal.append(new_order_record(&mut ids, &format!("G{i}")))).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !journal.caught_up() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(journal.caught_up(), "the views did not catch up with the journal");
    let stats = journal.stats();
    let (syncs, batches) = (stats.syncs.load(Ordering::Relaxed), stats.views_batches.load(Ordering::Relaxed));
    assert!(syncs >= appends, "{syncs} group commits for {appends} awaited appends");
    assert!(batches * 4 <= syncs, "{syncs} group commits reached the views in {batches} batches");
    assert_eq!(views.orders().count(), appends as usize);
}

/// A journal record creating a new sandbox order numbered `order_no`.
fn new_order_record(ids: &mut IdGenerator, order_no: &str) -> Record {
    let id = ids.next(1_700_000_000_000);
    let money = Money::from_minor(100, Currency::CNY);
    let spec = OrderSpec::new("M20240101001", order_no, money, "journal test", PayMethod::Sandbox);
    let created = OrderEvent::created(id.clone(), spec, "sandbox".into(), 1_700_000_000_000, 1_800_000);
    Record::Order { pay_order_no: id, seq: 1, events: vec![created] }
}

/// Segments are sized before they are written, so every closed one ends in zeros; a
/// restart reads past them into the next segment, and appends after the last record.
#[test]
fn segments_roll_over_and_a_restart_reads_every_record_across_them() {
    let data = tempfile::tempdir().unwrap();
    let segment_bytes = 4096;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ids = IdGenerator::new(ShardId(1), 0);
    let storage = open_storage_with(data.path(), segment_bytes);
    for i in 0..100 {
        rt.block_on(storage.journal.append(new_order_record(&mut ids, &format!("R{i}")))).unwrap();
    }
    storage.close();
    let journal = data.path().join("journal");
    let segments = list_segments(&journal).unwrap();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    for &n in &segments {
        let bytes = std::fs::read(segment_path(&journal, n)).unwrap();
        assert_eq!(bytes.len() as u64, segment_bytes, "segment {n} was sized once");
        assert_eq!(bytes.last(), Some(&0), "segment {n} ends in its unused zeros");
    }

    let storage = open_storage_with(data.path(), segment_bytes);
    assert_eq!((storage.report.records, storage.report.torn_bytes), (100, 0));
    assert_eq!(all_orders(&storage).len(), 100);
    rt.block_on(storage.journal.append(new_order_record(&mut ids, "R100"))).unwrap();
    storage.close();
    let storage = open_storage_with(data.path(), segment_bytes);
    assert_eq!(storage.report.records, 101, "the append after the restart landed after the last record");
    assert_eq!(all_orders(&storage).len(), 101);
    assert_eq!(list_segments(&journal).unwrap(), segments, "no segment was skipped or added");
}

/// A segment size the journal cannot work with is refused at start, by name, before
/// anything is written.
#[test]
fn an_unusable_segment_size_is_refused_at_start() {
    for size in ["0", "4096", "1099511627776"] {
        let data = tempfile::tempdir().unwrap();
        let mut child =
            BinNode::command(data.path(), free_port(), &[("PAYGATE_STORAGE__SEGMENT_BYTES", size)]).spawn().unwrap();
        // A node that accepted the size would serve until killed: wait a bounded time.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        assert!(status.is_some_and(|s| !s.success()), "segment_bytes {size} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("storage.segment_bytes must be 65536..=1073741824"), "{stderr}");
        assert!(!data.path().join("journal").exists(), "nothing was written for {size}");
    }
}

/// The journal's files below `dir` with a digest of their bytes, and what the views
/// hold (sled rewrites its own files when opened, not their content): to show that a
/// refused start changed nothing.
fn snapshot(dir: &Path) -> (Vec<(String, u64)>, u64, usize) {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    let mut stack = vec![dir.join("journal")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut h);
                out.push((path.display().to_string(), h.finish()));
            }
        }
    }
    out.sort();
    let views = paygate::storage::views::Views::open(&dir.join("views"), QueryPolicy::default(), 1 << 20).unwrap();
    let applied = views.applied().unwrap().seq;
    (out, applied, views.orders().count())
}

/// Runs `paygate serve` on `data` and expects it to refuse: its stderr.
fn refused_start(data: &Path, extra: &[&str]) -> String {
    let mut cmd = BinNode::command(data, free_port(), &[]);
    cmd.args(extra);
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the node must not start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn journal_verify(data: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["journal", "verify", "--config"])
        .arg(config_dir())
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last records of the last segment lost after they were acknowledged (zeroed by a
/// lost write-back, or cut off): the views prove they existed, so the node refuses to
/// serve without them, changes nothing, and says what to do.
#[test]
fn acknowledged_records_lost_from_the_tail_stop_the_start_until_the_operator_decides() {
    let (original, a, b, start, end) = journal_with_two_orders();
    for shorten in [false, true] {
        let (dir, _) = torn_copy(original.path(), start, end, shorten);
        let before = snapshot(dir.path());
        let stderr = refused_start(dir.path(), &[]);
        assert!(stderr.contains("acknowledged records are missing from the journal"), "{stderr}");
        assert!(stderr.contains(&format!("ends at record 2, ending at segment 0 offset {start}")), "{stderr}");
        assert!(stderr.contains("the views show record 3"), "{stderr}");
        assert!(stderr.contains("--accept-data-loss"), "{stderr}");
        assert_eq!(snapshot(dir.path()), before, "a refused start changes nothing");

        let (sound, report) = journal_verify(dir.path());
        assert!(!sound && report.contains("DATA LOSS"), "{report}");
        let mistyped = dir.path().join("no-such-node");
        assert!(!journal_verify(&mistyped).0 && !mistyped.exists(), "a mistyped directory is refused, not made");
        assert_eq!(snapshot(dir.path()), before, "verify changes nothing");

        // The operator's decision: serve what is left; B is gone.
        let node = BinNode::start_with_args(dir.path(), &[], &["--accept-data-loss"]);
        let c = node.client();
        assert_eq!(c.query_id(&a).data("status"), "SUCCESS");
        assert_eq!(c.query_id(&b).code(), "ORDER_NOT_FOUND");
        node.kill9();
        assert!(journal_verify(dir.path()).0, "sound again after the decision");
    }
}

/// Rewrites segment 0 of `data` with its records in the order of `pick` (indexes).
fn rewrite_records(data: &Path, pick: &[usize]) {
    let seg = segment_path(&data.join("journal"), 0);
    let bytes = std::fs::read(&seg).unwrap();
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER;
    while let Some(frame) = record_at(&bytes, at) {
        records.push(bytes[at..frame.next].to_vec());
        at = frame.next;
    }
    let mut out = bytes[..SEGMENT_HEADER].to_vec();
    for &i in pick {
        out.extend_from_slice(&records[i]);
    }
    out.resize(bytes.len(), 0);
    std::fs::write(&seg, out).unwrap();
}

/// Records that are each intact but missing, repeated or out of order in the middle of
/// the journal stop the start, by their sequence numbers.
#[test]
fn a_gap_a_duplicate_or_a_reordered_record_stops_the_start() {
    let (original, ..) = journal_with_two_orders();
    let cases: [(&str, &[usize]); 3] = [("gap", &[0, 2]), ("duplicate", &[0, 1, 1, 2]), ("reordered", &[1, 0, 2])];
    for (what, pick) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        // Without views, only the sequence numbers can tell.
        std::fs::remove_dir_all(dir.path().join("views")).unwrap();
        rewrite_records(dir.path(), pick);
        let stderr = refused_start(dir.path(), &[]);
        assert!(stderr.contains("00000000.seg") && stderr.contains("was expected"), "{what}: {stderr}");
        assert!(stderr.contains("last good record is"), "{what}: {stderr}");
        assert!(!journal_verify(dir.path()).0, "{what}: verify reports it too");
    }
}

/// Segments must follow each other: a missing one in the middle is a gap too.
#[test]
fn a_missing_middle_segment_stops_the_start() {
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ids = IdGenerator::new(ShardId(1), 0);
    let storage = open_storage_with(data.path(), 4096);
    for i in 0..60 {
        rt.block_on(storage.journal.append(new_order_record(&mut ids, &format!("S{i}")))).unwrap();
    }
    storage.close();
    let journal = data.path().join("journal");
    assert!(list_segments(&journal).unwrap().len() >= 3);
    std::fs::remove_file(segment_path(&journal, 1)).unwrap();
    std::fs::remove_dir_all(data.path().join("views")).unwrap();
    let err = Storage::open(&options(data.path(), 4096)).err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("00000002.seg") && text.contains("segment 1 is missing"), "{text}");
}

fn options(data: &Path, segment_bytes: u64) -> StorageOptions {
    StorageOptions {
        data_dir: data.to_path_buf(),
        segment_bytes,
        max_batch: 1024,
        queue: 1024,
        cache_bytes: 16 << 20,
        reserve_bytes: 0,
        accept_data_loss: false,
        query_policy: QueryPolicy::default(),
    }
}

/// A record the reader would refuse is refused before it is written, so it can never be
/// acknowledged and then stop every later start.
#[test]
fn a_record_larger_than_the_reader_accepts_is_refused_before_it_is_written() {
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ids = IdGenerator::new(ShardId(1), 0);
    let storage = open_storage(data.path());
    rt.block_on(storage.journal.append(new_order_record(&mut ids, "BEFORE"))).unwrap();
    let id = ids.next(1_700_000_000_000);
    let money = Money::from_minor(100, Currency::CNY);
    let spec = OrderSpec::new("M20240101001", "HUGE", money, "x".repeat(17 << 20), PayMethod::Sandbox);
    let created = OrderEvent::created(id.clone(), spec, "sandbox".into(), 1_700_000_000_000, 1_800_000);
    let huge = Record::Order { pay_order_no: id, seq: 1, events: vec![created] };
    let refused = rt.block_on(storage.journal.append(huge));
    assert!(matches!(&refused, Err(e) if e.to_string().contains("exceeds")), "{refused:?}");
    rt.block_on(storage.journal.append(new_order_record(&mut ids, "AFTER"))).unwrap();
    storage.close();
    let storage = open_storage(data.path());
    assert_eq!(storage.report.records, 2, "the two ordinary records, in sequence");
    assert_eq!(all_orders(&storage).len(), 2);
}

/// Views written with another layout are rebuilt from the journal, not misread.
#[test]
fn views_of_another_layout_are_rebuilt_from_the_journal() {
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ids = IdGenerator::new(ShardId(1), 0);
    let storage = open_storage(data.path());
    for i in 0..5 {
        rt.block_on(storage.journal.append(new_order_record(&mut ids, &format!("V{i}")))).unwrap();
    }
    storage.close();
    // sled lets go of its lock a moment after the views are closed: wait as a node does.
    let db = paygate::storage::open_sled(&sled::Config::new().path(data.path().join("views"))).unwrap();
    db.insert(b"m:schema", &1u32.to_be_bytes()[..]).unwrap();
    db.flush().unwrap();
    drop(db);
    let storage = open_storage(data.path());
    assert!(storage.report.rebuilt_views, "another layout is rebuilt");
    assert_eq!(all_orders(&storage).len(), 5);
    storage.close();
    let storage = open_storage(data.path());
    assert!(!storage.report.rebuilt_views, "and then kept");
}

/// One process per data directory: a second node refuses, names the first one's pid,
/// and touches nothing; the first goes on and keeps every order.
#[test]
fn a_second_node_on_the_same_data_directory_refuses_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let first = BinNode::start(data.path(), &[]);
    let c = first.client();
    let ids: Vec<String> =
        (0..20).map(|i| c.pay(&format!("LOCK-{i}"), "1.00").data("pay_order_no").to_owned()).collect();
    let stderr = refused_start(data.path(), &[]);
    assert!(stderr.contains(&format!("in use by another paygate process (pid {})", first.child.id())), "{stderr}");
    assert!(data.path().join("views").exists(), "the first node's views were not touched");
    let more = c.pay("LOCK-AFTER", "1.00").data("pay_order_no").to_owned();
    first.kill9();
    let node = BinNode::start(data.path(), &[]);
    let c = node.client();
    for id in ids.iter().chain([&more]) {
        assert_eq!(c.query_id(id).code(), "SUCCESS", "{id}");
    }
}

/// SIGTERM: no new connections, the requests in flight finish and are answered, then
/// the process exits 0; what they did is there after a restart.
#[test]
fn sigterm_finishes_the_requests_in_flight_before_exiting() {
    let data = tempfile::tempdir().unwrap();
    let mut node = BinNode::start(data.path(), &[]);
    let slow = ureq::post(&format!("{}/admin/sandbox/settings", node.url))
        .set("authorization", "Bearer demo-admin-token")
        .send_json(serde_json::json!({ "latency_ms": 1500, "error_rate": 0.0, "hang_rate": 0.0 }));
    assert_eq!(slow.map(|r| r.status()).ok(), Some(200), "the sandbox answers slowly now");
    let client = node.client();
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            std::thread::spawn(move || {
                client.post_signed("/api/v1/payment/pay", Client::pay_params(&format!("TERM-{i}"), "1.00"))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let term = std::process::Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(node.url.trim_start_matches("http://")).is_err(),
        "no new connections while stopping"
    );
    let mut acked = Vec::new();
    for h in in_flight {
        let a = h.join().unwrap().expect("answered, not reset");
        assert_eq!(a.code(), "SUCCESS", "{a:?}");
        acked.push(a.data("pay_order_no").to_owned());
    }
    let status = node.child.wait().unwrap();
    assert!(status.success(), "a clean exit: {status}");
    let node = BinNode::start(data.path(), &[]);
    for id in &acked {
        assert_eq!(node.client().query_id(id).code(), "SUCCESS", "{id}");
    }
}

/// A journal of the earlier format has no segment header: it must be refused as such,
/// never taken for a torn first write and cut.
#[test]
fn a_journal_of_the_earlier_format_is_refused_and_left_whole() {
    let data = tempfile::tempdir().unwrap();
    let journal = data.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    // An old record: magic, length, checksum, payload; then the segment's zeros.
    let mut old = b"PGJ1".to_vec();
    old.extend_from_slice(&5u32.to_le_bytes());
    old.extend_from_slice(&crc32c::crc32c(b"hello").to_le_bytes());
    old.extend_from_slice(b"hello");
    old.resize(4096, 0);
    std::fs::write(segment_path(&journal, 0), &old).unwrap();
    let err = Storage::open(&options(data.path(), 64 << 20)).err().expect("refused");
    assert!(err.to_string().contains("earlier journal format"), "{err}");
    assert_eq!(std::fs::read(segment_path(&journal, 0)).unwrap(), old, "nothing was cut");
}
