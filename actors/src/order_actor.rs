//! The actor that owns one payment order. Every message runs to completion before the
//! next (`AtomicResponse`): journal writes and channel calls of one order never
//! interleave. State changes are decided by [`Order::handle`], journaled, and only then
//! applied and answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message, WrapFuture};

use crate::channel::{ChannelDirectory, ChannelHandle};
use crate::clock::Clock;
use crate::daily_volume::{business_day, counted};
use crate::error::{CoreError, CoreResult, ErrorCode};
use crate::ids::PayOrderNo;
use crate::money::Money;
use crate::notification::Notification;
use crate::notifier::NotifierDirectory;
use crate::order::{ChannelNotice, Order, OrderCommand, OrderEvent, OrderSpec, QueryPolicy, TimerAction};
use crate::ports::{
    ChannelError, ChannelOrder, ChannelRefund, CreateAccepted, Journal, OrderStore, Record, StorageError, Ticket,
    TradeRef,
};
use crate::refund::RefundState;
use crate::refund::{RefundEvent, RefundSpec, RefundStatus};
use crate::registry::Registry;
use crate::risk::{Assessment, RiskInput};
use crate::shared_order::{Published, SharedOrder};
use crate::strategy::Route;

/// When idle order actors leave memory.
#[derive(Debug, Clone, Copy)]
pub struct Passivation {
    /// An open order idle this long is passivated.
    pub idle: Duration,
    /// A final (or never created) order idle this long is passivated.
    pub final_idle: Duration,
}

impl Default for Passivation {
    fn default() -> Self {
        Passivation { idle: Duration::from_secs(5), final_idle: Duration::from_secs(2) }
    }
}

/// What every order actor of a node shares.
pub struct OrderContext {
    /// Where decisions are made durable.
    pub journal: Arc<dyn Journal>,
    /// Snapshots and indexes.
    pub store: Arc<dyn OrderStore>,
    /// The channels orders call, with their statistics and daily volumes.
    pub channels: ChannelDirectory,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Live actors.
    pub registry: Arc<Registry<OrderActor>>,
    /// Active query schedule.
    pub query_policy: QueryPolicy,
    /// Memory policy.
    pub passivation: Passivation,
    /// The merchants' delivery actors, handed each notification once it is durable.
    pub notifier: NotifierDirectory,
    /// How long a new payment may spend trying channels before no further one is tried.
    pub failover_budget: Duration,
    /// Risk control, asked about every new payment before any channel.
    pub risk: Arc<crate::risk::RiskEngine>,
}

/// A new payment as the API layer prepared it.
#[derive(Debug, Clone)]
pub struct PaySubmission {
    /// What the merchant asked for.
    pub spec: OrderSpec,
    /// The channels routing chose, in the order to try them, or why there is none.
    /// Used only if the order is new: a repeated request is answered from the order
    /// whatever routing says now.
    pub route: Result<Route, CoreError>,
    /// Effective lifetime in millis (the request's minutes, or the merchant's default).
    pub expire_after_ms: i64,
    /// The buyer's card or payment account token, for risk control's lists; not kept
    /// with the order.
    pub buyer_account: Option<String>,
}

/// What is asked of an order.
#[derive(Debug, Clone)]
pub enum OrderRequest {
    /// Create (or repeat the creation of) a payment.
    Pay(Box<PaySubmission>),
    /// Read the order.
    Query,
    /// Close the order at the channel and here.
    Close,
    /// A verified signal (callback) from a channel: the order's, or one whose trade of
    /// it was abandoned.
    Notice {
        /// The channel whose keys verified it.
        channel: String,
        /// What it says.
        notice: ChannelNotice,
    },
    /// A timer is due: expire or query.
    Tick,
    /// Ask the channel now where an open order's trade stands (e.g. after a callback
    /// that could not be verified), and apply the answer.
    Reconcile,
    /// Refund (or repeat the request for a refund of) part of a paid order.
    Refund(RefundSpec),
    /// A verified channel notification of a refund's outcome.
    RefundNotice {
        /// Which refund.
        refund_order_no: String,
        /// What the channel says.
        outcome: RefundState,
        /// The amount it says was refunded, when it says.
        amount_minor: Option<i64>,
    },
    /// An operator resolves the review risk control sent the payment to: approved, it
    /// stands; rejected, it is closed if unpaid and refunded in full if paid. A repeat
    /// of a rejection finishes what a failed channel call left undone.
    ResolveReview {
        /// Approved, or rejected.
        approved: bool,
    },
}

/// How a message to an order actor ended.
#[derive(Debug)]
pub enum Delivery {
    /// Handled (boxed: an order is large next to `Retry`).
    Done(Box<CoreResult<Order>>),
    /// The actor was passivating; route again.
    Retry,
}

