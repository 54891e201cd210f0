//! The order actor's flows against fakes of every port and a fake clock: deterministic,
//! no I/O. Only the passivation test waits on real (actix) timers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor;
use paygate_actors::breaker::BreakerPolicy;
use paygate_actors::channel::{ChannelDirectory, ChannelHandle, ChannelProfile, ChannelStatus};
use paygate_actors::clock::FakeClock;
use paygate_actors::error::ErrorCode;
use paygate_actors::ids::{PayOrderNo, ShardId};
use paygate_actors::money::{Currency, Money};
use paygate_actors::order::{ChannelNotice, Order, OrderSpec, OrderStatus, PayMethod, QueryPolicy};
use paygate_actors::order_actor::{OrderContext, OrderRequest, Passivation, PaySubmission};
use paygate_actors::order_router::OrderRouter;
use paygate_actors::ports::*;
use paygate_actors::refund::RefundState;
use paygate_actors::registry::{OrderTarget, Registry};
use paygate_actors::shard::ShardSupervisor;
use paygate_actors::strategy::Route;

/// Journal + store in memory: appending applies the record to the snapshot map.
#[derive(Default)]
struct MemStore {
    records: Mutex<Vec<Record>>,
    orders: Mutex<HashMap<PayOrderNo, Order>>,
    /// Pretend the views have not caught up with the journal.
    lagging: AtomicBool,
    /// Snapshot loads, to see which reads reached the store.
    loads: std::sync::atomic::AtomicUsize,
}

impl Journal for MemStore {
    fn append(&self, record: Record) -> BoxFuture<Result<u64, StorageError>> {
        let Record::Order { pay_order_no, seq, events } = &record else {
            return Box::pin(async { Ok(0) });
        };
        let mut orders = self.orders.lock().unwrap();
        let mut state = orders.get(pay_order_no).cloned();
        assert_eq!(state.as_ref().map_or(0, |o| o.seq) + 1, *seq, "sequence must follow");
        for e in events {
            state = Some(Order::evolve(state, e).unwrap());
        }
        let mut order = state.unwrap();
        order.seq = *seq;
        orders.insert(pay_order_no.clone(), order);
        let mut records = self.records.lock().unwrap();
        records.push(record);
        let ticket = records.len() as u64;
        Box::pin(async move { Ok(ticket) })
    }

    fn is_projected(&self, _: u64) -> bool {
        !self.lagging.load(Ordering::SeqCst)
    }
}

impl OrderStore for MemStore {
    fn load(&self, id: &PayOrderNo) -> Result<Option<Order>, StorageError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.orders.lock().unwrap().get(id).cloned())
    }
    fn find(&self, m: &str, o: &str) -> Result<Option<PayOrderNo>, StorageError> {
        let orders = self.orders.lock().unwrap();
        Ok(orders.values().find(|x| x.spec.merchant_id == m && x.spec.order_no == o).map(|x| x.pay_order_no.clone()))
    }
    fn find_refund(&self, m: &str, refund_no: &str) -> Result<Option<String>, StorageError> {
        let orders = self.orders.lock().unwrap();
        let refund = orders
            .values()
            .filter(|x| x.spec.merchant_id == m)
            .find_map(|x| x.refund(refund_no).map(|r| r.refund_order_no.clone()));
        Ok(refund)
    }
    fn list_orders(&self, q: &ListQuery) -> Result<Page<Order>, StorageError> {
        let orders = self.orders.lock().unwrap();
        let mut items: Vec<Order> = orders.values().filter(|o| o.spec.merchant_id == q.merchant_id).cloned().collect();
        items.sort_by_key(|o| std::cmp::Reverse(o.create_time));
        items.truncate(q.limit);
        Ok(Page { items, next: None })
    }
    fn list_refunds(&self, _: &ListQuery) -> Result<Page<(Order, String)>, StorageError> {
        Ok(Page { items: Vec::new(), next: None })
    }
    fn bill(&self, _: &str, _: i64, _: Option<&str>, _: usize) -> Result<Page<BillItem>, StorageError> {
        Ok(Page { items: Vec::new(), next: None })
    }
    fn due_timers(&self, _: i64, _: usize) -> Result<Vec<PayOrderNo>, StorageError> {
        Ok(vec![])
    }
    fn id_high_water(&self) -> u64 {
        0
    }
}

