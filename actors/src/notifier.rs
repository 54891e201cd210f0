//! The merchant's delivery actor: one per merchant, owning its notification queue, a
//! bounded number of deliveries in flight to its endpoint and a circuit breaker on it.
//!
//! The pay path never waits for it: an order actor, once its record is durable, hands
//! the notification over with `do_send`. Each attempt's outcome is journaled
//! ([`Record::Notify`]) before the notification's next step is taken, so a restart
//! resumes every pending notification at its due time. Delivery is at least once: an
//! attempt that reached the merchant just before a crash is made again.
//!
//! One merchant's slow or dead endpoint costs only its own actor's slots; while its
//! breaker is open no attempt is made (and no notification's schedule is spent) except
//! the breaker's probe. The queue in memory is bounded: beyond it, notifications stay
//! in the journal's views and are read back as the queue drains.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, ResponseActFuture, SpawnHandle, WrapFuture,
};

use crate::breaker::{Breaker, BreakerPolicy};
use crate::clock::Clock;
use crate::error::{CoreError, CoreResult, ErrorCode};
use crate::ids::PayOrderNo;
use crate::merchant::MerchantProfile;
use crate::notification::{Notification, NotifyCommand, NotifyStatus, RetrySchedule};
use crate::order::{Order, OrderEvent};
use crate::ports::{Journal, NotifyStore, NotifyTransport, Outgoing, Record, StorageError, Ticket};

/// How merchants are notified.
#[derive(Debug, Clone)]
pub struct NotifyPolicy {
    /// When attempts are made.
    pub schedule: RetrySchedule,
    /// The breaker on each merchant's endpoint.
    pub breaker: BreakerPolicy,
    /// Deliveries in flight to one merchant at once.
    pub max_in_flight: usize,
    /// Notifications one merchant's actor holds in memory; more wait in the views.
    pub queue: usize,
}

impl Default for NotifyPolicy {
    fn default() -> Self {
        NotifyPolicy {
            schedule: RetrySchedule::default(),
            breaker: BreakerPolicy::default(),
            max_in_flight: 8,
            queue: 10_000,
        }
    }
}

/// A source of jitter draws in [0, 1). Fixed in tests.
pub type JitterSource = Arc<dyn Fn() -> f64 + Send + Sync>;

/// What every merchant's delivery actor shares.
pub struct NotifierContext {
    /// Where attempts are made durable.
    pub journal: Arc<dyn Journal>,
    /// The views' notifications.
    pub store: Arc<dyn NotifyStore>,
    /// HTTP(S) to merchants.
    pub transport: Arc<dyn NotifyTransport>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Schedule, breaker, bounds.
    pub policy: NotifyPolicy,
    /// Jitter draws.
    pub jitter: JitterSource,
}

/// Hands a new notification to its merchant's actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub Box<Notification>);

/// Which notifications to send again now.
#[derive(Debug, Clone)]
pub enum ResendWhat {
    /// The latest notification of an order.
    Latest(PayOrderNo),
    /// Every DEAD notification of the merchant.
    Dead,
}

/// Sends notifications again now; answers them as they stand after the resend.
#[derive(Message)]
#[rtype(result = "CoreResult<Vec<Notification>>")]
pub struct Resend(pub ResendWhat);

/// How many recently finished notifications an actor remembers, so a late hand-over of
/// one it already delivered (read back from the views first) is not sent twice.
const RECENTLY_DONE: usize = 4096;
/// How soon an actor looks again whether the views show its last record.
const VIEWS_LAG_RECHECK: Duration = Duration::from_millis(20);
/// How soon an append that failed is tried again.
const APPEND_RETRY_MS: i64 = 1_000;