/// A request to an order, on behalf of a merchant (`None`: the node itself).
#[derive(Message)]
#[rtype(result = "Delivery")]
pub struct OrderMsg {
    /// What is asked.
    pub request: OrderRequest,
    /// The merchant asking; another merchant's order is answered ORDER_NOT_FOUND.
    pub caller: Option<String>,
}

/// How soon an idle actor looks again whether the views have caught up with it.
const VIEWS_LAG_RECHECK: Duration = Duration::from_millis(20);

/// The actor owning one order.
pub struct OrderActor {
    oc: Arc<OrderContext>,
    cell: Option<OrderCell>,
    last_active: Instant,
    passivated: bool,
}

struct OrderCell {
    pay_order_no: PayOrderNo,
    /// The registry key it was registered under: known before the order exists.
    key: Option<String>,
    state: Option<Order>,
    /// The journal ticket of its last record: until the views show it, this actor is the
    /// only place that knows the order's state, so it must not passivate.
    last_ticket: Option<Ticket>,
    /// Where readers find `state` without asking this actor.
    published: Arc<Published>,
}

impl OrderActor {
    /// An actor for `pay_order_no`, with its snapshot or `None` for a new order, registered
    /// under the merchant `key` too when it has one; it publishes every new state to
    /// `published`.
    pub fn new(
        oc: Arc<OrderContext>,
        pay_order_no: PayOrderNo,
        key: Option<String>,
        state: Option<Order>,
        published: Arc<Published>,
    ) -> OrderActor {
        let cell = OrderCell { pay_order_no, key, state, last_ticket: None, published };
        OrderActor { oc, cell: Some(cell), last_active: Instant::now(), passivated: false }
    }

    /// How long this order may stay idle in memory.
    fn idle_limit(&self) -> Duration {
        let p = self.oc.passivation;
        match self.cell.as_ref().and_then(|c| c.state.as_ref()) {
            Some(o) if o.status.is_open() => p.idle,
            _ => p.final_idle,
        }
    }

    /// One timer per actor, re-armed for the remaining idle time: no periodic wakeups
    /// for the many orders that sit waiting for a buyer.
    fn schedule_passivation(&self, ctx: &mut Context<Self>, after: Duration) {
        ctx.run_later(after, |act, ctx| {
            if act.passivated {
                return;
            }
            let limit = act.idle_limit();
            let idle = act.last_active.elapsed();
            let unprojected =
                act.cell.as_ref().and_then(|c| c.last_ticket).is_some_and(|t| !act.oc.journal.is_projected(t));
            if idle < limit {
                act.schedule_passivation(ctx, limit - idle);
            } else if unprojected {
                act.schedule_passivation(ctx, VIEWS_LAG_RECHECK);
            } else {
                act.passivate(ctx);
            }
        });
    }

    fn passivate(&mut self, ctx: &mut Context<Self>) {
        self.passivated = true;
        if let Some(cell) = &self.cell {
            // Into the read cache first, then out of the registry: a reader finds one or
            // the other. The views already show this state (passivation waits for them).
            if let Some(state) = cell.published.get() {
                self.oc.registry.read_cache.insert(state);
            }
            self.oc.registry.remove(&cell.pay_order_no, cell.key.as_deref(), &ctx.address());
        }
        ctx.stop();
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        self.schedule_passivation(ctx, self.idle_limit());
    }
}

impl Handler<OrderMsg> for OrderActor {
    type Result = AtomicResponse<Self, Delivery>;

    fn handle(&mut self, msg: OrderMsg, _: &mut Context<Self>) -> Self::Result {
        let cell = match self.cell.take() {
            Some(cell) if !self.passivated => cell,
            other => {
                self.cell = other;
                return AtomicResponse::new(Box::pin(actix::fut::ready(Delivery::Retry)));
            }
        };
        let oc = Arc::clone(&self.oc);
        let fut = async move {
            let mut cell = cell;
            let reply = cell.run(&oc, msg).await;
            (cell, reply)
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|(cell, reply), act, ctx| {
            let never_created = cell.state.is_none();
            act.cell = Some(cell);
            act.last_active = Instant::now();
            if never_created {
                // Nothing was journaled (routing refused, or storage failed): leave no
                // live actor behind under this merchant key.
                act.passivate(ctx);
            }
            Delivery::Done(Box::new(reply))
        })))
    }
}

impl OrderCell {
    fn current(&self) -> CoreResult<Order> {
        self.state.clone().ok_or_else(CoreError::order_not_found)
    }

