//! The sharded registry of live order actors, for the hot path: an id or a merchant's
//! order number to the actor's address. Shard supervisors own activation; actors
//! remove themselves when they passivate.

use actix::Addr;
use dashmap::DashMap;

use crate::ids::PayOrderNo;
use crate::order_actor::OrderActor;

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

/// The registry key of a merchant's order number. Ids never contain the separator.
pub fn merchant_key(merchant_id: &str, order_no: &str) -> String {
    let mut k = String::with_capacity(merchant_id.len() + order_no.len() + 1);
    k.push_str(merchant_id);
    k.push('\u{1f}');
    k.push_str(order_no);
    k
}

/// Live order actors by id and by merchant key.
#[derive(Default)]
pub struct Registry {
    by_id: DashMap<PayOrderNo, Addr<OrderActor>>,
    by_key: DashMap<String, Addr<OrderActor>>,
}

impl Registry {
    /// The live actor for `target`, if any.
    pub fn lookup(&self, target: &OrderTarget) -> Option<Addr<OrderActor>> {
        let addr = match target {
            OrderTarget::Id(id) => self.by_id.get(id).map(|a| a.clone()),
            OrderTarget::Key { merchant_id, order_no } => {
                self.by_key.get(&merchant_key(merchant_id, order_no)).map(|a| a.clone())
            }
        };
        addr.filter(Addr::connected)
    }

    /// Registers a live actor under its id and, when known, its merchant key.
    pub fn register(&self, id: &PayOrderNo, key: Option<String>, addr: &Addr<OrderActor>) {
        self.by_id.insert(id.clone(), addr.clone());
        if let Some(k) = key {
            self.by_key.insert(k, addr.clone());
        }
    }

    /// Removes the entries that point at `addr` (and only those: a newer activation
    /// under the same keys stays).
    pub fn remove(&self, id: &PayOrderNo, key: Option<&str>, addr: &Addr<OrderActor>) {
        self.by_id.remove_if(id, |_, a| a == addr);
        if let Some(k) = key {
            self.by_key.remove_if(k, |_, a| a == addr);
        }
    }

    /// How many orders are live.
    pub fn live_orders(&self) -> usize {
        self.by_id.len()
    }
}