/// The last [`RECENTLY_DONE`] ids inserted, looked up in constant time.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > RECENTLY_DONE {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets `id` (its place in the order is left to age out).
    fn remove(&mut self, id: &str) {
        self.set.remove(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// One merchant's delivery actor.
pub struct MerchantNotifier {
    nc: Arc<NotifierContext>,
    merchant: Arc<MerchantProfile>,
    /// Pending, not in flight, by id.
    jobs: HashMap<String, Notification>,
    /// `(due, notify_id)` of `jobs`.
    queue: BTreeSet<(i64, String)>,
    /// Being delivered or resent now (called, or its outcome being recorded).
    busy: HashSet<String>,
    /// HTTP calls to the endpoint in flight: at most `max_in_flight`.
    calling: usize,
    /// Per order, the sequences of its notifications held here: only the lowest goes.
    heads: HashMap<PayOrderNo, BTreeSet<u64>>,
    recently_done: RecentIds,
    breaker: Breaker,
    /// Notifications were left in the views because the queue was full (or at start).
    overflow: bool,
    /// The ticket of this actor's last record: the views are read only once they show it.
    last_ticket: Ticket,
    wake: Option<(i64, SpawnHandle)>,
    /// A later [`Self::refill`] is scheduled.
    refill_scheduled: bool,
}

impl MerchantNotifier {
    /// An actor for `merchant`'s notifications; it reads its pending ones from the views
    /// when it starts.
    pub fn new(nc: Arc<NotifierContext>, merchant: Arc<MerchantProfile>) -> MerchantNotifier {
        let breaker = Breaker::new(nc.policy.breaker);
        MerchantNotifier {
            nc,
            merchant,
            jobs: HashMap::new(),
            queue: BTreeSet::new(),
            busy: HashSet::new(),
            calling: 0,
            heads: HashMap::new(),
            recently_done: RecentIds::default(),
            breaker,
            overflow: true,
            last_ticket: 0,
            wake: None,
            refill_scheduled: false,
        }
    }

    fn held(&self, id: &str) -> bool {
        self.jobs.contains_key(id) || self.busy.contains(id)
    }

    fn hold(&mut self, n: Notification) {
        if n.status != NotifyStatus::Pending || self.held(&n.notify_id) {
            return;
        }
        self.heads.entry(n.pay_order_no.clone()).or_default().insert(n.sequence);
        self.queue.insert((n.due.unwrap_or(0), n.notify_id.clone()));
        self.jobs.insert(n.notify_id.clone(), n);
    }

    /// Takes a held job out of the queue (to deliver or resend it); it stays counted
    /// in its order's heads until [`Self::settle`].
    fn take(&mut self, id: &str) -> Option<Notification> {
        let n = self.jobs.remove(id)?;
        self.queue.remove(&(n.due.unwrap_or(0), n.notify_id.clone()));
        self.busy.insert(n.notify_id.clone());
        Some(n)
    }

    /// A busy job is done with for now: back in the queue if still pending.
    fn settle(&mut self, n: Notification) {
        self.busy.remove(&n.notify_id);
        if n.status == NotifyStatus::Pending {
            self.hold(n);
            return;
        }
        if let Some(seqs) = self.heads.get_mut(&n.pay_order_no) {
            seqs.remove(&n.sequence);
            if seqs.is_empty() {
                self.heads.remove(&n.pay_order_no);
            }
        }
        self.recently_done.insert(n.notify_id);
    }

    /// Whether `n` is its order's earliest notification held here.
    fn is_head(&self, n: &Notification) -> bool {
        self.heads.get(&n.pay_order_no).and_then(|s| s.first()).is_none_or(|first| *first == n.sequence)
    }

    fn record_gauges(&self, now: i64) {
        let backlog = self.jobs.len() + self.busy.len();
        let state = self.breaker.state(now);
        let id = self.merchant.merchant_id.clone();
        metrics::gauge!("paygate_notify_backlog", "merchant" => id.clone()).set(backlog as f64);
        metrics::gauge!("paygate_notify_breaker_state", "merchant" => id).set(state.gauge());
    }

    /// Starts every delivery that is due, eligible and admitted; then sleeps until the
    /// next one can be.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = self.nc.clock.now_ms();
        while self.calling < self.nc.policy.max_in_flight.max(1) {
            let next = self
                .queue
                .iter()
                .take_while(|(due, _)| *due <= now)
                .find(|(_, id)| self.jobs.get(id).is_some_and(|n| self.is_head(n)))
                .map(|(_, id)| id.clone());
            let Some(id) = next else { break };
            if !self.breaker.admit(now) {
                break;
            }
            if let Some(n) = self.take(&id) {
                self.deliver(n, ctx);
            }
        }
        self.record_gauges(now);
        // Jobs due now but not started wait for a slot or for their order's earlier
        // notification: a completion wakes them. The rest need a timer.
        let next_due = self.queue.iter().map(|(due, _)| *due).find(|due| *due > now);
        let wake = match self.breaker.open_until() {
            Some(until) if !self.queue.is_empty() => Some(until.max(now + 1)),
            _ => next_due,
        };
        if let Some(at) = wake {
            self.wake_at(at, ctx);
        }
    }

    fn wake_at(&mut self, at: i64, ctx: &mut Context<Self>) {
        if let Some((when, handle)) = self.wake.take() {
            if when <= at {
                self.wake = Some((when, handle));
                return;
            }
            ctx.cancel_future(handle);
        }
        let after = Duration::from_millis(u64::try_from(at - self.nc.clock.now_ms()).unwrap_or(0));
        let handle = ctx.run_later(after, |act, ctx| {
            act.wake = None;
            act.pump(ctx);
        });
        self.wake = Some((at, handle));
    }

    /// Makes one attempt: the HTTP call holds one of the endpoint's slots; recording
    /// its outcome (a journal append) does not, so the endpoint's concurrency is not
    /// spent waiting for the disk. The job stays busy until it is recorded.
    fn deliver(&mut self, n: Notification, ctx: &mut Context<Self>) {
        self.calling += 1;
        let nc = Arc::clone(&self.nc);
        let merchant = Arc::clone(&self.merchant);
        let call = async move {
            let started = nc.clock.now_ms();
            let attempt = match n.url.as_ref().or(merchant.notify_url.as_ref()) {
                Some(url) => {
                    let rendered = n.render(&merchant.secret, merchant.sign_type(), started / 1000);
                    let outgoing = Outgoing {
                        url: url.clone(),
                        body: rendered.body,
                        signature_header: rendered.signature_header,
                        notify_id: n.notify_id.clone(),
                        allow_private: merchant.allow_private_notify,
                    };
                    nc.transport.deliver(outgoing, started).await
                }
                None => crate::notification::Attempt::failed(
                    started,
                    0,
                    "no notify_url: the order named none and the merchant has no default",
                ),
            };
            (n, attempt)
        };
        ctx.spawn(
            call.into_actor(self)
                .then(|(n, attempt), act, ctx| {
                    act.calling = act.calling.saturating_sub(1);
                    let now = act.nc.clock.now_ms();
                    act.breaker.record(attempt.acknowledged, now);
                    let outcome = if attempt.acknowledged { "acknowledged" } else { "failed" };
                    metrics::counter!("paygate_notify_attempts_total", "outcome" => outcome).increment(1);
                    metrics::histogram!("paygate_notify_attempt_seconds").record(f64::from(attempt.latency_ms) / 1000.0);
                    act.pump(ctx);
                    let nc = Arc::clone(&act.nc);
                    let cmd = NotifyCommand::RecordAttempt { attempt, jitter_unit: (nc.jitter)() };
                    async move {
                        let recorded = record(&nc, n.clone(), cmd).await;
                        (n, recorded)
                    }
                    .into_actor(act)
                })
                .map(|(n, recorded), act, ctx| {
                    let n = match recorded {
                        Ok((next, ticket)) => {
                            act.last_ticket = act.last_ticket.max(ticket);
                            act.count_outcome(&next);
                            next
                        }
                        Err(e) => {
                            // The attempt is not on record: it is made again, later.
                            tracing::error!(notify_id = %n.notify_id, error = %e, "recording a notification attempt failed");
                            let mut n = n;
                            n.due = Some(act.nc.clock.now_ms() + APPEND_RETRY_MS);
                            n
                        }
                    };
                    act.settle(n);
                    if act.overflow && act.jobs.len() + act.busy.len() <= act.nc.policy.queue / 2 {
                        act.refill(ctx);
                    }
                    act.pump(ctx);
                }),
        );
    }

    fn count_outcome(&self, n: &Notification) {
        match n.status {
            NotifyStatus::Delivered => metrics::counter!("paygate_notify_delivered_total").increment(1),
            NotifyStatus::Dead => {
                metrics::counter!("paygate_notify_dead_total").increment(1);
                metrics::counter!("paygate_alerts_total", "kind" => "notification_dead").increment(1);
                let last = n.attempts.last();
                tracing::warn!(
                    notify_id = %n.notify_id,
                    merchant_id = %n.merchant_id,
                    attempts = n.total_attempts,
                    last_status = ?last.and_then(|a| a.http_status),
                    last_error = ?last.and_then(|a| a.error.as_deref()),
                    "notification is DEAD: every scheduled attempt failed; resend it once the endpoint is back"
                );
            }
            NotifyStatus::Pending => {}
        }
    }

    /// Reads back what the views hold beyond the queue, once they show this actor's
    /// last record (else a notification delivered a moment ago would read as pending).
    fn refill(&mut self, ctx: &mut Context<Self>) {
        if !self.overflow {
            return;
        }
        let room = self.nc.policy.queue.saturating_sub(self.jobs.len() + self.busy.len());
        if room == 0 {
            return self.refill_later(Duration::from_secs(1), ctx);
        }
        if !self.nc.journal.is_projected(self.last_ticket) {
            return self.refill_later(VIEWS_LAG_RECHECK, ctx);
        }
        let limit = self.nc.policy.queue;
        match self.nc.store.pending(&self.merchant.merchant_id, limit) {
            Ok(pending) => {
                let complete = pending.len() < limit;
                let mut added = 0usize;
                for n in pending {
                    if added >= room {
                        break;
                    }
                    if !self.held(&n.notify_id) && !self.recently_done.contains(&n.notify_id) {
                        self.hold(n);
                        added += 1;
                    }
                }
                self.overflow = !complete || added >= room;
                if self.overflow {
                    // Drained deliveries call again sooner; this is the fallback.
                    self.refill_later(Duration::from_secs(1), ctx);
                }
            }
            Err(e) => {
                tracing::error!(merchant_id = %self.merchant.merchant_id, error = %e, "reading pending notifications failed");
                self.refill_later(Duration::from_secs(1), ctx);
            }
        }
        self.pump(ctx);
    }

    fn refill_later(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if !self.refill_scheduled {
            self.refill_scheduled = true;
            ctx.run_later(after, |act, ctx| {
                act.refill_scheduled = false;
                act.refill(ctx);
            });
        }
    }
}

/// Decides `cmd`'s events for `n`, journals them, and answers the new state with the
/// record's ticket.
async fn record(
    nc: &NotifierContext,
    mut n: Notification,
    cmd: NotifyCommand,
) -> Result<(Notification, Ticket), StorageError> {
    let events = n.handle(cmd, &nc.policy.schedule);
    let mut next = n.clone();
    for e in &events {
        next.apply(e).map_err(StorageError::failed)?;
    }
    next.version = n.version + 1;
    let record = Record::Notify {
        pay_order_no: n.pay_order_no.clone(),
        notify_id: n.notify_id.clone(),
        version: next.version,
        events,
    };
    let ticket = nc.journal.append(record).await?;
    n = next;
    Ok((n, ticket))
}

impl Actor for MerchantNotifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
        self.refill(ctx);
    }
}

