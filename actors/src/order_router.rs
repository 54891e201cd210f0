//! The front door to orders: the registry for live actors, the shard supervisors for
//! everything else, and direct snapshot reads for queries of idle orders.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::Addr;

use crate::error::{CoreError, CoreResult};
use crate::ids::{shard_of, ShardId};
use crate::order::Order;
use crate::order_actor::{Delivery, OrderContext, OrderMsg, OrderRequest};
use crate::ports::StorageError;
use crate::registry::{LiveState, OrderTarget};
use crate::shard::{Dispatch, ShardSupervisor};
use crate::shared_order::SharedOrder;

/// How often a request is routed again after meeting a passivating actor.
const MAX_ROUTES: usize = 4;

/// Most requests on their way through one shard at once. Actix's `send` waits when a
/// mailbox is full, so without this bound an overloaded shard would queue requests
/// without limit behind the HTTP layer; past it a request is refused at once.
pub const SHARD_QUEUE: usize = 4096;

/// Routes requests to orders.
#[derive(Clone)]
pub struct OrderRouter {
    oc: Arc<OrderContext>,
    shards: Arc<Vec<Addr<ShardSupervisor>>>,
    queued: Arc<Vec<AtomicUsize>>,
}

/// One request's place in its shard's queue, given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OrderRouter {
    /// A router over started shard supervisors (index = shard number).
    pub fn new(oc: Arc<OrderContext>, shards: Vec<Addr<ShardSupervisor>>) -> OrderRouter {
        let queued = Arc::new(shards.iter().map(|_| AtomicUsize::new(0)).collect());
        OrderRouter { oc, shards: Arc::new(shards), queued }
    }

    fn enqueue(&self, shard: usize) -> CoreResult<Queued<'_>> {
        let counter = self.queued.get(shard).ok_or_else(CoreError::order_not_found)?;
        if counter.fetch_add(1, Ordering::AcqRel) >= SHARD_QUEUE {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(CoreError::shard_busy());
        }
        Ok(Queued(counter))
    }

    /// The number of shards.
    pub fn shard_count(&self) -> u16 {
        self.shards.len() as u16
    }

    fn shard(&self, target: &OrderTarget) -> Option<(usize, &Addr<ShardSupervisor>)> {
        let ShardId(n) = match target {
            OrderTarget::Id(id) => id.shard(),
            OrderTarget::Key { merchant_id, order_no } => shard_of(merchant_id, order_no, self.shard_count()),
        };
        self.shards.get(usize::from(n)).map(|s| (usize::from(n), s))
    }

    /// Sends `request` to the order, activating it if needed. `caller` is the merchant
    /// on whose behalf it is made (`None` for the node's own timers and callbacks).
    pub async fn dispatch(
        &self,
        target: OrderTarget,
        request: OrderRequest,
        caller: Option<String>,
    ) -> CoreResult<Order> {
        let (n, shard) = self.shard(&target).ok_or_else(CoreError::order_not_found)?;
        let _queued = self.enqueue(n)?;
        for _ in 0..MAX_ROUTES {
            let msg = OrderMsg { request: request.clone(), caller: caller.clone() };
            let delivery = match self.oc.registry.lookup(&target) {
                Some(addr) => addr.send(msg).await.unwrap_or(Delivery::Retry),
                None => {
                    shard.send(Dispatch { target: target.clone(), msg }).await.map_err(|_| CoreError::overloaded())?
                }
            };
            if let Delivery::Done(result) = delivery {
                return *result;
            }
        }
        Err(CoreError::overloaded())
    }

    /// Reads an order: the state its live actor last published, or the read cache's, or
    /// straight from its snapshot, without activating it (queries must not fill memory
    /// with idle orders; a snapshot read is kept in the bounded read cache for the polls
    /// that follow).
    /// Only an order whose first record is still being written is asked through its actor.
    pub async fn read(&self, target: OrderTarget, caller: Option<&str>) -> CoreResult<Arc<SharedOrder>> {
        // Before the registry is asked: see `ReadCache::keep_read`.
        let mark = self.oc.registry.read_cache.mark();
        let order = match self.oc.registry.live_state(&target) {
            LiveState::Published(order) => order,
            LiveState::Unpublished => {
                let caller = caller.map(str::to_owned);
                return self.dispatch(target, OrderRequest::Query, caller).await.map(SharedOrder::share);
            }
            LiveState::NotLive => match self.oc.registry.cached(&target) {
                Some(order) => order,
                None => self.read_stored(target, mark)?,
            },
        };
        match caller {
            Some(m) if m != order.spec.merchant_id => Err(CoreError::order_not_found()),
            _ => Ok(order),
        }
    }

    /// An order neither live nor in the read cache, read from the views and kept for
    /// the reads that follow (see `ReadCache::keep_read` for `mark`).
    fn read_stored(&self, target: OrderTarget, mark: crate::read_cache::Mark) -> CoreResult<Arc<SharedOrder>> {
        self.oc.registry.read_cache.missed();
        let id = match target {
            OrderTarget::Id(id) => id,
            OrderTarget::Key { merchant_id, order_no } => self
                .oc
                .store
                .find(&merchant_id, &order_no)
                .map_err(StorageError::into_core)?
                .ok_or_else(CoreError::order_not_found)?,
        };
        let order = self.oc.store.load(&id).map_err(StorageError::into_core)?;
        let order = SharedOrder::share(order.ok_or_else(CoreError::order_not_found)?);
        self.oc.registry.read_cache.keep_read(Arc::clone(&order), mark);
        Ok(order)
    }

    /// The shared order context.
    pub fn context(&self) -> &Arc<OrderContext> {
        &self.oc
    }
}