/// A provider whose trade states the test sets; counts calls.
#[derive(Default)]
struct FakeChannel {
    state: Mutex<HashMap<String, ChannelNotice>>,
    calls: Mutex<Vec<&'static str>>,
    /// While set, a close call does not return (a slow channel).
    hold_close: Arc<AtomicBool>,
    /// While set, a create call opens the trade but its answer is lost.
    lose_create_answer: AtomicBool,
    /// While set, queries go unanswered.
    lose_query_answer: AtomicBool,
    /// The account it opens trades under.
    account: String,
    /// The trades refunds were asked of.
    refunded: Mutex<Vec<Option<String>>>,
}

struct Conn(Arc<FakeChannel>);

impl ChannelConnector for Conn {
    fn account(&self) -> &str {
        &self.0.account
    }
    fn create_order(&self, o: ChannelOrder) -> BoxFuture<Result<CreateAccepted, ChannelError>> {
        self.0.calls.lock().unwrap().push("create");
        self.0.state.lock().unwrap().entry(o.pay_order_no.to_string()).or_insert(ChannelNotice::NotPaid);
        if self.0.lose_create_answer.load(Ordering::SeqCst) {
            return Box::pin(async { Err(ChannelError::Unknown("timed out".into())) });
        }
        Box::pin(async move {
            Ok(CreateAccepted { code_url: format!("fake://{}", o.pay_order_no), channel_trade_no: None })
        })
    }
    fn query_order(&self, t: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        self.0.calls.lock().unwrap().push("query");
        if self.0.lose_query_answer.load(Ordering::SeqCst) {
            return Box::pin(async { Err(ChannelError::Unknown("timed out".into())) });
        }
        let n = self.0.state.lock().unwrap().get(t.pay_order_no.as_str()).cloned().unwrap_or(ChannelNotice::NotPaid);
        Box::pin(async move { Ok(n) })
    }
    fn close_order(&self, t: TradeRef) -> BoxFuture<Result<ChannelNotice, ChannelError>> {
        self.0.calls.lock().unwrap().push("close");
        let mut s = self.0.state.lock().unwrap();
        let e = s.entry(t.pay_order_no.to_string()).or_insert(ChannelNotice::Closed);
        if *e == ChannelNotice::NotPaid {
            *e = ChannelNotice::Closed;
        }
        let n = e.clone();
        let hold = Arc::clone(&self.0.hold_close);
        Box::pin(async move {
            while hold.load(Ordering::SeqCst) {
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(n)
        })
    }
    fn refund(&self, r: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        self.0.refunded.lock().unwrap().push(r.trade.channel_trade_no);
        Box::pin(async { Ok(RefundState::Success) })
    }
    fn query_refund(&self, _: ChannelRefund) -> BoxFuture<Result<RefundState, ChannelError>> {
        Box::pin(async { Ok(RefundState::Success) })
    }
    fn download_bill(&self, _: String) -> BoxFuture<Result<Vec<BillLine>, ChannelError>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn verify_callback(&self, _: &CallbackRequest) -> Option<Verified> {
        None
    }
    fn callback_ack(&self) -> CallbackReply {
        CallbackReply { status: 200, content_type: "text/plain", body: b"success".to_vec() }
    }
    fn callback_nack(&self) -> CallbackReply {
        CallbackReply { status: 400, content_type: "text/plain", body: b"fail".to_vec() }
    }
}

struct World {
    router: OrderRouter,
    clock: Arc<FakeClock>,
    /// `fake`, the channel every payment is routed to first.
    channel: Arc<FakeChannel>,
    /// `fake-2`, the next one for payments routed to both.
    second: Arc<FakeChannel>,
    store: Arc<MemStore>,
}

fn world() -> World {
    world_with(Passivation::default())
}

fn world_with(passivation: Passivation) -> World {
    world_of(passivation, ["fake:A", "fake:B"])
}

/// Two channels, `fake` and `fake-2`, on the given accounts.
fn world_of(passivation: Passivation, accounts: [&str; 2]) -> World {
    let clock = Arc::new(FakeClock::at(1_700_000_000_000));
    let store = Arc::new(MemStore::default());
    let fake = |account: &str| Arc::new(FakeChannel { account: account.into(), ..FakeChannel::default() });
    let (channel, second) = (fake(accounts[0]), fake(accounts[1]));
    let profile = |code: &str| ChannelProfile {
        code: code.into(),
        provider: "fake".into(),
        methods: vec![PayMethod::Sandbox],
        currencies: vec![paygate_actors::money::Currency::CNY],
        weight: 1,
        status: ChannelStatus::Enabled,
        single_limit_minor: None,
        daily_limit_minor: None,
        fee_rate: rust_decimal::Decimal::ZERO,
        timeout: std::time::Duration::from_secs(3),
    };
    let start = |code: &str, c: &Arc<FakeChannel>| {
        let conn = Arc::new(Conn(c.clone()));
        ChannelHandle::start(profile(code), Default::default(), conn, BreakerPolicy::default(), clock.clone())
    };
    let oc = Arc::new(OrderContext {
        journal: store.clone(),
        store: store.clone(),
        channels: ChannelDirectory::new(vec![start("fake", &channel), start("fake-2", &second)]),
        clock: clock.clone(),
        registry: Arc::new(Registry::default()),
        query_policy: QueryPolicy::default(),
        passivation,
        notifier: Default::default(),
        failover_budget: Duration::from_secs(10),
        risk: Default::default(),
    });
    let shards = (0..4).map(|n| ShardSupervisor::new(ShardId(n), oc.clone()).start()).collect();
    World { router: OrderRouter::new(oc, shards), clock, channel, second, store }
}

fn pay(order_no: &str) -> OrderRequest {
    pay_routed(order_no, &["fake"])
}

fn pay_routed(order_no: &str, candidates: &[&str]) -> OrderRequest {
    let spec = OrderSpec {
        expire_minutes: Some(30),
        ..OrderSpec::new("M1", order_no, Money::from_minor(500, Currency::CNY), "s", PayMethod::Sandbox)
    };
    OrderRequest::Pay(Box::new(PaySubmission {
        spec,
        route: Ok(Route { candidates: candidates.iter().map(|c| c.to_string()).collect(), ..Route::default() }),
        expire_after_ms: 30 * 60_000,
        buyer_account: None,
    }))
}

fn key(order_no: &str) -> OrderTarget {
    OrderTarget::Key { merchant_id: "M1".into(), order_no: order_no.into() }
}

#[actix_rt::test]
async fn expiry_queries_then_closes_at_the_channel_then_expires() {
    let w = world();
    let o = w.router.dispatch(key("A"), pay("A"), Some("M1".into())).await.unwrap();
    assert_eq!(o.status, OrderStatus::Paying);
    let id = OrderTarget::Id(o.pay_order_no.clone());

    // Not due: a tick does nothing.
    w.clock.advance(30_000);
    let o = w.router.dispatch(id.clone(), OrderRequest::Tick, None).await.unwrap();
    assert_eq!((o.status, o.query_attempts), (OrderStatus::Paying, 0));

    // 60 s: the first active query.
    w.clock.advance(30_000);
    let o = w.router.dispatch(id.clone(), OrderRequest::Tick, None).await.unwrap();
    assert_eq!(o.query_attempts, 1);

    // At expiry: query first, then close at the channel, then EXPIRED.
    w.clock.advance(30 * 60_000);
    let o = w.router.dispatch(id.clone(), OrderRequest::Tick, None).await.unwrap();
    assert_eq!(o.status, OrderStatus::Expired);
    assert_eq!(*w.channel.calls.lock().unwrap(), ["create", "query", "query", "close"]);
    assert_eq!(w.store.records.lock().unwrap().len(), 3, "created with the channel's answer, queried, expired");
}

#[actix_rt::test]
async fn a_payment_found_at_expiry_wins_over_expiry() {
    let w = world();
    let o = w.router.dispatch(key("B"), pay("B"), Some("M1".into())).await.unwrap();
    let paid = ChannelNotice::Paid { channel_trade_no: "T1".into(), amount_minor: 500 };
    w.channel.state.lock().unwrap().insert(o.pay_order_no.to_string(), paid);
    w.clock.advance(31 * 60_000);
    let o = w.router.dispatch(OrderTarget::Id(o.pay_order_no), OrderRequest::Tick, None).await.unwrap();
    assert_eq!((o.status, o.channel_trade_no.as_deref()), (OrderStatus::Success, Some("T1")));
    assert!(!w.channel.calls.lock().unwrap().contains(&"close"), "a paid trade is never closed");
}

#[actix_rt::test]
async fn another_merchant_is_answered_not_found_and_changes_nothing() {
    let w = world();
    let o = w.router.dispatch(key("C"), pay("C"), Some("M1".into())).await.unwrap();
    let id = OrderTarget::Id(o.pay_order_no.clone());
    let err = w.router.dispatch(id.clone(), OrderRequest::Close, Some("M2".into())).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OrderNotFound);
    assert_eq!(w.router.read(id, None).await.unwrap().status, OrderStatus::Paying);
}