    async fn run(&mut self, oc: &OrderContext, msg: OrderMsg) -> CoreResult<Order> {
        if let (Some(caller), Some(order)) = (&msg.caller, &self.state) {
            if &order.spec.merchant_id != caller {
                return Err(CoreError::order_not_found());
            }
        }
        let refunds_before = self.state.as_ref().map_or(0, |o| o.refunds.len());
        let answer = self.answer(oc, msg.request).await;
        // A late payment learned of just now (by a callback, a query, a close) is refunded
        // at once; if this node dies first, the refund's queries find it never asked.
        let late: Vec<String> = self.state.as_ref().map_or_else(Vec::new, |o| {
            let new = o.refunds.get(refunds_before..).unwrap_or_default();
            new.iter()
                .filter(|r| r.late_payment.is_some() && r.status == RefundStatus::Refunding)
                .map(|r| r.refund_order_no.clone())
                .collect()
        });
        if late.is_empty() {
            return answer;
        }
        for no in late {
            if let Err(e) = self.settle_refund(oc, &no, true).await {
                tracing::warn!(refund_order_no = %no, error = %e, "late payment refund not asked yet; it will be queried");
            }
        }
        answer.and_then(|_| self.current())
    }

    async fn answer(&mut self, oc: &OrderContext, request: OrderRequest) -> CoreResult<Order> {
        match request {
            OrderRequest::Pay(sub) => self.pay(oc, *sub).await,
            OrderRequest::Query => self.current(),
            OrderRequest::Close => self.close(oc).await,
            OrderRequest::Notice { channel, notice } => {
                self.current()?;
                self.execute(oc, vec![OrderCommand::NoticeFrom { channel, notice }]).await?;
                self.current()
            }
            OrderRequest::Tick => self.tick(oc).await,
            OrderRequest::Reconcile => self.reconcile(oc).await,
            OrderRequest::Refund(spec) => self.refund(oc, spec).await,
            OrderRequest::RefundNotice { refund_order_no, outcome, amount_minor } => {
                self.execute(oc, vec![OrderCommand::RefundOutcome { refund_order_no, outcome, amount_minor }]).await?;
                self.current()
            }
            OrderRequest::ResolveReview { approved } => self.resolve_review(oc, approved).await,
        }
    }

    /// Records an operator's verdict on a reviewed payment and, if rejected, undoes the
    /// payment: closed while unpaid (the channel's close first), else refunded in full
    /// under the refund number `REVIEW-<pay_order_no>`.
    async fn resolve_review(&mut self, oc: &OrderContext, approved: bool) -> CoreResult<Order> {
        self.execute(oc, vec![OrderCommand::ResolveReview { approved }]).await?;
        let order = self.current()?;
        if approved {
            return Ok(order);
        }
        if order.status.is_open() {
            match self.close(oc).await {
                Ok(closed) => return Ok(closed),
                // Paid meanwhile: refunded below.
                Err(e) if e.code == ErrorCode::OrderStatusError => {}
                Err(e) => return Err(e),
            }
        }
        let order = self.current()?;
        let refund_no = format!("REVIEW-{}", order.pay_order_no);
        let remaining = order.spec.amount.minor().saturating_sub(order.refund_held_minor());
        if !order.status.is_paid() || remaining <= 0 || order.refund(&refund_no).is_some() {
            return Ok(order);
        }
        let spec = RefundSpec {
            refund_no,
            amount_minor: remaining,
            reason: Some("payment rejected by risk review".into()),
            notify_url: None,
        };
        self.refund(oc, spec).await
    }

    /// Decides the events of `cmds` in turn, journals them as one record, then applies.
    async fn execute(&mut self, oc: &OrderContext, cmds: Vec<OrderCommand>) -> CoreResult<()> {
        let current = self.current()?;
        self.execute_from(oc, current, Vec::new(), cmds).await
    }

    /// Like [`Self::execute`], starting from `next`, which `prior` events (not yet
    /// journaled) already produced; all of them go into one record.
    async fn execute_from(
        &mut self,
        oc: &OrderContext,
        mut next: Order,
        mut events: Vec<OrderEvent>,
        cmds: Vec<OrderCommand>,
    ) -> CoreResult<()> {
        let now = oc.clock.now_ms();
        let mut cmds = std::collections::VecDeque::from(cmds);
        while let Some(cmd) = cmds.pop_front() {
            for event in next.handle(cmd, now)? {
                next.apply(&event).map_err(|e| CoreError::system(e.to_string()))?;
                // A late payment's refund is decided in the same record that learns of it.
                if let (Some(payment), true) = (late_payment(&event), oc.query_policy.refunds.late_payments) {
                    let channel_trade_no = payment.channel_trade_no.clone();
                    cmds.push_back(OrderCommand::RefundLatePayment { channel_trade_no });
                }
                events.push(event);
            }
        }
        // The outbox rides the change's own record: no second write, no window.
        let before = self.state.as_ref().map(|o| o.status);
        let due = next.notifications_due(before, &events, now);
        events.extend(due.into_iter().filter(|e| oc.notifier.owes(&next, e)));
        self.commit(oc, events, next).await
    }

