//! The last states of recently passivated orders, so that the queries that follow a
//! payment (merchants poll right after paying) are answered from memory instead of the
//! views. Bounded: the oldest entry leaves when a new one arrives at capacity, so memory
//! stays flat however many orders complete.
//!
//! It is never stale: an order enters only when its actor passivates, after the views
//! show its last record, and while an order is live, reads take the state its actor
//! publishes (the registry is asked first); a later passivation replaces the entry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::ids::PayOrderNo;
use crate::registry::merchant_key;
use crate::shared_order::SharedOrder;

/// Recently passivated orders, by id and by merchant key.
#[derive(Debug)]
pub struct ReadCache {
    capacity: usize,
    by_id: DashMap<PayOrderNo, Arc<SharedOrder>>,
    by_key: DashMap<String, PayOrderNo>,
    /// Insertion order, for eviction.
    queue: Mutex<VecDeque<PayOrderNo>>,
}

impl ReadCache {
    /// A cache of at most `capacity` orders (0: none).
    pub fn new(capacity: usize) -> ReadCache {
        ReadCache { capacity, by_id: DashMap::new(), by_key: DashMap::new(), queue: Mutex::default() }
    }

    /// Keeps `order`, the last state of an order whose actor is passivating.
    pub fn insert(&self, order: Arc<SharedOrder>) {
        if self.capacity == 0 {
            return;
        }
        let id = order.pay_order_no.clone();
        let key = merchant_key(&order.spec.merchant_id, &order.spec.order_no);
        let evicted = {
            let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.push_back(id.clone());
            if queue.len() > self.capacity {
                queue.pop_front()
            } else {
                None
            }
        };
        self.by_key.insert(key, id.clone());
        self.by_id.insert(id.clone(), order);
        // The queue may hold an id twice (passivated again since): evicting its older
        // place then drops the newer state too, which only costs a read from the views.
        if let Some(old) = evicted.filter(|old| *old != id) {
            if let Some((_, o)) = self.by_id.remove(&old) {
                self.by_key.remove_if(&merchant_key(&o.spec.merchant_id, &o.spec.order_no), |_, v| *v == old);
            }
        }
    }

    /// The kept state of order `id`.
    pub fn get(&self, id: &PayOrderNo) -> Option<Arc<SharedOrder>> {
        self.by_id.get(id).map(|o| Arc::clone(&o))
    }

    /// The kept state of `merchant_id`'s order `order_no`.
    pub fn get_by_key(&self, merchant_id: &str, order_no: &str) -> Option<Arc<SharedOrder>> {
        let id = self.by_key.get(&merchant_key(merchant_id, order_no)).map(|id| id.clone())?;
        self.get(&id)
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
    /// 131,072 orders.
    fn default() -> Self {
        ReadCache::new(131_072)
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
        let cache = ReadCache::new(2);
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
        let cache = ReadCache::new(4);
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

    #[test]
    fn stays_bounded_however_many_orders_pass() {
        let cache = ReadCache::new(100);
        for n in 0..10_000 {
            cache.insert(order(n, &format!("O{n}")));
        }
        assert_eq!(cache.len(), 100);
        assert!(cache.by_key.len() <= 100);
        assert!(cache.get_by_key("M1", "O9999").is_some() && cache.get_by_key("M1", "O0").is_none());
    }
}