impl Handler<Enqueue> for MerchantNotifier {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        let n = *msg.0;
        if self.held(&n.notify_id) || self.recently_done.contains(&n.notify_id) {
            return;
        }
        if self.jobs.len() + self.busy.len() >= self.nc.policy.queue {
            // It is durable in the journal; the views give it back when there is room.
            self.overflow = true;
            self.refill_later(Duration::from_secs(1), ctx);
            return;
        }
        self.hold(n);
        self.pump(ctx);
    }
}

impl Handler<Resend> for MerchantNotifier {
    type Result = ResponseActFuture<Self, CoreResult<Vec<Notification>>>;

    fn handle(&mut self, msg: Resend, _: &mut Context<Self>) -> Self::Result {
        let nc = Arc::clone(&self.nc);
        let merchant_id = self.merchant.merchant_id.clone();
        let ticket = self.last_ticket;
        let read = async move {
            while !nc.journal.is_projected(ticket) {
                actix::clock::sleep(VIEWS_LAG_RECHECK).await;
            }
            let found = match &msg.0 {
                ResendWhat::Latest(id) => nc.store.of_order(id).map(|all| all.into_iter().last().into_iter().collect()),
                ResendWhat::Dead => nc.store.dead(&merchant_id, 10_000),
            };
            found.map_err(StorageError::into_core)
        };
        Box::pin(read.into_actor(self).then(|found, act, _| {
            let mut chosen = Vec::new();
            let mut unchanged = Vec::new();
            let mut failure = None;
            match found {
                Ok(found) => {
                    for stored in found {
                        let id = stored.notify_id.clone();
                        if act.busy.contains(&id) {
                            // Being delivered right now: that attempt is the resend.
                            unchanged.push(stored);
                        } else if let Some(held) = act.take(&id) {
                            chosen.push(held);
                        } else {
                            act.busy.insert(id);
                            act.heads.entry(stored.pay_order_no.clone()).or_default().insert(stored.sequence);
                            chosen.push(stored);
                        }
                    }
                }
                Err(e) => failure = Some(e),
            }
            let nc = Arc::clone(&act.nc);
            let resend = async move {
                let now = nc.clock.now_ms();
                let mut out = Vec::with_capacity(chosen.len());
                for n in chosen {
                    let result = record(&nc, n.clone(), NotifyCommand::Resend { now }).await;
                    out.push((n, result));
                }
                out
            };
            resend.into_actor(act).map(move |results, act, ctx| {
                let mut answer = unchanged;
                let mut failure = failure;
                for (before, result) in results {
                    match result {
                        Ok((n, ticket)) => {
                            act.last_ticket = act.last_ticket.max(ticket);
                            act.recently_done.remove(&n.notify_id);
                            answer.push(n.clone());
                            act.settle(n);
                        }
                        Err(e) => {
                            failure = Some(e.into_core());
                            act.settle(before);
                        }
                    }
                }
                act.pump(ctx);
                match failure {
                    Some(e) => Err(e),
                    None => Ok(answer),
                }
            })
        }))
    }
}