#[actix_rt::test]
async fn an_order_stays_live_until_the_views_show_its_last_record() {
    let quick = Duration::from_millis(20);
    let w = world_with(Passivation { idle: quick, final_idle: quick });
    let live = || w.router.context().registry.live_orders();
    w.store.lagging.store(true, Ordering::SeqCst);
    w.router.dispatch(key("L"), pay("L"), Some("M1".into())).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(live(), 1, "idle far past its limit, but the views do not show it yet");

    w.store.lagging.store(false, Ordering::SeqCst);
    for _ in 0..500 {
        if live() == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(live(), 0, "passivated once the views caught up");
}

#[actix_rt::test]
async fn a_read_does_not_wait_behind_a_slow_channel_call_and_sees_only_durable_states() {
    let w = Arc::new(world());
    let o = w.router.dispatch(key("R"), pay("R"), Some("M1".into())).await.unwrap();
    let id = OrderTarget::Id(o.pay_order_no.clone());
    w.channel.hold_close.store(true, Ordering::SeqCst);
    let closing = {
        let (w, id) = (Arc::clone(&w), id.clone());
        actix_rt::spawn(async move { w.router.dispatch(id, OrderRequest::Close, Some("M1".into())).await })
    };
    while !w.channel.calls.lock().unwrap().contains(&"close") {
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }

    // The actor is inside the close call: reads answer from what it last published.
    for target in [id.clone(), key("R")] {
        let read = w.router.read(target, Some("M1"));
        let order = actix_rt::time::timeout(Duration::from_secs(5), read).await.expect("read waited").unwrap();
        assert_eq!(order.status, OrderStatus::Paying);
    }
    let other = w.router.read(id.clone(), Some("M2")).await.unwrap_err();
    assert_eq!(other.code, ErrorCode::OrderNotFound, "published state is still the caller's own only");

    w.channel.hold_close.store(false, Ordering::SeqCst);
    assert_eq!(closing.await.unwrap().unwrap().status, OrderStatus::Closed);
    assert_eq!(w.router.read(id, None).await.unwrap().status, OrderStatus::Closed, "published after the append");
}

#[actix_rt::test]
async fn a_passivated_order_is_read_from_the_read_cache_and_a_reactivated_one_from_its_actor() {
    let quick = Duration::from_millis(20);
    let w = world_with(Passivation { idle: quick, final_idle: quick });
    let o = w.router.dispatch(key("RC"), pay("RC"), Some("M1".into())).await.unwrap();
    let id = OrderTarget::Id(o.pay_order_no.clone());
    let registry = &w.router.context().registry;
    for _ in 0..500 {
        if registry.live_orders() == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(registry.live_orders(), 0, "passivated");
    let loads = w.store.loads.load(Ordering::SeqCst);
    for target in [id.clone(), key("RC")] {
        assert_eq!(w.router.read(target, Some("M1")).await.unwrap().status, OrderStatus::Paying);
    }
    assert_eq!(w.store.loads.load(Ordering::SeqCst), loads, "answered from memory, not the store");
    assert_eq!(w.router.read(id.clone(), Some("M2")).await.unwrap_err().code, ErrorCode::OrderNotFound);

    // Reactivated and closed: reads follow the actor, and its next passivation the cache.
    assert_eq!(
        w.router.dispatch(id.clone(), OrderRequest::Close, Some("M1".into())).await.unwrap().status,
        OrderStatus::Closed
    );
    assert_eq!(w.router.read(id.clone(), None).await.unwrap().status, OrderStatus::Closed);
    for _ in 0..500 {
        if registry.live_orders() == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(registry.read_cache.get(&o.pay_order_no).map(|o| o.status), Some(OrderStatus::Closed));
    assert_eq!(w.router.read(key("RC"), None).await.unwrap().status, OrderStatus::Closed);
}

/// A shard holds at most `SHARD_QUEUE` requests in flight: past it, a request is refused
/// at once with SYSTEM_BUSY instead of waiting behind a full mailbox, and the shard
/// serves again once its queue drains.
#[actix_rt::test]
async fn a_saturated_shard_refuses_at_once_instead_of_queueing_without_limit() {
    use paygate_actors::order_router::SHARD_QUEUE;

    let w = world();
    let o = w.router.dispatch(key("BUSY"), pay("BUSY"), Some("M1".into())).await.unwrap();
    let id = OrderTarget::Id(o.pay_order_no.clone());
    w.channel.hold_close.store(true, Ordering::SeqCst);
    let held: Vec<_> = (0..SHARD_QUEUE)
        .map(|_| {
            let (router, id) = (w.router.clone(), id.clone());
            actix_rt::spawn(async move { router.dispatch(id, OrderRequest::Close, Some("M1".into())).await })
        })
        .collect();
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let refused = w.router.dispatch(id.clone(), OrderRequest::Close, Some("M1".into())).await;
    assert_eq!(refused.map_err(|e| e.code).err(), Some(ErrorCode::SystemBusy));
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not queued");
    w.channel.hold_close.store(false, Ordering::SeqCst);
    for h in held {
        let _ = h.await.unwrap();
    }
    let o = w.router.dispatch(id, OrderRequest::Query, Some("M1".into())).await.unwrap();
    assert_eq!(o.status, OrderStatus::Closed, "served again once the queue drained");
}

#[actix_rt::test]
async fn an_unanswered_opening_is_closed_before_the_next_account_takes_the_payment() {
    let w = world();
    w.channel.lose_create_answer.store(true, Ordering::SeqCst);
    let o = w.router.dispatch(key("U"), pay_routed("U", &["fake", "fake-2"]), Some("M1".into())).await.unwrap();
    assert_eq!(
        (o.status, o.channel.as_str(), o.abandoned.clone()),
        (OrderStatus::Paying, "fake-2", vec!["fake".into()])
    );
    assert!(o.code_url.is_some());
    let route = o.route.clone().unwrap();
    assert!(route.passed_over[0].starts_with("fake: timed out; its trade was closed"), "{route:?}");
    // Asked where the trade stands and closed it before the next channel was called.
    assert_eq!(*w.channel.calls.lock().unwrap(), ["create", "query", "close"]);
    assert_eq!(w.channel.state.lock().unwrap().get(o.pay_order_no.as_str()), Some(&ChannelNotice::Closed));
    assert_eq!(*w.second.calls.lock().unwrap(), ["create"]);
    assert_eq!(w.store.records.lock().unwrap().len(), 1, "one record: created, routed, abandoned, accepted");

    // Should the abandoned trade be paid after all, the payment is refunded there and
    // the order still waits for its own.
    let id = OrderTarget::Id(o.pay_order_no.clone());
    let late = ChannelNotice::Paid { channel_trade_no: "T-ABANDONED".into(), amount_minor: 500 };
    let notice = |channel: &str, notice: &ChannelNotice| OrderRequest::Notice {
        channel: channel.into(),
        notice: notice.clone(),
    };
    let o = w.router.dispatch(id.clone(), notice("fake", &late), None).await.unwrap();
    assert_eq!(o.status, OrderStatus::Paying);
    assert_eq!((o.late_payments.len(), o.late_payment_channel("T-ABANDONED")), (1, "fake"));
    assert_eq!(o.refunds[0].status, paygate_actors::refund::RefundStatus::Success);
    assert_eq!(*w.channel.refunded.lock().unwrap(), [Some("T-ABANDONED".to_owned())], "refunded at its channel");
    assert!(w.second.refunded.lock().unwrap().is_empty());
    // Told twice: recorded once.
    let again = w.router.dispatch(id.clone(), notice("fake", &late), None).await.unwrap();
    assert_eq!(again.refunds.len(), 1);

    let paid = ChannelNotice::Paid { channel_trade_no: "T-2".into(), amount_minor: 500 };
    let o = w.router.dispatch(id.clone(), notice("fake-2", &paid), None).await.unwrap();
    assert_eq!((o.status, o.channel_trade_no.as_deref()), (OrderStatus::Success, Some("T-2")));
    // A channel that never held a trade of the order is not believed.
    let err = w.router.dispatch(id, notice("elsewhere", &paid), None).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ChannelError);
}

#[actix_rt::test]
async fn a_trade_that_cannot_be_settled_keeps_the_order_with_its_channel() {
    let w = world();
    w.channel.lose_create_answer.store(true, Ordering::SeqCst);
    w.channel.lose_query_answer.store(true, Ordering::SeqCst);
    let err = w.router.dispatch(key("K"), pay_routed("K", &["fake", "fake-2"]), Some("M1".into())).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ChannelError);
    assert!(err.message.contains("PAYING"), "{err:?}");
    let o = w.router.read(key("K"), None).await.unwrap();
    assert_eq!((o.status, o.channel.as_str()), (OrderStatus::Paying, "fake"));
    assert!(o.abandoned.is_empty());
    assert_eq!(*w.channel.calls.lock().unwrap(), ["create", "query"], "never closed on a guess");
    assert!(w.second.calls.lock().unwrap().is_empty(), "no second trade while the first may be open");
}

#[actix_rt::test]
async fn the_next_channel_on_the_same_account_is_not_tried_after_a_trade_was_given_up() {
    let w = world_of(Passivation::default(), ["fake:A", "fake:A"]);
    w.channel.lose_create_answer.store(true, Ordering::SeqCst);
    let err = w.router.dispatch(key("S"), pay_routed("S", &["fake", "fake-2"]), Some("M1".into())).await.unwrap_err();
    // Nothing to fail over to: the trade stays where it may exist, settled by query.
    assert_eq!(err.code, ErrorCode::ChannelError);
    let o = w.router.read(key("S"), None).await.unwrap();
    assert_eq!((o.status, o.channel.as_str()), (OrderStatus::Paying, "fake"));
    assert_eq!(*w.channel.calls.lock().unwrap(), ["create"]);
    assert!(w.second.calls.lock().unwrap().is_empty());
}
