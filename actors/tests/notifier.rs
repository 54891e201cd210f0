//! The merchant's delivery actor with an in-memory journal and views and a scripted
//! transport: notifications of one order go in order, and a queue over its bound is
//! read back from the views without losing or repeating any.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paygate_actors::clock::SystemClock;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::merchant::{MerchantProfile, MerchantStatus};
use paygate_actors::money::{Currency, Money};
use paygate_actors::notification::{Attempt, Notification, NotifyStatus, RetrySchedule};
use paygate_actors::notifier::{NotifierContext, NotifierDirectory, NotifyPolicy};
use paygate_actors::order::NotifyType;
use paygate_actors::order::{Order, OrderEvent, OrderSpec, PayMethod};
use paygate_actors::ports::{BoxFuture, Journal, NotifyStore, NotifyTransport, Outgoing, Record, StorageError, Ticket};

/// Journal and views in one: a notify record is applied to the stored notification as
/// it is appended (the views are never behind).
#[derive(Default)]
struct Mem {
    notes: Mutex<BTreeMap<String, Notification>>,
}

impl Journal for Mem {
    fn append(&self, record: Record) -> BoxFuture<Result<Ticket, StorageError>> {
        if let Record::Notify { notify_id, version, events, .. } = &record {
            let mut notes = self.notes.lock().unwrap();
            let n = notes.get_mut(notify_id).expect("a notification the views know");
            assert_eq!(n.version + 1, *version, "versions follow");
            for e in events {
                n.apply(e).unwrap();
            }
            n.version = *version;
        }
        Box::pin(async { Ok(1) })
    }

    fn is_projected(&self, _: Ticket) -> bool {
        true
    }
}

impl NotifyStore for Mem {
    fn pending(&self, merchant_id: &str, limit: usize) -> Result<Vec<Notification>, StorageError> {
        let mut v: Vec<Notification> = self
            .notes
            .lock()
            .unwrap()
            .values()
            .filter(|n| n.merchant_id == merchant_id && n.status == NotifyStatus::Pending)
            .cloned()
            .collect();
        v.sort_by_key(|n| n.due);
        v.truncate(limit);
        Ok(v)
    }

    fn dead(&self, _: &str, _: usize) -> Result<Vec<Notification>, StorageError> {
        Ok(Vec::new())
    }

    fn of_order(&self, id: &PayOrderNo) -> Result<Vec<Notification>, StorageError> {
        Ok(self.notes.lock().unwrap().values().filter(|n| n.pay_order_no == *id).cloned().collect())
    }
}

/// Answers SUCCESS, except once to each id in `fail_once`; records every call.
#[derive(Default)]
struct Transport {
    calls: Mutex<Vec<String>>,
    fail_once: Mutex<HashSet<String>>,
}

impl NotifyTransport for Transport {
    fn deliver(&self, outgoing: Outgoing, started: i64) -> BoxFuture<Attempt> {
        self.calls.lock().unwrap().push(outgoing.notify_id.clone());
        let fail = self.fail_once.lock().unwrap().remove(&outgoing.notify_id);
        Box::pin(async move {
            match fail {
                true => Attempt::answered(started, 1, 500, b"later"),
                false => Attempt::answered(started, 1, 200, b"SUCCESS"),
            }
        })
    }
}

fn merchant() -> Arc<MerchantProfile> {
    Arc::new(MerchantProfile {
        merchant_id: "M1".into(),
        name: "m".into(),
        secret: "secret-secret-secret".into(),
        legacy_md5: false,
        status: MerchantStatus::Active,
        expire_minutes: 30,
        notify_url: Some("http://merchant.test/notify".into()),
        allow_private_notify: false,
        rate_limit: None,
        routing: Default::default(),
    })
}

/// The PAY notification of a paid order `n`, as its record `seq` left it.
fn note(n: u64, seq: u64) -> Notification {
    let id = PayOrderNo::parse(&format!("P1704067200000{n:08}")).unwrap();
    let spec = OrderSpec::new("M1", format!("o-{n}"), Money::from_minor(100, Currency::CNY), "t", PayMethod::Sandbox);
    let mut order = Order::from_created(&OrderEvent::created(id, spec, "sandbox".into(), 0, 60_000)).unwrap();
    order.apply(&OrderEvent::Paid { channel_trade_no: "T".into(), amount_minor: 100, at: 1 }).unwrap();
    order.seq = seq;
    Notification::for_order(&order, NotifyType::Pay, None, 0)
}

fn world(policy: NotifyPolicy) -> (Arc<Mem>, Arc<Transport>, NotifierDirectory) {
    let mem = Arc::new(Mem::default());
    let transport = Arc::new(Transport::default());
    let nc = Arc::new(NotifierContext {
        journal: mem.clone(),
        store: mem.clone(),
        transport: transport.clone(),
        clock: Arc::new(SystemClock),
        policy,
        jitter: Arc::new(|| 0.5),
    });
    let dir = NotifierDirectory::start(nc, [merchant()], |_, actor| actix::Actor::start(actor));
    (mem, transport, dir)
}

/// Hands `n` over as an order actor does: the views have it (its order record is
/// projected), and the actor is told.
fn hand_over(mem: &Mem, dir: &NotifierDirectory, n: Notification) {
    mem.notes.lock().unwrap().insert(n.notify_id.clone(), n.clone());
    dir.enqueue(n);
}

async fn settle(mem: &Mem, expected: usize) {
    for _ in 0..200 {
        let delivered = mem.notes.lock().unwrap().values().filter(|n| n.status == NotifyStatus::Delivered).count();
        if delivered == expected {
            return;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    panic!("not every notification was delivered: {:?}", mem.notes.lock().unwrap());
}

#[actix_rt::test]
async fn an_orders_notifications_go_in_order() {
    let policy =
        NotifyPolicy { schedule: RetrySchedule { delays_ms: vec![50, 50], jitter: 0.0 }, ..NotifyPolicy::default() };
    let (mem, transport, dir) = world(policy);
    let (older, newer) = (note(1, 2), note(1, 3));
    transport.fail_once.lock().unwrap().insert(older.notify_id.clone());
    hand_over(&mem, &dir, newer.clone());
    hand_over(&mem, &dir, older.clone());
    // Another order's notification is not held up by this order's retry.
    let other = note(2, 2);
    hand_over(&mem, &dir, other.clone());
    settle(&mem, 3).await;
    let calls = transport.calls.lock().unwrap().clone();
    let pos = |id: &str| calls.iter().rposition(|c| c == id).unwrap();
    assert_eq!(calls.iter().filter(|c| **c == older.notify_id).count(), 2, "{calls:?}");
    assert!(pos(&older.notify_id) < pos(&newer.notify_id), "the newer state waited for the older: {calls:?}");
    assert!(pos(&other.notify_id) < pos(&older.notify_id), "another order went ahead: {calls:?}");
}

#[actix_rt::test]
async fn a_queue_over_its_bound_is_read_back_from_the_views() {
    let policy = NotifyPolicy { queue: 3, max_in_flight: 1, ..NotifyPolicy::default() };
    let (mem, transport, dir) = world(policy);
    for i in 0..20 {
        hand_over(&mem, &dir, note(i, 2));
    }
    settle(&mem, 20).await;
    let calls = transport.calls.lock().unwrap().clone();
    let distinct: HashSet<&String> = calls.iter().collect();
    assert_eq!((calls.len(), distinct.len()), (20, 20), "each delivered once: {calls:?}");
}
