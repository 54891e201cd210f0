//! The last states of recently passivated or read orders, so that the queries that
//! follow a payment (merchants poll right after paying, and go on polling an order until
//! it changes) are answered from memory instead of the views. Bounded in bytes: each
//! entry is charged what its order holds (an estimate that errs high, its rendered
//! answer included), and the oldest entries leave while the total is over the bound, so
//! memory stays flat however many orders complete.
//!
//! It is never stale for an order that is not live (while an order is live, reads take
//! the state its actor publishes: the registry is asked first):
//! - a passivating actor puts its last state in, after the views show it, replacing any;
//! - a reader that found an order neither live nor kept and read it from the views puts
//!   that state in only if no state was put in for the order since the reader took its
//!   [`Mark`] (before asking the registry), and no entry made since has left, so that
//!   any state put in meanwhile is still here to be seen: entries leave in the order
//!   they were made, each when its own place in the queue comes up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::ids::{merchant_key, PayOrderNo};
use crate::shared_order::SharedOrder;

/// Recently passivated or read orders, by id and by merchant key.
#[derive(Debug)]
pub struct ReadCache {
    /// The most bytes its entries may be charged.
    capacity: usize,
    by_id: DashMap<PayOrderNo, Kept>,
    by_key: DashMap<String, PayOrderNo>,
    /// The places, in the order made, and what they are charged.
    queue: Mutex<Places>,
    /// Places made so far (changed only under `queue`'s lock).
    made: AtomicU64,
    /// Reads that found the order neither live nor here, and read the views.
    misses: AtomicU64,
}

/// The queue of places, for eviction: places leave in the order they were made.
#[derive(Debug, Default)]
struct Places {
    order: VecDeque<(u64, PayOrderNo)>,
    /// What the kept states are charged (their places are charged by their count).
    bytes: usize,
    /// Places below this have left.
    left_below: u64,
}

/// An order state, the place in the queue it was put in at, and its charge.
#[derive(Debug)]
struct Kept {
    place: u64,
    order: Arc<SharedOrder>,
    bytes: usize,
}

/// What each place in the queue costs besides its order — the queue slot, the two map
/// entries and the merchant key — charged while the place is queued, so places of
/// replaced states count too and the queue stays bounded.
const PLACE_BYTES: usize = 160;

/// Room allowed for an order's rendered answer (the query answer is about 600 bytes).
const ANSWER_BYTES: usize = 1024;

/// What keeping `order` is charged besides its place: the order, the text it holds,
/// its refunds, and room for its rendered answer.
fn charge(order: &SharedOrder) -> usize {
    let spec = &order.spec;
    let optional = [&spec.body, &spec.notify_url, &spec.return_url, &spec.client_ip, &spec.device_id, &spec.user_id];
    let texts = spec.merchant_id.len()
        + spec.order_no.len()
        + spec.subject.len()
        + optional.iter().map(|t| t.as_ref().map_or(0, String::len)).sum::<usize>()
        + order.channel.len()
        + [&order.code_url, &order.channel_trade_no, &order.failure]
            .iter()
            .map(|t| t.as_ref().map_or(0, String::len))
            .sum::<usize>();
    let refunds = order.refunds.iter().map(|r| std::mem::size_of_val(r) + r.spec.refund_no.len() + 64).sum::<usize>();
    let late = order.late_payments.iter().map(|p| std::mem::size_of_val(p) + p.channel_trade_no.len()).sum::<usize>();
    std::mem::size_of::<SharedOrder>() + texts + refunds + late + ANSWER_BYTES
}

/// How far the cache had come when a reader began to look for an order; see
/// [`ReadCache::keep_read`].
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

