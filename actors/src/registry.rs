//! The sharded registry of live order actors, for the hot path: an id or a merchant's
//! order number to the actor's address and its published state. Shard supervisors own
//! activation; actors remove themselves when they passivate.
//!
//! It is generic over the actor so that it knows addresses, not the actor that holds it
//! (the order actor registers and removes itself here).

use std::sync::Arc;

use actix::{Actor, Addr};
use dashmap::DashMap;

use crate::ids::{merchant_key, PayOrderNo};
use crate::read_cache::ReadCache;
use crate::shared_order::{Published, SharedOrder};

/// Which order a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderTarget {
    /// By our id.
    Id(PayOrderNo),
    /// By the merchant's order number.
    Key {
        /// The merchant.
        merchant_id: String,
        /// The merchant's order number.
        order_no: String,
    },
}

/// What the registry knows of an order's state (see [`Registry::live_state`]).
#[derive(Debug)]
pub enum LiveState {
    /// Live, and this is its last durable state.
    Published(Arc<SharedOrder>),
    /// Live, but it has published nothing yet (it is being created).
    Unpublished,
    /// No live actor.
    NotLive,
}

/// A live order: its actor and what the actor has published.
struct Live<A: Actor> {
    addr: Addr<A>,
    published: Arc<Published>,
}

impl<A: Actor> Clone for Live<A> {
    fn clone(&self) -> Self {
        Live { addr: self.addr.clone(), published: Arc::clone(&self.published) }
    }
}

/// Live order actors by id and by merchant key, and the last states of recently
/// passivated ones.
pub struct Registry<A: Actor> {
    by_id: DashMap<PayOrderNo, Live<A>>,
    by_key: DashMap<String, Live<A>>,
    /// Orders that left memory recently, for reads.
    pub read_cache: ReadCache,
}

impl<A: Actor> Default for Registry<A> {
    fn default() -> Self {
        Registry { by_id: DashMap::new(), by_key: DashMap::new(), read_cache: ReadCache::default() }
    }
}

impl<A: Actor> Registry<A> {
    /// A registry whose read cache holds up to `read_cache` bytes of passivated orders.
    pub fn with_read_cache(read_cache: usize) -> Self {
        Registry { read_cache: ReadCache::new(read_cache), ..Registry::default() }
    }

    /// The kept state of a passivated order, if the read cache has it.
    pub fn cached(&self, target: &OrderTarget) -> Option<Arc<SharedOrder>> {
        match target {
            OrderTarget::Id(id) => self.read_cache.get(id),
            OrderTarget::Key { merchant_id, order_no } => self.read_cache.get_by_key(merchant_id, order_no),
        }
    }

    /// `read` applied to the registry entry for `target`, if there is one (live or not).
    fn entry<R>(&self, target: &OrderTarget, read: impl FnOnce(&Live<A>) -> R) -> Option<R> {
        match target {
            OrderTarget::Id(id) => self.by_id.get(id).map(|l| read(&l)),
            OrderTarget::Key { merchant_id, order_no } => {
                self.by_key.get(&merchant_key(merchant_id, order_no)).map(|l| read(&l))
            }
        }
    }

    /// The live actor for `target`, if any.
    pub fn lookup(&self, target: &OrderTarget) -> Option<Addr<A>> {
        self.entry(target, |l| l.addr.clone()).filter(Addr::connected)
    }

    /// What the live orders say about `target`, in one lookup.
    pub fn live_state(&self, target: &OrderTarget) -> LiveState {
        match self.entry(target, |l| (l.addr.connected(), l.published.get())) {
            Some((true, Some(order))) => LiveState::Published(order),
            Some((true, None)) => LiveState::Unpublished,
            _ => LiveState::NotLive,
        }
    }

    /// Registers a live actor under its id and, when known, its merchant key.
    pub fn register(&self, id: &PayOrderNo, key: Option<String>, addr: &Addr<A>, published: Arc<Published>) {
        let live = Live { addr: addr.clone(), published };
        if let Some(k) = key {
            self.by_key.insert(k, live.clone());
        }
        self.by_id.insert(id.clone(), live);
    }

    /// Removes the entries that point at `addr` (and only those: a newer activation
    /// under the same keys stays).
    pub fn remove(&self, id: &PayOrderNo, key: Option<&str>, addr: &Addr<A>) {
        self.by_id.remove_if(id, |_, l| &l.addr == addr);
        if let Some(k) = key {
            self.by_key.remove_if(k, |_, l| &l.addr == addr);
        }
    }

    /// How many orders are live.
    pub fn live_orders(&self) -> usize {
        self.by_id.len()
    }
}
