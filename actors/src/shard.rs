//! Shard supervisors: each owns the activation of the order actors of its shard —
//! from a snapshot, or new with a fresh id — so one order never has two live actors.

use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};

use crate::error::{CoreError, CoreResult};
use crate::ids::merchant_key;
use crate::ids::{IdGenerator, ShardId};
use crate::order_actor::{Delivery, OrderActor, OrderContext, OrderMsg, OrderRequest};
use crate::ports::StorageError;
use crate::registry::OrderTarget;
use crate::shared_order::Published;

/// The supervisor of one shard.
pub struct ShardSupervisor {
    oc: Arc<OrderContext>,
    ids: IdGenerator,
}

impl ShardSupervisor {
    /// A supervisor for `shard`; ids start after the journal's high-water mark.
    pub fn new(shard: ShardId, oc: Arc<OrderContext>) -> ShardSupervisor {
        let ids = IdGenerator::new(shard, oc.store.id_high_water());
        ShardSupervisor { oc, ids }
    }

    /// The live actor for `target`, activating (or, for a new payment, creating) it.
    fn activate(&mut self, target: &OrderTarget, creating: bool) -> CoreResult<Addr<OrderActor>> {
        if let Some(addr) = self.oc.registry.lookup(target) {
            return Ok(addr);
        }
        let (id, state) = match target {
            OrderTarget::Id(id) => {
                let order =
                    self.oc.store.load(id).map_err(StorageError::into_core)?.ok_or_else(CoreError::order_not_found)?;
                (id.clone(), Some(order))
            }
            OrderTarget::Key { merchant_id, order_no } => {
                match self.oc.store.find(merchant_id, order_no).map_err(StorageError::into_core)? {
                    Some(id) => {
                        if let Some(addr) = self.oc.registry.lookup(&OrderTarget::Id(id.clone())) {
                            return Ok(addr);
                        }
                        let order = self.oc.store.load(&id).map_err(StorageError::into_core)?;
                        let order =
                            order.ok_or_else(|| CoreError::system("order index points at a missing snapshot"))?;
                        (id, Some(order))
                    }
                    None if creating => (self.ids.next(self.oc.clock.now_ms().max(0) as u64), None),
                    None => return Err(CoreError::order_not_found()),
                }
            }
        };
        let key = match (&state, target) {
            (Some(o), _) => Some(merchant_key(&o.spec.merchant_id, &o.spec.order_no)),
            (None, OrderTarget::Key { merchant_id, order_no }) => Some(merchant_key(merchant_id, order_no)),
            (None, OrderTarget::Id(_)) => None,
        };
        let published = Arc::new(Published::new(state.clone()));
        let addr =
            OrderActor::new(Arc::clone(&self.oc), id.clone(), key.clone(), state, Arc::clone(&published)).start();
        self.oc.registry.register(&id, key, &addr, published);
        Ok(addr)
    }
}

impl Actor for ShardSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// Route a request to an order of this shard, activating it if needed.
#[derive(Message)]
#[rtype(result = "Delivery")]
pub struct Dispatch {
    /// Which order.
    pub target: OrderTarget,
    /// The message.
    pub msg: OrderMsg,
}

impl Handler<Dispatch> for ShardSupervisor {
    type Result = ResponseFuture<Delivery>;

    fn handle(&mut self, d: Dispatch, _: &mut Context<Self>) -> Self::Result {
        let creating = matches!(d.msg.request, OrderRequest::Pay(_));
        match self.activate(&d.target, creating) {
            Ok(addr) => Box::pin(async move { addr.send(d.msg).await.unwrap_or(Delivery::Retry) }),
            Err(e) => Box::pin(async move { Delivery::Done(Box::new(Err(e))) }),
        }
    }
}