    async fn commit(&mut self, oc: &OrderContext, events: Vec<OrderEvent>, mut next: Order) -> CoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let seq = self.state.as_ref().map_or(0, |o| o.seq) + 1;
        next.seq = seq;
        let events_due: Vec<OrderEvent> =
            events.iter().filter(|e| matches!(e, OrderEvent::NotifyDue { .. })).cloned().collect();
        let refunds_settled: Vec<(String, &'static str)> = events
            .iter()
            .filter_map(|e| match e {
                OrderEvent::Refund { refund_order_no, event } => match event {
                    RefundEvent::Succeeded { .. } => Some((refund_order_no.clone(), "success")),
                    RefundEvent::Failed { .. } => Some((refund_order_no.clone(), "failed")),
                    RefundEvent::SentToReview { .. } => Some((refund_order_no.clone(), "manual_review")),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let late_payments: Vec<String> =
            events.iter().filter_map(late_payment).map(|p| p.channel_trade_no.clone()).collect();
        let record = Record::Order { pay_order_no: self.pay_order_no.clone(), seq, events };
        let ticket = oc.journal.append(record).await.map_err(|e| match e {
            StorageError::Full(_) => e.into_core(),
            StorageError::Failed(_) => {
                tracing::error!(error = %e, "journal append failed");
                CoreError::system("could not record the order durably")
            }
        })?;
        // What the order counts against its channel's day changes with its status (a new
        // order's share was taken before it was opened).
        let delta = counted(&next) - self.state.as_ref().map_or(next.spec.amount.minor(), counted);
        if let (true, Some(h)) = (delta != 0, oc.channels.get(&next.channel)) {
            h.stats.daily.adjust(business_day(next.create_time), delta);
        }
        self.published.set(SharedOrder::share(next.clone()));
        for channel_trade_no in late_payments {
            metrics::counter!("paygate_alerts_total", "kind" => "late_payment").increment(1);
            tracing::warn!(
                pay_order_no = %self.pay_order_no,
                %channel_trade_no,
                channel = next.late_payment_channel(&channel_trade_no),
                status = %next.status,
                "a payment arrived after the order was final, or on a trade given up on"
            );
        }
        for (refund_order_no, outcome) in refunds_settled {
            metrics::counter!("paygate_refunds_total", "outcome" => outcome).increment(1);
            if outcome == "manual_review" {
                metrics::counter!("paygate_alerts_total", "kind" => "refund_manual_review").increment(1);
                tracing::warn!(%refund_order_no, "refund outcome unknown after every query: manual review needed");
            }
        }
        for event in &events_due {
            if let OrderEvent::NotifyDue { notify_type, refund_order_no, at } = event {
                oc.notifier.enqueue(Notification::for_order(&next, *notify_type, refund_order_no.as_deref(), *at));
            }
        }
        self.state = Some(next);
        self.last_ticket = Some(ticket);
        Ok(())
    }

    fn channel<'a>(&self, channels: &'a ChannelDirectory, order: &Order) -> CoreResult<&'a ChannelHandle> {
        channels.get(&order.channel).ok_or_else(|| gone(&order.channel))
    }

    async fn pay(&mut self, oc: &OrderContext, sub: PaySubmission) -> CoreResult<Order> {
        let order = match &self.state {
            None => return self.open(oc, sub).await,
            Some(order) if order.spec != sub.spec => {
                return Err(CoreError::new(
                    ErrorCode::IdempotencyConflict,
                    format!("order_no {} was used before with other parameters", order.spec.order_no),
                ))
            }
            Some(order) => order.clone(),
        };
        if order.status.is_open() && order.code_url.is_none() {
            return self.submit(oc, order).await;
        }
        if let Some(risk) = order.risk.as_ref().filter(|_| order.refused_by_risk()) {
            return Err(risk_rejected(risk));
        }
        if let (crate::order::OrderStatus::Failed, Some(reason)) = (order.status, &order.failure) {
            return Err(CoreError::new(ErrorCode::ChannelError, format!("payment failed: {reason}")));
        }
        Ok(order)
    }

    /// Creates the order at the first of the routed channels that can take it. A channel
    /// that certainly did not open the trade (unreachable, 503, breaker open) or has no
    /// room left today is passed over for the next. A channel whose answer was lost
    /// (timeout) is asked where the trade stands and to close it; only once it has
    /// closed an unpaid trade is the next channel tried — on another account, since the
    /// closed trade keeps its number there — and the order records it as abandoned. Any
    /// other answer is the order's. No new channel is tried once the failover budget is
    /// spent.
    ///
    /// The trade is opened before the order is journaled, and both are journaled as one
    /// record. Nobody holds the code URL until we answer, so a crash in between leaves at
    /// most an unpaid orphan trade at the channel; the repeated request opens a new one
    /// under a new id.
    async fn open(&mut self, oc: &OrderContext, sub: PaySubmission) -> CoreResult<Order> {
        // A trade we could not journal would be an orphan at the channel.
        oc.journal.writable().map_err(StorageError::into_core)?;
        let started = Instant::now();
        let now = oc.clock.now_ms();
        let assessment = assess(oc, &sub.spec, sub.buyer_account.as_deref(), now);
        if oc.risk.refuses(assessment.decision) {
            return self.refuse(oc, sub, assessment, now).await;
        }
        let Route { strategy, candidates, .. } = sub.route?;
        let day = business_day(now);
        let amount = sub.spec.amount.minor();
        let mut passed_over = Vec::new();
        // Trades given up on, and the accounts they were opened under.
        let mut abandoned: Vec<(String, AccountKey)> = Vec::new();
        // Whether any channel was asked: if none was, there was no channel to take it.
        let mut asked = false;
        for (i, channel) in candidates.iter().enumerate() {
            let Some(handle) = oc.channels.get(channel) else { continue };
            if abandoned.iter().any(|(_, account)| *account == account_of(handle)) {
                passed_over.push(format!("{channel}: same account as a trade given up on"));
                continue;
            }
            if asked && started.elapsed() >= oc.failover_budget {
                passed_over.push(format!("{channel}: not tried, the failover budget was spent"));
                continue;
            }
            // Routing saw room under the channel's daily limit; taking it is what holds
            // it, against payments routed at the same moment.
            if !handle.stats.daily.try_take(day, amount, handle.profile.daily_limit_minor) {
                passed_over.push(format!("{channel}: daily limit reached"));
                continue;
            }
            let created = OrderEvent::created(
                self.pay_order_no.clone(),
                sub.spec.clone(),
                channel.clone(),
                now,
                sub.expire_after_ms,
            );
            let order = Order::from_created(&created).ok_or_else(|| CoreError::system("bad Created event"))?;
            asked = true;
            let route = |passed_over: &[String]| Route {
                strategy,
                candidates: candidates.clone(),
                passed_over: passed_over.to_vec(),
            };
            let opened = match open_trade(handle, &order).await {
                Err(ChannelError::Unavailable(why)) => {
                    tracing::warn!(pay_order_no = %order.pay_order_no, %channel, %why, "channel unavailable; trying the next");
                    Err(why)
                }
                Err(ChannelError::Unknown(why))
                    if started.elapsed() + handle.profile.timeout * 2 <= oc.failover_budget
                        && another_account(oc, candidates.get(i + 1..).unwrap_or_default(), handle) =>
                {
                    match give_up_trade(handle, &order).await {
                        Ok(()) => {
                            tracing::warn!(pay_order_no = %order.pay_order_no, %channel, %why, "outcome unknown; the trade was closed, trying the next channel");
                            abandoned.push((channel.clone(), account_of(handle)));
                            Err(format!("{why}; its trade was closed"))
                        }
                        Err(found) => {
                            let mut cmds = vec![OrderCommand::MarkSubmitted];
                            cmds.extend(found.map(OrderCommand::Notice));
                            match creation(order, created, &assessment, route(&passed_over), &abandoned, now) {
                                Ok((order, events)) => Ok(self.settle_unknown(oc, order, events, cmds, &why).await),
                                Err(e) => Ok(Err(e)),
                            }
                        }
                    }
                }
                other => match creation(order, created, &assessment, route(&passed_over), &abandoned, now) {
                    Ok((order, events)) => Ok(self.settle_opening(oc, order, events, other).await),
                    Err(e) => Ok(Err(e)),
                },
            };
            if self.state.is_none() {
                // Nothing was journaled: the order does not exist, nor does its share.
                handle.stats.daily.adjust(day, -amount);
            }
            match opened {
                Ok(result) => return result,
                Err(why) => passed_over.push(format!("{channel}: {why}")),
            }
        }
        let code = if asked { ErrorCode::ChannelError } else { ErrorCode::NoAvailableChannel };
        Err(CoreError::new(code, format!("no channel could take the payment now: {}", passed_over.join("; "))))
    }

    /// Records a payment risk control refused, as a FAILED order that no channel saw (a
    /// repeat of the request is refused the same way), and refuses it.
    async fn refuse(
        &mut self,
        oc: &OrderContext,
        sub: PaySubmission,
        assessment: Assessment,
        now: i64,
    ) -> CoreResult<Order> {
        let refusal = risk_rejected(&assessment);
        let created = OrderEvent::created(self.pay_order_no.clone(), sub.spec, String::new(), now, sub.expire_after_ms);
        let mut order = Order::from_created(&created).ok_or_else(|| CoreError::system("bad Created event"))?;
        let events =
            vec![created, OrderEvent::RiskAssessed { assessment, at: now }, OrderEvent::RiskRejected { at: now }];
        for event in events.iter().skip(1) {
            order.apply(event).map_err(|e| CoreError::system(e.to_string()))?;
        }
        self.execute_from(oc, order, events, Vec::new()).await?;
        Err(refusal)
    }

    /// Opens the trade of an order already created whose outcome at its channel was
    /// unknown (a repeated request): the same channel, where the trade may exist.
    async fn submit(&mut self, oc: &OrderContext, order: Order) -> CoreResult<Order> {
        let channel = self.channel(&oc.channels, &order)?;
        oc.journal.writable().map_err(StorageError::into_core)?;
        let opened = open_trade(channel, &order).await;
        self.settle_opening(oc, order, Vec::new(), opened).await
    }

    /// Journals `prior` with `cmds` after a create call of unknown outcome whose trade
    /// could not be given up on (`cmds` may carry where the channel said it stands):
    /// the order stays with that channel, PAYING unless the channel said otherwise.
    async fn settle_unknown(
        &mut self,
        oc: &OrderContext,
        order: Order,
        prior: Vec<OrderEvent>,
        cmds: Vec<OrderCommand>,
        why: &str,
    ) -> CoreResult<Order> {
        self.execute_from(oc, order, prior, cmds).await?;
        let order = self.current()?;
        if !order.status.is_open() {
            return Ok(order);
        }
        Err(CoreError::new(ErrorCode::ChannelError, unanswered(&order, why)))
    }

    /// Journals `prior` (the creation, for a new order) with what the channel said to
    /// opening the trade, as one record. Only a definite refusal fails the order; any
    /// other failure leaves it PAYING, settled by query or a repeat.
    async fn settle_opening(
        &mut self,
        oc: &OrderContext,
        order: Order,
        prior: Vec<OrderEvent>,
        opened: Result<CreateAccepted, ChannelError>,
    ) -> CoreResult<Order> {
        let (cmd, refusal) = match opened {
            Ok(accepted) => (
                OrderCommand::Accept { code_url: accepted.code_url, channel_trade_no: accepted.channel_trade_no },
                None,
            ),
            Err(ChannelError::Rejected { code, message }) => {
                let reason = format!("{code}: {message}");
                let refusal = format!("channel refused the payment: {reason}");
                (OrderCommand::Reject { reason }, Some(refusal))
            }
            Err(ChannelError::Unknown(why) | ChannelError::Unavailable(why)) => {
                tracing::warn!(pay_order_no = %order.pay_order_no, %why, "channel create outcome unknown");
                (OrderCommand::MarkSubmitted, Some(unanswered(&order, &why)))
            }
        };
        self.execute_from(oc, order, prior, vec![cmd]).await?;
        match refusal {
            Some(message) => Err(CoreError::new(ErrorCode::ChannelError, message)),
            None => self.current(),
        }
    }

    async fn close(&mut self, oc: &OrderContext) -> CoreResult<Order> {
        let order = self.current()?;
        if order.status == crate::order::OrderStatus::Closed {
            return Ok(order);
        }
        // Let the state machine refuse what cannot be closed before asking the channel.
        order.handle(OrderCommand::Close, oc.clock.now_ms())?;
        let channel = self.channel(&oc.channels, &order)?;
        match channel.close(TradeRef::of(&order)).await {
            Ok(ChannelNotice::Closed | ChannelNotice::NotPaid) => {
                self.execute(oc, vec![OrderCommand::Close]).await?;
                self.current()
            }
            Ok(notice) => {
                // Paid (or failed) meanwhile: record what the channel says, refuse the close.
                self.execute(oc, vec![OrderCommand::Notice(notice)]).await?;
                let now = self.current()?;
                Err(CoreError::new(
                    ErrorCode::OrderStatusError,
                    format!("order is {} and cannot be closed", now.status),
                ))
            }
            Err(e) => Err(CoreError::new(ErrorCode::ChannelError, format!("could not close at the channel: {e}"))),
        }
    }

    async fn reconcile(&mut self, oc: &OrderContext) -> CoreResult<Order> {
        let order = self.current()?;
        if !order.status.is_open() {
            return Ok(order);
        }
        let channel = self.channel(&oc.channels, &order)?;
        let notice = channel.query(TradeRef::of(&order)).await.map_err(channel_failure)?;
        self.execute(oc, vec![OrderCommand::Notice(notice)]).await?;
        self.current()
    }

    async fn tick(&mut self, oc: &OrderContext) -> CoreResult<Order> {
        let order = self.current()?;
        let Some(action) = order.due_action(oc.clock.now_ms(), &oc.query_policy) else {
            return Ok(order);
        };
        let channel = self.channel(&oc.channels, &order)?;
        let trade = TradeRef::of(&order);
        match action {
            TimerAction::Query => {
                let mut cmds = Vec::with_capacity(2);
                match channel.query(trade).await {
                    Ok(notice) => cmds.push(OrderCommand::Notice(notice)),
                    Err(e) => {
                        tracing::info!(pay_order_no = %order.pay_order_no, error = %e, "active query failed")
                    }
                }
                cmds.push(OrderCommand::RecordQueryAttempt);
                self.execute(oc, cmds).await?;
            }
            TimerAction::RefundQuery(refund_order_no) => {
                return self.settle_refund(oc, &refund_order_no, false).await;
            }
            TimerAction::Expire => {
                // Query first; if unpaid, close at the channel, then here.
                let queried = channel.query(trade.clone()).await.map_err(channel_failure)?;
                let outcome = match queried {
                    ChannelNotice::Closed | ChannelNotice::NotPaid => {
                        channel.close(trade).await.map_err(channel_failure)?
                    }
                    settled => settled,
                };
                let cmd = match outcome {
                    ChannelNotice::Closed | ChannelNotice::NotPaid => OrderCommand::Expire,
                    settled => OrderCommand::Notice(settled),
                };
                self.execute(oc, vec![cmd]).await?;
            }
        }
        self.current()
    }
}

impl OrderCell {
    /// Records the refund `spec` asks for (held against the amount paid before the
    /// channel hears of it), then asks the channel. A repeated request answers the
    /// refund as it stands and asks nothing again.
    async fn refund(&mut self, oc: &OrderContext, spec: RefundSpec) -> CoreResult<Order> {
        let repeat = self.current()?.refund(&spec.refund_no).is_some();
        let window_ms = oc.query_policy.refunds.window_ms;
        let refund_no = spec.refund_no.clone();
        self.execute(oc, vec![OrderCommand::RequestRefund { spec, window_ms }]).await?;
        let order = self.current()?;
        let refund = order.refund(&refund_no).ok_or_else(|| CoreError::system("refund not recorded"))?;
        if repeat || refund.status != RefundStatus::Refunding {
            return Ok(order);
        }
        let refund_order_no = refund.refund_order_no.clone();
        self.settle_refund(oc, &refund_order_no, true).await
    }

