//! An order state as readers share it: published by its live actor, then kept by the
//! read cache. A state never changes once shared (a change is a new state), so the
//! answer an adapter renders from it never goes stale, and it is kept with the state:
//! a merchant polling an order between two changes is answered without rendering the
//! order again, or touching the many small allocations it is made of.

use std::ops::Deref;
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;

use crate::order::Order;

/// A durable order state shared with readers, and its rendered answer once asked for.
#[derive(Debug)]
pub struct SharedOrder {
    order: Order,
    answer: OnceLock<Bytes>,
}

impl SharedOrder {
    /// Shares `order`, not yet rendered.
    pub fn share(order: Order) -> Arc<SharedOrder> {
        Arc::new(SharedOrder { order, answer: OnceLock::new() })
    }

    /// The order state itself.
    pub fn order(&self) -> &Order {
        &self.order
    }

    /// The answer `render` makes of this state, rendered on the first call only. There
    /// is one answer per state: every caller must render the same view (the merchant
    /// API's order answer), as later callers get the first one's bytes.
    pub fn answer(&self, render: impl FnOnce(&Order) -> Bytes) -> Bytes {
        self.answer.get_or_init(|| render(&self.order)).clone()
    }
}

impl Deref for SharedOrder {
    type Target = Order;

    fn deref(&self) -> &Order {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PayOrderNo;
    use crate::money::{Currency, Money};
    use crate::order::{OrderEvent, OrderSpec, PayMethod};

    fn order() -> Order {
        let spec = OrderSpec::new("M1", "A", Money::from_minor(100, Currency::CNY), "s", PayMethod::Sandbox);
        let id = PayOrderNo::parse("P000000000000000000001").unwrap();
        Order::from_created(&OrderEvent::created(id, spec, "sandbox".into(), 1_700_000_000_000, 60_000)).unwrap()
    }

    #[test]
    fn a_state_is_rendered_once_and_a_new_state_afresh() {
        let renders = std::cell::Cell::new(0);
        let render = |o: &Order| {
            renders.set(renders.get() + 1);
            Bytes::from(format!("{}:{}", o.spec.order_no, o.seq))
        };
        let first = SharedOrder::share(order());
        assert_eq!(first.answer(render), "A:0");
        assert_eq!(first.answer(render), "A:0");
        assert_eq!(renders.get(), 1, "the second answer is the first one's bytes");
        let mut changed = order();
        changed.seq = 2;
        let next = SharedOrder::share(changed);
        assert_eq!(next.answer(render), "A:2");
        assert_eq!(renders.get(), 2);
        assert_eq!(next.seq, 2, "reads see the order through the share");
    }
}

/// The last durable state of a live order, which its actor publishes after every
/// journaled change. Reads take it without a hop to the actor, so a query neither waits
/// behind a channel call in progress nor wakes the actor's arbiter; it can never see a
/// state that is not yet durable, because the actor publishes only after the append.
#[derive(Debug, Default)]
pub struct Published(RwLock<Option<Arc<SharedOrder>>>);

impl Published {
    /// Published with `state` (`None` for an order not created yet).
    pub fn new(state: Option<Order>) -> Published {
        Published(RwLock::new(state.map(SharedOrder::share)))
    }

    /// The last published state.
    pub fn get(&self) -> Option<Arc<SharedOrder>> {
        // A poisoned lock only means a writer panicked mid-assignment of an Arc, which
        // leaves either the old or the new value: both are whole, durable states.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes `state`.
    pub fn set(&self, state: Arc<SharedOrder>) {
        match self.0.write() {
            Ok(mut g) => *g = Some(state),
            Err(poisoned) => *poisoned.into_inner() = Some(state),
        }
    }
}
