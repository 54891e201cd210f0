//! The timer actor: fires persisted order timers (expiry, active queries). Timers live
//! in the store, derived from the journal, so a restart forgets none of them.

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, WrapFuture};

use crate::ids::PayOrderNo;
use crate::order_actor::OrderRequest;
use crate::order_router::OrderRouter;
use crate::registry::OrderTarget;

/// Polls due timers and ticks their orders.
pub struct TimerActor {
    router: OrderRouter,
    every: Duration,
    retry_after_ms: i64,
    batch: usize,
    /// Orders ticked recently whose timer has not moved yet → when to try again.
    backoff: HashMap<PayOrderNo, i64>,
}

impl TimerActor {
    /// Polls every `every`; an order whose tick did not settle it is ticked again
    /// after `retry_after`.
    pub fn new(router: OrderRouter, every: Duration, retry_after: Duration) -> TimerActor {
        TimerActor {
            router,
            every,
            retry_after_ms: retry_after.as_millis() as i64,
            batch: 256,
            backoff: HashMap::new(),
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        let oc = self.router.context().clone();
        let now = oc.clock.now_ms();
        self.backoff.retain(|_, until| *until > now);
        let due = match oc.store.due_timers(now, self.batch + self.backoff.len()) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading due timers failed");
                return;
            }
        };
        let fresh: Vec<PayOrderNo> =
            due.into_iter().filter(|id| !self.backoff.contains_key(id)).take(self.batch).collect();
        for id in fresh {
            self.backoff.insert(id.clone(), now + self.retry_after_ms);
            let router = self.router.clone();
            ctx.spawn(
                async move {
                    if let Err(e) = router.dispatch(OrderTarget::Id(id.clone()), OrderRequest::Tick, None).await {
                        tracing::info!(pay_order_no = %id, error = %e, "timer tick did not settle the order");
                    }
                }
                .into_actor(self),
            );
        }
    }
}

impl Actor for TimerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.every, |act, ctx| act.poll(ctx));
    }
}
