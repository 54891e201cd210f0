//! An order state as readers share it: published by its live actor, then kept by the
//! read cache. A state never changes once shared (a change is a new state), so the
//! answer an adapter renders from it never goes stale, and it is kept with the state:
//! a merchant polling an order between two changes is answered without rendering the
//! order again, or touching the many small allocations it is made of.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

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

    /// The order.
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
