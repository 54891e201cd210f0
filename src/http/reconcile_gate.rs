//! How often a callback we could not verify may make the node ask a channel about the
//! order it names. Asking is right (a genuine notification whose signature we could not
//! check must not leave a paid order waiting), but anyone can post such callbacks, so a
//! flood must not become a flood of channel queries: an order is asked about at most
//! once per window, and only so many at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use paygate_actors::ids::PayOrderNo;

/// Admits reconciles triggered by unverifiable callbacks.
#[derive(Debug)]
pub struct ReconcileGate {
    window: Duration,
    max_in_flight: usize,
    /// Orders asked about, and when; entries older than the window are dropped as new
    /// ones arrive, so it holds at most what one window admits.
    recent: DashMap<PayOrderNo, Instant>,
    in_flight: Arc<AtomicUsize>,
}

/// One admitted reconcile; the slot frees when it is dropped.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ReconcileGate {
    /// At most once per `window` an order, `max_in_flight` at a time.
    pub fn new(window: Duration, max_in_flight: usize) -> ReconcileGate {
        ReconcileGate { window, max_in_flight, recent: DashMap::new(), in_flight: Arc::default() }
    }

    /// Whether `id` may be asked about at `now`; `None`: asked too recently, or too many
    /// are being asked about already.
    pub fn admit(&self, id: &PayOrderNo, now: Instant) -> Option<Admitted> {
        if self.recent.get(id).is_some_and(|at| now.saturating_duration_since(*at) < self.window) {
            return None;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if self.recent.len() >= self.max_in_flight.saturating_mul(64) {
            self.recent.retain(|_, at| now.saturating_duration_since(*at) < self.window);
        }
        self.recent.insert(id.clone(), now);
        Some(Admitted(Arc::clone(&self.in_flight)))
    }
}

impl Default for ReconcileGate {
    /// Once per 30 s an order, 32 at a time.
    fn default() -> Self {
        ReconcileGate::new(Duration::from_secs(30), 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> PayOrderNo {
        PayOrderNo::parse(&format!("P{n:021}")).unwrap()
    }

    #[test]
    fn an_order_is_asked_about_once_per_window() {
        let gate = ReconcileGate::new(Duration::from_secs(30), 4);
        let t0 = Instant::now();
        assert!(gate.admit(&id(1), t0).is_some());
        assert!(gate.admit(&id(1), t0 + Duration::from_secs(29)).is_none());
        assert!(gate.admit(&id(2), t0 + Duration::from_secs(29)).is_some(), "another order");
        assert!(gate.admit(&id(1), t0 + Duration::from_secs(30)).is_some(), "the next window");
    }

    #[test]
    fn only_so_many_at_once_and_slots_free_when_done() {
        let gate = ReconcileGate::new(Duration::from_secs(30), 2);
        let t0 = Instant::now();
        let (a, b) = (gate.admit(&id(1), t0), gate.admit(&id(2), t0));
        assert!(a.is_some() && b.is_some());
        assert!(gate.admit(&id(3), t0).is_none(), "two in flight already");
        drop(a);
        assert!(gate.admit(&id(3), t0).is_some());
    }

    #[test]
    fn the_memory_of_asked_orders_stays_bounded() {
        let gate = ReconcileGate::new(Duration::from_secs(1), 1);
        let t0 = Instant::now();
        for n in 0..1_000 {
            let at = t0 + Duration::from_secs(2 * n);
            drop(gate.admit(&id(n), at));
        }
        assert!(gate.recent.len() <= 65, "{}", gate.recent.len());
    }
}