    /// Asks the channel to refund (`ask`) or where the refund stands, and records the
    /// answer. An unknown outcome changes nothing but the query count: the refund is
    /// queried again on its schedule under the same number, never asked for under
    /// another. A query the channel answers "no such refund" (the ask never reached it:
    /// the node died between recording the refund and asking) asks again under the same
    /// number, which the channel takes at most once.
    async fn settle_refund(&mut self, oc: &OrderContext, refund_order_no: &str, ask: bool) -> CoreResult<Order> {
        let mut ask = ask;
        loop {
            let order = self.current()?;
            let Some(refund) = order.refunds.iter().find(|r| r.refund_order_no == refund_order_no) else {
                return Ok(order);
            };
            if !refund.status.is_open() {
                return Ok(order);
            }
            let mut trade = TradeRef::of(&order);
            let mut channel_code = order.channel.as_str();
            if let Some(late) = &refund.late_payment {
                trade.channel_trade_no = Some(late.clone());
                channel_code = order.late_payment_channel(late);
            }
            let channel = oc.channels.get(channel_code).ok_or_else(|| gone(channel_code))?;
            let request = ChannelRefund {
                trade,
                refund_no: refund.refund_order_no.clone(),
                amount: Money::from_minor(refund.spec.amount_minor, order.spec.amount.currency()),
                requested_at: refund.create_time,
            };
            let answer = if ask { channel.refund(request).await } else { channel.query_refund(request).await };
            let mut cmds = Vec::with_capacity(2);
            let no = refund_order_no.to_owned();
            let unknown_at_channel = !ask && answer == Ok(RefundState::NotFound);
            match answer {
                Ok(outcome) => {
                    cmds.push(OrderCommand::RefundOutcome { refund_order_no: no.clone(), outcome, amount_minor: None })
                }
                Err(ChannelError::Rejected { code, message }) if ask => cmds.push(OrderCommand::RefundOutcome {
                    refund_order_no: no.clone(),
                    outcome: RefundState::Failed(format!("{code}: {message}")),
                    amount_minor: None,
                }),
                Err(e) => {
                    tracing::info!(refund_order_no = %no, error = %e, "refund outcome unknown; it will be queried")
                }
            }
            if !ask {
                let max_queries = oc.query_policy.refunds.max_queries;
                cmds.push(OrderCommand::RecordRefundQuery { refund_order_no: no, max_queries });
            }
            self.execute(oc, cmds).await?;
            if !unknown_at_channel {
                return self.current();
            }
            tracing::info!(%refund_order_no, "the channel has no such refund; asking again under the same number");
            ask = true;
        }
    }
}

/// What the merchant is told when the channel did not answer the trade's opening.
fn unanswered(order: &Order, why: &str) -> String {
    format!(
        "the channel did not answer ({why}); order {} is PAYING and will be settled by query; \
         repeat the same request for its payment URL",
        order.pay_order_no
    )
}

/// Which provider account a channel opens trades under: two channels of one account
/// share its trade numbers (a closed trade's number cannot be opened again there).
type AccountKey = String;

fn account_of(channel: &ChannelHandle) -> AccountKey {
    match channel.connector.account() {
        "" => format!("{}:?", channel.profile.provider),
        account => account.to_owned(),
    }
}

/// The first events of the record that creates `order` (made by `created`), and the
/// order they make: its route and the trades given up on before its channel.
fn creation(
    mut order: Order,
    created: OrderEvent,
    assessment: &Assessment,
    route: Route,
    abandoned: &[(String, AccountKey)],
    now: i64,
) -> CoreResult<(Order, Vec<OrderEvent>)> {
    let mut events = Vec::with_capacity(3 + abandoned.len());
    events.push(OrderEvent::RiskAssessed { assessment: assessment.clone(), at: now });
    events.push(OrderEvent::Routed { route, at: now });
    events.extend(abandoned.iter().map(|(c, _)| OrderEvent::TradeAbandoned { channel: c.clone(), at: now }));
    for event in &events {
        order.apply(event).map_err(|e| CoreError::system(e.to_string()))?;
    }
    events.insert(0, created);
    Ok((order, events))
}

/// What risk control decides of the payment `spec` asks for.
fn assess(oc: &OrderContext, spec: &OrderSpec, account: Option<&str>, now: i64) -> Assessment {
    oc.risk.assess(&RiskInput {
        merchant_id: &spec.merchant_id,
        amount: spec.amount,
        user_id: spec.user_id.as_deref(),
        device_id: spec.device_id.as_deref(),
        client_ip: spec.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
        account,
        now_ms: now,
    })
}

/// The answer to a payment risk control refused.
fn risk_rejected(assessment: &Assessment) -> CoreError {
    CoreError::new(ErrorCode::RiskRejected, format!("the payment was refused by risk control ({})", assessment.reason))
}

/// Whether one of `later` channels opens trades under another account than `channel`.
fn another_account(oc: &OrderContext, later: &[String], channel: &ChannelHandle) -> bool {
    let account = account_of(channel);
    later.iter().any(|c| oc.channels.get(c).is_some_and(|h| account_of(h) != account))
}

/// Gives up the trade of `order` at `channel` after its opening went unanswered: asks
/// where it stands and closes it. `Ok`: the trade cannot be paid. `Err(Some(_))`: the
/// channel says it was paid — the order's payment. `Err(None)`: not settled (another
/// unknown), so the order must stay with this channel.
async fn give_up_trade(channel: &ChannelHandle, order: &Order) -> Result<(), Option<ChannelNotice>> {
    let trade = TradeRef::of(order);
    let closable = |n: &ChannelNotice| matches!(n, ChannelNotice::NotPaid | ChannelNotice::Closed);
    match channel.query(trade.clone()).await {
        Ok(n) if closable(&n) => {}
        Ok(ChannelNotice::Failed { .. }) => return Ok(()),
        Ok(paid) => return Err(Some(paid)),
        Err(_) => return Err(None),
    }
    match channel.close(trade).await {
        Ok(n) if closable(&n) => Ok(()),
        Ok(ChannelNotice::Failed { .. }) => Ok(()),
        Ok(paid) => Err(Some(paid)),
        Err(_) => Err(None),
    }
}

fn gone(channel: &str) -> CoreError {
    CoreError::new(ErrorCode::ChannelError, format!("channel {channel} is no longer configured"))
}

/// The payment a late-payment event records.
fn late_payment(event: &OrderEvent) -> Option<&crate::order::LatePayment> {
    match event {
        OrderEvent::LatePaymentRecorded { payment } | OrderEvent::AbandonedTradePaid { payment, .. } => Some(payment),
        _ => None,
    }
}

fn channel_failure(e: ChannelError) -> CoreError {
    CoreError::new(ErrorCode::ChannelError, e.to_string())
}

/// Asks `channel` to open the trade of `order`.
async fn open_trade(channel: &ChannelHandle, order: &Order) -> Result<CreateAccepted, ChannelError> {
    let request = ChannelOrder {
        pay_order_no: order.pay_order_no.clone(),
        amount: order.spec.amount,
        subject: order.spec.subject.clone(),
        create_time: order.create_time,
        expire_time: order.expire_time,
        client_ip: order.spec.client_ip.clone(),
        scene: order.spec.pay_scene,
        return_url: order.spec.return_url.clone(),
    };
    channel.create(request).await
}