/// The node's merchant delivery actors, by merchant: cheap to clone into every order
/// actor.
#[derive(Clone, Default)]
pub struct NotifierDirectory {
    actors: Arc<HashMap<String, Entry>>,
}

/// One merchant's actor and profile.
type Entry = (Addr<MerchantNotifier>, Arc<MerchantProfile>);

impl NotifierDirectory {
    /// Starts one actor per merchant in `merchants`, each where `place` puts it.
    pub fn start(
        nc: Arc<NotifierContext>,
        merchants: impl IntoIterator<Item = Arc<MerchantProfile>>,
        mut place: impl FnMut(usize, MerchantNotifier) -> Addr<MerchantNotifier>,
    ) -> NotifierDirectory {
        let actors = merchants
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let actor = MerchantNotifier::new(Arc::clone(&nc), Arc::clone(&m));
                (m.merchant_id.clone(), (place(i, actor), m))
            })
            .collect();
        NotifierDirectory { actors: Arc::new(actors) }
    }

    /// Whether the notification `due` (a `NotifyDue` of `order`) can be sent: it has a
    /// URL — the refund's, the order's, or its merchant's default.
    pub fn owes(&self, order: &Order, due: &OrderEvent) -> bool {
        let refund_url = match due {
            OrderEvent::NotifyDue { refund_order_no: Some(no), .. } => {
                order.refunds.iter().find(|r| r.refund_order_no == *no).and_then(|r| r.spec.notify_url.as_ref())
            }
            _ => None,
        };
        refund_url.is_some()
            || order.spec.notify_url.is_some()
            || self.actors.get(&order.spec.merchant_id).is_some_and(|(_, m)| m.notify_url.is_some())
    }

    /// Hands `n` to its merchant's actor without waiting. A merchant without an actor
    /// (no longer configured) keeps it pending in the journal.
    pub fn enqueue(&self, n: Notification) {
        match self.actors.get(&n.merchant_id) {
            Some((addr, _)) => addr.do_send(Enqueue(Box::new(n))),
            None => {
                tracing::warn!(notify_id = %n.notify_id, merchant_id = %n.merchant_id, "no notifier for this merchant")
            }
        }
    }

    /// Sends `what` of `merchant_id`'s notifications again now.
    pub async fn resend(&self, merchant_id: &str, what: ResendWhat) -> CoreResult<Vec<Notification>> {
        let (addr, _) = self
            .actors
            .get(merchant_id)
            .ok_or_else(|| CoreError::new(ErrorCode::MerchantNotFound, "no such merchant"))?;
        addr.send(Resend(what)).await.map_err(|_| CoreError::system("the merchant's notifier is not running"))?
    }
}