impl ReadCache {
    /// A cache charged at most `capacity` bytes (0: it keeps nothing).
    pub fn new(capacity: usize) -> ReadCache {
        ReadCache {
            capacity,
            by_id: DashMap::new(),
            by_key: DashMap::new(),
            queue: Mutex::default(),
            made: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Keeps `order`, the last state of an order whose actor is passivating.
    pub fn insert(&self, order: Arc<SharedOrder>) {
        self.put(order, None);
    }

    /// Where the cache stands now. A reader takes it before it asks the registry.
    pub fn mark(&self) -> Mark {
        Mark(self.made.load(Ordering::Acquire))
    }

    /// Keeps `order`, read from the views by a reader that took `mark` and then found the
    /// order neither live nor kept, unless a state was put in for it since (that one is
    /// as new or newer) or too many entries were made since to be sure none left.
    pub fn keep_read(&self, order: Arc<SharedOrder>, mark: Mark) {
        self.put(order, Some(mark));
    }

    fn put(&self, order: Arc<SharedOrder>, read_since: Option<Mark>) {
        let cost = charge(&order);
        if cost + PLACE_BYTES > self.capacity {
            return;
        }
        let id = order.pay_order_no.clone();
        // All of it under the lock: a reader's state is weighed against every state put
        // in before it, and places are made and leave in order.
        let mut places = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let place = self.made.load(Ordering::Relaxed);
        if let Some(Mark(mark)) = read_since {
            if places.left_below > mark || self.by_id.contains_key(&id) {
                return;
            }
        }
        self.made.store(place + 1, Ordering::Release);
        places.order.push_back((place, id.clone()));
        self.by_key.insert(merchant_key(&order.spec.merchant_id, &order.spec.order_no), id.clone());
        places.bytes += cost;
        // A replaced state is no longer held; its place stays queued, charged nothing.
        if let Some(old) = self.by_id.insert(id, Kept { place, order, bytes: cost }) {
            places.bytes = places.bytes.saturating_sub(old.bytes);
        }
        while places.bytes + places.order.len() * PLACE_BYTES > self.capacity {
            let Some((place, old)) = places.order.pop_front() else { break };
            places.left_below = place + 1;
            // A place whose order was put in again since leaves without it.
            if let Some((_, kept)) = self.by_id.remove_if(&old, |_, k| k.place == place) {
                places.bytes = places.bytes.saturating_sub(kept.bytes);
                let key = merchant_key(&kept.order.spec.merchant_id, &kept.order.spec.order_no);
                self.by_key.remove_if(&key, |_, v| *v == old);
            }
        }
    }

    /// The kept state of order `id`.
    pub fn get(&self, id: &PayOrderNo) -> Option<Arc<SharedOrder>> {
        self.by_id.get(id).map(|k| Arc::clone(&k.order))
    }

    /// The kept state of `merchant_id`'s order `order_no`.
    pub fn get_by_key(&self, merchant_id: &str, order_no: &str) -> Option<Arc<SharedOrder>> {
        let id = self.by_key.get(&merchant_key(merchant_id, order_no)).map(|id| id.clone())?;
        self.get(&id)
    }

    /// Counts a read that found the order neither live nor here (it reads the views).
    pub fn missed(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads so far that found the order neither live nor here: with the reads made,
    /// how an operator tells whether the cache is large enough.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes its entries are charged now, their places included.
    pub fn bytes(&self) -> u64 {
        let places = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (places.bytes + places.order.len() * PLACE_BYTES) as u64
    }

    /// How many orders it holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl Default for ReadCache {
    /// 128 MiB.
    fn default() -> Self {
        ReadCache::new(128 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, Money};
    use crate::order::{Order, OrderEvent, OrderSpec, PayMethod};

    fn order(n: u64, order_no: &str) -> Arc<SharedOrder> {
        let spec = OrderSpec::new("M1", order_no, Money::from_minor(100, Currency::CNY), "s", PayMethod::Sandbox);
        let id = PayOrderNo::parse(&format!("P{n:021}")).unwrap();
        let created = OrderEvent::created(id, spec, "sandbox".into(), 1_700_000_000_000, 60_000);
        SharedOrder::share(Order::from_created(&created).unwrap())
    }

    #[test]
    fn finds_by_id_and_by_merchant_key_and_keeps_only_the_newest() {
        let cache = cache_of(2);
        let (a, b, c) = (order(1, "A"), order(2, "B"), order(3, "C"));
        cache.insert(Arc::clone(&a));
        cache.insert(Arc::clone(&b));
        assert_eq!(cache.get(&a.pay_order_no).map(|o| o.spec.order_no.clone()).as_deref(), Some("A"));
        assert_eq!(cache.get_by_key("M1", "B").map(|o| o.pay_order_no.clone()), Some(b.pay_order_no.clone()));
        cache.insert(Arc::clone(&c));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&a.pay_order_no).is_none() && cache.get_by_key("M1", "A").is_none(), "the oldest left");
        assert!(cache.get_by_key("M1", "C").is_some());
    }

    #[test]
    fn a_newer_state_replaces_the_older_and_zero_capacity_keeps_nothing() {
        let cache = cache_of(4);
        let first = order(1, "A");
        let mut later = first.order().clone();
        later.seq = 7;
        cache.insert(first);
        cache.insert(SharedOrder::share(later));
        assert_eq!(cache.get_by_key("M1", "A").map(|o| o.seq), Some(7));
        let none = ReadCache::new(0);
        none.insert(order(2, "B"));
        assert!(none.is_empty());
    }

    fn state(n: u64, seq: u64) -> Arc<SharedOrder> {
        let mut o = order(n, &format!("O{n}")).order().clone();
        o.seq = seq;
        SharedOrder::share(o)
    }

    /// A cache with room for `n` of this module's test orders, each in its own place.
    fn cache_of(n: usize) -> ReadCache {
        ReadCache::new(n * (charge(&order(0, "O0")) + PLACE_BYTES) + PLACE_BYTES / 2)
    }

    fn seq_of(cache: &ReadCache, n: u64) -> Option<u64> {
        cache.get(&state(n, 0).pay_order_no).map(|o| o.seq)
    }

    #[test]
    fn a_state_read_from_the_views_is_kept_for_the_polls_that_follow() {
        let cache = cache_of(4);
        let mark = cache.mark();
        cache.keep_read(state(1, 3), mark);
        assert_eq!(seq_of(&cache, 1), Some(3));
        assert_eq!(cache.get_by_key("M1", "O1").map(|o| o.seq), Some(3));
        // A second reader of the same order finds it kept and does not put it in again.
        cache.keep_read(state(1, 3), mark);
        assert_eq!(cache.queue.lock().unwrap().order.len(), 1);
    }

    #[test]
    fn a_read_never_replaces_a_state_put_in_since_its_mark() {
        let cache = cache_of(4);
        let mark = cache.mark();
        // The order was activated, changed and passivated while the reader read the views.
        cache.insert(state(1, 7));
        cache.keep_read(state(1, 6), mark);
        assert_eq!(seq_of(&cache, 1), Some(7));
    }

    #[test]
    fn a_read_whose_mark_is_too_old_is_not_kept() {
        let cache = cache_of(2);
        let mark = cache.mark();
        // The newer state came and went again before the reader got back.
        cache.insert(state(1, 7));
        cache.insert(state(2, 1));
        cache.insert(state(3, 1));
        assert_eq!(seq_of(&cache, 1), None);
        cache.keep_read(state(1, 6), mark);
        assert_eq!(seq_of(&cache, 1), None, "a stale state must not come back");
        // A fresh reader's state is kept.
        cache.keep_read(state(1, 7), cache.mark());
        assert_eq!(seq_of(&cache, 1), Some(7));
    }

    #[test]
    fn an_entry_leaves_only_when_its_own_place_comes_up() {
        let cache = cache_of(2);
        cache.insert(state(1, 1));
        cache.insert(state(2, 1));
        cache.insert(state(1, 7)); // order 1's first place leaves, not its newer state
        assert_eq!((seq_of(&cache, 1), seq_of(&cache, 2)), (Some(7), Some(1)));
        cache.insert(state(3, 1));
        assert_eq!((seq_of(&cache, 1), seq_of(&cache, 2), seq_of(&cache, 3)), (Some(7), None, Some(1)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The order changes and passivates.
        Passivate(u64),
        /// A reader takes its mark and reads the order from the views.
        BeginRead(u64),
        /// The oldest reader still reading (or the `k`th) keeps what it read.
        FinishRead(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..5u64).prop_map(Op::Passivate),
            (0..5u64).prop_map(Op::BeginRead),
            (0..4usize).prop_map(Op::FinishRead),
        ]
    }

    proptest::proptest! {
        /// However passivations and readers interleave, whatever the cache holds for an
        /// order is its latest state, and it holds at most `capacity` orders.
        #[test]
        fn never_stale_and_bounded(ops in proptest::collection::vec(op(), 1..200), capacity in 1..4usize) {
            let cache = cache_of(capacity);
            let mut latest = [1u64; 5];
            let mut reading: Vec<(u64, u64, Mark)> = Vec::new();
            for op in ops {
                match op {
                    Op::Passivate(n) => {
                        latest[n as usize] += 1;
                        cache.insert(state(n, latest[n as usize]));
                    }
                    Op::BeginRead(n) => reading.push((n, latest[n as usize], cache.mark())),
                    Op::FinishRead(k) if !reading.is_empty() => {
                        let (n, seq, mark) = reading.remove(k % reading.len());
                        cache.keep_read(state(n, seq), mark);
                    }
                    Op::FinishRead(_) => {}
                }
                for n in 0..5u64 {
                    let kept = seq_of(&cache, n);
                    proptest::prop_assert!(kept.is_none() || kept == Some(latest[n as usize]), "order {n}: {kept:?} kept, {} latest", latest[n as usize]);
                }
                proptest::prop_assert!(cache.len() <= capacity && cache.by_key.len() <= capacity);
            }
        }
    }

    #[test]
    fn an_order_is_charged_what_it_holds() {
        let small = order(1, "A");
        let mut big = small.order().clone();
        big.spec.subject = "x".repeat(10_000);
        assert_eq!(charge(&SharedOrder::share(big)), charge(&small) + 9_999, "its subject, 10,000 bytes for 1");
        // A cache charged the bound of a few orders keeps that many, however large.
        let cache = ReadCache::new(3 * (charge(&small) + PLACE_BYTES));
        for n in 0..10 {
            cache.insert(order(n, "A"));
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn stays_bounded_however_many_orders_pass() {
        let cache = cache_of(100);
        for n in 0..10_000 {
            cache.insert(order(n, &format!("O{n}")));
        }
        // Longer order numbers than the one the room was sized by: a few fewer fit.
        assert!((95..=100).contains(&cache.len()), "{}", cache.len());
        assert!(cache.by_key.len() <= 100);
        assert!(cache.bytes() <= cache.capacity as u64, "{} charged of {}", cache.bytes(), cache.capacity);
        assert!(cache.get_by_key("M1", "O9999").is_some() && cache.get_by_key("M1", "O0").is_none());
    }
}
