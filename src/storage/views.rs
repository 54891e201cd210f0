//! The derived views in sled: order snapshots, the (merchant, order_no) index, persisted
//! timers and the journal position they reflect. Everything here can be rebuilt from
//! the journal; one function, [`Views::project`], derives it, live and on recovery.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use paygate_actors::channel_actor::ChannelSetting;
use paygate_actors::daily_volume::{business_day, counted};
use paygate_actors::ids::merchant_key;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::notification::{Notification, NotifyStatus};
use paygate_actors::order::{Order, OrderEvent, PayMethod, QueryPolicy};
use paygate_actors::ports::{BillItem, ListCursor, ListQuery, NotifyStore, OrderStore, Page, Record, StorageError};
use paygate_actors::refund::{Refund, RefundEvent};
use paygate_actors::risk::lists::{ListEntry, ListKind, ListName};
use paygate_actors::risk::{Decision, RiskChange};
use paygate_actors::strategy::Strategy;

use super::codec::{decode_notification, decode_order, encode_notification, encode_order};

const ORDER: u8 = b'o';
const INDEX: u8 = b'i';
const TIMER: u8 = b't';
const VOLUME: u8 = b'v';
const NOTIFICATION: u8 = b'n';
const NOTIFY_PENDING: u8 = b'p';
const NOTIFY_DEAD: u8 = b'd';
const REFUND_INDEX: u8 = b'f';
const ORDER_LIST: u8 = b'l';
const REFUND_LIST: u8 = b'g';
const BILL: u8 = b'b';
const CHANNEL: u8 = b'c';
/// Operators' routing strategies: `r<merchant_id>\0<PAY_METHOD>` → strategy name.
const ROUTING: u8 = b'r';
/// Operators' list changes: `k<list>\0<kind>\0<value>` → `+` (added) or `-` (removed).
const RISK_LIST: u8 = b'k';
const RISK_RULES: &[u8] = b"m:risk_rules";
/// Payments under review, until an operator resolves them: `w<created>‖<pay_order_no>`
/// → merchant id.
const REVIEW: u8 = b'w';
const RISK_VERSION: &[u8] = b"m:risk_version";
/// What risk control counted of each payment, for a month:
/// `q<created>‖<pay_order_no>` → [`RiskTrace`].
const RISK_TRACE: u8 = b'q';
/// The most index entries one listing page reads; a page that finds fewer matches
/// within it ends early with a cursor to continue.
const LIST_SCAN: usize = 10_000;
const APPLIED: &[u8] = b"m:applied";
const ID_HIGH_WATER: &[u8] = b"m:idhw";
const SCHEMA: &[u8] = b"m:schema";

/// The layout of the views this build writes. Views of another layout are rebuilt
/// from the journal. 2: the applied marker carries the journal sequence. 3: order
/// snapshots carry their refunds; the refund index. 4: late payments. 5: order
/// snapshots carry their route. 6: abandoned trades and where late payments were taken.
/// 7: risk decisions; operators' risk changes. 8: operators' verdicts on reviews.
/// 9: risk traces.
pub const SCHEMA_VERSION: u32 = 9;

/// What risk control counted of one payment, kept for a month so that a starting node
/// counts the month again from a compact, time-ordered index instead of every order's
/// snapshot (500,000 snapshots took five seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RiskTrace {
    /// When the payment was judged, unix millis.
    pub at: i64,
    /// The merchant.
    pub merchant_id: String,
    /// The amount.
    pub amount: paygate_actors::money::Money,
    /// The buyer at the merchant.
    pub user_id: Option<String>,
    /// The buyer's device.
    pub device_id: Option<String>,
    /// The buyer's address.
    pub client_ip: Option<std::net::IpAddr>,
    /// The decision.
    pub decision: Decision,
    /// Whether the payment went ahead (a REVIEW may have been refused).
    pub went_ahead: bool,
}

/// A place in the journal: the end of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// Segment index.
    pub segment: u32,
    /// Byte offset just past the record.
    pub offset: u64,
}

/// How far the views reflect the journal: a position and the sequence of the record
/// that ends there. Durable evidence of how much the journal held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Just past the last applied record.
    pub position: Position,
    /// That record's journal sequence (0: none).
    pub seq: u64,
}

/// The journal and the views disagree in a way replay cannot mend.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A snapshot could not be decoded or encoded.
    #[error("snapshot: {0}")]
    Codec(#[from] super::codec::CodecError),
    /// The records do not follow from the stored state.
    #[error("{0}")]
    Inconsistent(String),
    /// Written by a build with another layout.
    #[error("the views have layout {found}, this build writes {SCHEMA_VERSION}")]
    Schema {
        /// What is stored (0: none, on views that hold data).
        found: u32,
    },
}

impl ProjectError {
    /// Whether the views are proven unusable (and may be rebuilt from the journal), as
    /// opposed to unreadable now (a full disk, an I/O error), which must never cost
    /// them.
    pub fn proves_views_bad(&self) -> bool {
        !matches!(self, ProjectError::Sled(sled::Error::Io(_)))
    }
}

/// The sled-backed views.
pub struct Views {
    db: sled::Db,
    policy: QueryPolicy,
    high_water: AtomicU64,
}

fn order_key(id: &PayOrderNo) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(ORDER);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

fn index_key(merchant_id: &str, order_no: &str) -> Vec<u8> {
    let mut k = vec![INDEX];
    k.extend_from_slice(merchant_key(merchant_id, order_no).as_bytes());
    k
}

fn timer_key(due: i64, id: &PayOrderNo) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + id.as_str().len());
    k.push(TIMER);
    k.extend_from_slice(&(due.max(0) as u64).to_be_bytes());
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// `v ‖ business day ‖ channel`: what the channel's orders of that day count.
fn volume_key(day: i64, channel: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + channel.len());
    k.push(VOLUME);
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(channel.as_bytes());
    k
}

/// `tag‖created‖id`: an order's entry in an index kept in creation order.
fn created_key(tag: u8, created: i64, id: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&(created.max(0) as u64).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn risk_list_key(e: &ListEntry) -> Vec<u8> {
    let mut k = vec![RISK_LIST];
    for part in [e.list.as_str(), e.kind.as_str(), e.value.as_str()] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.pop();
    k
}

/// What operators changed of risk control, as the views keep it.
#[derive(Debug, Default)]
pub struct StoredRisk {
    /// How many changes were made: the version of the rules and lists in force.
    pub version: u64,
    /// The rules last set (JSON), if any were.
    pub rules: Option<String>,
    /// List entries added (`true`) or removed (`false`) since the configuration.
    pub lists: Vec<(ListEntry, bool)>,
}

fn routing_key(merchant_id: &str, method: PayMethod) -> Vec<u8> {
    let mut k = routing_prefix(merchant_id);
    k.extend_from_slice(method.as_str().as_bytes());
    k
}

fn routing_prefix(merchant_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + merchant_id.len() + 16);
    k.push(ROUTING);
    k.extend_from_slice(merchant_id.as_bytes());
    k.push(0);
    k
}

fn channel_key(code: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + code.len());
    k.push(CHANNEL);
    k.extend_from_slice(code.as_bytes());
    k
}

fn notification_key(notify_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + notify_id.len());
    k.push(NOTIFICATION);
    k.extend_from_slice(notify_id.as_bytes());
    k
}

/// `tag ‖ merchant ‖ 0`: where a merchant's pending or dead notifications start.
fn merchant_prefix(tag: u8, merchant_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + merchant_id.len() + 8 + 32);
    k.push(tag);
    k.extend_from_slice(merchant_id.as_bytes());
    k.push(0);
    k
}

/// `p ‖ merchant ‖ 0 ‖ due ‖ notify_id` for a pending notification, `d ‖ merchant ‖ 0 ‖
/// notify_id` for a dead one; nothing for a delivered one.
fn notify_index_key(n: &Notification) -> Option<Vec<u8>> {
    let mut k = match n.status {
        NotifyStatus::Pending => {
            let mut k = merchant_prefix(NOTIFY_PENDING, &n.merchant_id);
            k.extend_from_slice(&(n.due.unwrap_or(0).max(0) as u64).to_be_bytes());
            k
        }
        NotifyStatus::Dead => merchant_prefix(NOTIFY_DEAD, &n.merchant_id),
        NotifyStatus::Delivered => return None,
    };
    k.extend_from_slice(n.notify_id.as_bytes());
    Some(k)
}

/// `tag ‖ merchant ‖ 0 ‖ created ‖ id`: a listing's entry.
fn list_key(tag: u8, merchant_id: &str, created: i64, id: &str) -> Vec<u8> {
    let mut k = merchant_prefix(tag, merchant_id);
    k.extend_from_slice(&(created.max(0) as u64).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// `b ‖ merchant ‖ 0 ‖ day ‖ kind ‖ id`: a line of the merchant's bill of `day`.
fn bill_key(merchant_id: &str, day: i64, kind: u8, id: &str) -> Vec<u8> {
    let mut k = merchant_prefix(BILL, merchant_id);
    k.extend_from_slice(&day.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

fn storage(e: impl std::fmt::Display) -> StorageError {
    StorageError::failed(e)
}

impl Views {
    /// Opens (or creates) the views at `dir`.
    pub fn open(dir: &Path, policy: QueryPolicy, cache_bytes: u64) -> Result<Views, ProjectError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000));
        let db = super::open_sled(&config)?;
        let schema = db.get(SCHEMA)?.and_then(|v| v.as_ref().try_into().ok()).map(u32::from_be_bytes);
        match schema {
            Some(SCHEMA_VERSION) => {}
            None if db.is_empty() => {
                db.insert(SCHEMA, &SCHEMA_VERSION.to_be_bytes()[..])?;
            }
            found => return Err(ProjectError::Schema { found: found.unwrap_or(0) }),
        }
        let high_water = db.get(ID_HIGH_WATER)?.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes);
        Ok(Views { db, policy, high_water: AtomicU64::new(high_water) })
    }

    /// How far the views reflect the journal.
    pub fn applied(&self) -> Result<Applied, ProjectError> {
        let Some(v) = self.db.get(APPLIED)? else {
            return Ok(Applied::default());
        };
        let segment = v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
        let offset = v.get(4..12).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        let seq = v.get(12..20).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match (segment, offset, seq) {
            (Some(segment), Some(offset), Some(seq)) => Ok(Applied { position: Position { segment, offset }, seq }),
            _ => Err(ProjectError::Inconsistent("stored journal position is malformed".into())),
        }
    }

    fn load_order(&self, id: &PayOrderNo) -> Result<Option<Order>, ProjectError> {
        match self.db.get(order_key(id))? {
            Some(bytes) => Ok(Some(decode_order(&bytes)?)),
            None => Ok(None),
        }
    }

    fn load_notification(&self, notify_id: &str) -> Result<Option<Notification>, ProjectError> {
        match self.db.get(notification_key(notify_id))? {
            Some(bytes) => Ok(Some(decode_notification(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Applies `records` (which end at `end`) atomically: snapshots, index, timers and
    /// position move together, so a record past the stored position was never applied.
    /// Each order's records must follow its stored sequence exactly.
    pub fn project<'a>(&self, records: impl IntoIterator<Item = &'a Record>, end: Applied) -> Result<(), ProjectError> {
        let mut overlay: HashMap<PayOrderNo, Order> = HashMap::new();
        let mut volumes: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut batch = sled::Batch::default();
        let mut high_water = self.high_water.load(Ordering::Relaxed);
        let mut notes: HashMap<String, Notification> = HashMap::new();
        let mut settings: HashMap<String, ChannelSetting> = HashMap::new();
        let mut risk_version: Option<u64> = None;
        for record in records {
            let (id, seq, events) = match record {
                Record::Order { pay_order_no, seq, events } => (pay_order_no, seq, events),
                Record::Channel { code, setting } => {
                    let before = match settings.get(code) {
                        Some(s) => *s,
                        None => self.channel_setting(code)?,
                    };
                    let merged = before.then(*setting);
                    let bytes = postcard::to_allocvec(&merged)
                        .map_err(|e| ProjectError::Inconsistent(format!("channel {code}: {e}")))?;
                    batch.insert(channel_key(code), bytes);
                    settings.insert(code.clone(), merged);
                    continue;
                }
                Record::Routing { merchant_id, method, strategy } => {
                    batch.insert(routing_key(merchant_id, *method), strategy.as_str().as_bytes());
                    continue;
                }
                Record::Risk { change } => {
                    let version = match risk_version {
                        Some(v) => v,
                        None => self.risk()?.version,
                    } + 1;
                    risk_version = Some(version);
                    batch.insert(RISK_VERSION, &version.to_be_bytes());
                    match change {
                        RiskChange::Rules(json) => batch.insert(RISK_RULES, json.as_bytes()),
                        RiskChange::ListAdded(e) => batch.insert(risk_list_key(e), b"+"),
                        RiskChange::ListRemoved(e) => batch.insert(risk_list_key(e), b"-"),
                    }
                    continue;
                }
                Record::Notify { notify_id, version, events, .. } => {
                    let prev = match notes.get(notify_id) {
                        Some(n) => Some(n.clone()),
                        None => self.load_notification(notify_id)?,
                    };
                    let mut n = prev.ok_or_else(|| {
                        ProjectError::Inconsistent(format!(
                            "notification {notify_id}: record {version} has no notification"
                        ))
                    })?;
                    if *version != n.version + 1 {
                        return Err(ProjectError::Inconsistent(format!(
                            "notification {notify_id}: journal record {version} follows stored record {}",
                            n.version
                        )));
                    }
                    let old_index = notify_index_key(&n);
                    for e in events {
                        n.apply(e).map_err(|e| ProjectError::Inconsistent(e.to_string()))?;
                    }
                    n.version = *version;
                    reindex_notification(&mut batch, old_index, &n);
                    batch.insert(notification_key(notify_id), encode_notification(&n)?);
                    notes.insert(notify_id.clone(), n);
                    continue;
                }
            };
            // A first record needs no lookup: the position moves atomically with the
            // data, so a record past it has never been applied.
            let prev = match overlay.get(id) {
                Some(o) => Some(o.clone()),
                None if *seq == 1 => None,
                None => self.load_order(id)?,
            };
            let prev_seq = prev.as_ref().map_or(0, |o| o.seq);
            if *seq != prev_seq + 1 {
                return Err(ProjectError::Inconsistent(format!(
                    "order {id}: journal record {seq} follows stored record {prev_seq}"
                )));
            }
            let old_timer = prev.as_ref().and_then(|o| o.next_timer(&self.policy));
            let prev_status = prev.as_ref().map(|o| o.status);
            let counted_before = prev.as_ref().map_or(0, counted);
            let mut state = prev;
            for event in events {
                state = Some(Order::evolve(state, event).map_err(|e| ProjectError::Inconsistent(e.to_string()))?);
            }
            let mut order =
                state.ok_or_else(|| ProjectError::Inconsistent(format!("order {id}: record {seq} has no events")))?;
            order.seq = *seq;
            let new_timer = order.next_timer(&self.policy);
            if old_timer != new_timer {
                if let Some(t) = old_timer {
                    batch.remove(timer_key(t, id));
                }
                if let Some(t) = new_timer {
                    batch.insert(timer_key(t, id), &[][..]);
                }
            }
            if prev_seq == 0 {
                batch.insert(index_key(&order.spec.merchant_id, &order.spec.order_no), id.as_str().as_bytes());
            }
            let delta = counted(&order) - counted_before;
            if delta != 0 {
                *volumes.entry(volume_key(business_day(order.create_time), &order.channel)).or_default() += delta;
            }
            let merchant = &order.spec.merchant_id;
            // The listings: an order's entry carries its status, so a status filter
            // reads no snapshot; written when the status changes. The bill: a payment
            // on the day it reached its final state.
            if prev_status != Some(order.status) {
                batch.insert(
                    list_key(ORDER_LIST, merchant, order.create_time, id.as_str()),
                    order.status.as_str().as_bytes(),
                );
            }
            if prev_status.is_none_or(|s| s.is_open()) && !order.status.is_open() {
                batch.insert(bill_key(merchant, business_day(order.update_time), b'p', id.as_str()), &[][..]);
            }
            for event in events {
                match event {
                    OrderEvent::Refund { refund_order_no, event } => {
                        let Some(r) = order.refunds.iter().find(|r| r.refund_order_no == *refund_order_no) else {
                            continue;
                        };
                        batch.insert(
                            list_key(REFUND_LIST, merchant, r.create_time, refund_order_no),
                            r.status.as_str().as_bytes(),
                        );
                        match event {
                            RefundEvent::Requested { spec, .. } | RefundEvent::LateRequested { spec, .. } => {
                                let mut k = merchant_prefix(REFUND_INDEX, merchant);
                                k.extend_from_slice(spec.refund_no.as_bytes());
                                batch.insert(k, refund_order_no.as_bytes());
                            }
                            // The bill: a refund on the day it settled.
                            RefundEvent::Succeeded { at } | RefundEvent::Failed { at, .. } => {
                                batch.insert(bill_key(merchant, business_day(*at), b'r', refund_order_no), &[][..]);
                            }
                            RefundEvent::QueryAttempted { .. } | RefundEvent::SentToReview { .. } => {}
                        }
                    }
                    OrderEvent::RiskAssessed { assessment, at } => {
                        let trace = RiskTrace {
                            at: *at,
                            merchant_id: merchant.to_owned(),
                            amount: order.spec.amount,
                            user_id: order.spec.user_id.clone(),
                            device_id: order.spec.device_id.clone(),
                            client_ip: order.spec.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
                            decision: assessment.decision,
                            went_ahead: !order.refused_by_risk(),
                        };
                        let bytes = postcard::to_allocvec(&trace)
                            .map_err(|e| ProjectError::Inconsistent(format!("risk trace: {e}")))?;
                        batch.insert(created_key(RISK_TRACE, order.create_time, id.as_str()), bytes);
                        if order.sent_to_review() {
                            batch.insert(created_key(REVIEW, order.create_time, id.as_str()), merchant.as_bytes());
                        }
                    }
                    OrderEvent::ReviewResolved { .. } => {
                        batch.remove(created_key(REVIEW, order.create_time, id.as_str()));
                    }
                    OrderEvent::NotifyDue { notify_type, refund_order_no, at } => {
                        let n = Notification::for_order(&order, *notify_type, refund_order_no.as_deref(), *at);
                        reindex_notification(&mut batch, None, &n);
                        batch.insert(notification_key(&n.notify_id), encode_notification(&n)?);
                        notes.insert(n.notify_id.clone(), n);
                    }
                    _ => {}
                }
            }
            batch.insert(order_key(id), encode_order(&order)?);
            high_water = high_water.max(id.millis());
            overlay.insert(id.clone(), order);
        }
        for (key, delta) in volumes {
            let stored = self.db.get(&key)?.and_then(|v| v.as_ref().try_into().ok()).map_or(0, i64::from_be_bytes);
            batch.insert(key, &stored.saturating_add(delta).to_be_bytes()[..]);
        }
        let mut pos = [0u8; 20];
        pos[..4].copy_from_slice(&end.position.segment.to_be_bytes());
        pos[4..12].copy_from_slice(&end.position.offset.to_be_bytes());
        pos[12..].copy_from_slice(&end.seq.to_be_bytes());
        batch.insert(APPLIED, &pos[..]);
        batch.insert(ID_HIGH_WATER, &high_water.to_be_bytes()[..]);
        self.db.apply_batch(batch)?;
        self.high_water.store(high_water, Ordering::Relaxed);
        Ok(())
    }

    /// Writes sled's dirty pages (on shutdown; sled also flushes on its own).
    pub fn flush(&self) -> Result<(), ProjectError> {
        self.db.flush()?;
        Ok(())
    }

    /// What operators have set of channel `code` so far (nothing: as configured).
    pub fn channel_setting(&self, code: &str) -> Result<ChannelSetting, ProjectError> {
        match self.db.get(channel_key(code))? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| ProjectError::Inconsistent(format!("channel {code}: stored setting: {e}"))),
            None => Ok(ChannelSetting::default()),
        }
    }

    /// Calls `f` with what risk control counted of each payment judged since `from_ms`,
    /// oldest first, and forgets the older ones (a month back is all risk needs).
    pub fn risk_history(&self, from_ms: i64, mut f: impl FnMut(RiskTrace)) -> Result<usize, ProjectError> {
        let start = created_key(RISK_TRACE, from_ms, "");
        let mut stale = sled::Batch::default();
        for item in self.db.range(vec![RISK_TRACE]..start.clone()) {
            stale.remove(item?.0);
        }
        self.db.apply_batch(stale)?;
        let mut n = 0;
        for item in self.db.range(start..vec![RISK_TRACE + 1]) {
            let (_, v) = item?;
            let trace: RiskTrace =
                postcard::from_bytes(&v).map_err(|e| ProjectError::Inconsistent(format!("risk trace: {e}")))?;
            f(trace);
            n += 1;
        }
        Ok(n)
    }

    /// The payments risk control sent to review, newest first, at most `limit`.
    pub fn reviews(&self, limit: usize) -> Result<Vec<Order>, ProjectError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([REVIEW]).rev().take(limit) {
            let (k, _) = item?;
            let id = k.get(9..).and_then(|b| std::str::from_utf8(b).ok()).and_then(PayOrderNo::parse);
            if let Some(order) = id.map(|id| self.load_order(&id)).transpose()?.flatten() {
                out.push(order);
            }
        }
        Ok(out)
    }

    /// What operators have changed of risk control.
    pub fn risk(&self) -> Result<StoredRisk, ProjectError> {
        let version = self.db.get(RISK_VERSION)?.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes);
        let rules = match self.db.get(RISK_RULES)? {
            Some(v) => Some(
                String::from_utf8(v.to_vec())
                    .map_err(|_| ProjectError::Inconsistent("risk rules are not text".into()))?,
            ),
            None => None,
        };
        let mut lists = Vec::new();
        for item in self.db.scan_prefix([RISK_LIST]) {
            let (k, v) = item?;
            let text = k.get(1..).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
            let mut parts = text.splitn(3, '\0');
            let list = parts.next().and_then(ListName::parse);
            let kind = parts.next().and_then(ListKind::parse);
            let value = parts.next();
            match (list, kind, value) {
                (Some(list), Some(kind), Some(value)) => {
                    lists.push((ListEntry { list, kind, value: value.to_owned() }, v.as_ref() == b"+"))
                }
                _ => return Err(ProjectError::Inconsistent(format!("unreadable risk list entry {text:?}"))),
            }
        }
        Ok(StoredRisk { version, rules, lists })
    }

    /// The routing strategies operators have set for `merchant_id`, by pay method
    /// (nothing: as configured).
    pub fn routing(&self, merchant_id: &str) -> Result<Vec<(PayMethod, Strategy)>, ProjectError> {
        let prefix = routing_prefix(merchant_id);
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (k, v) = item?;
            let method = k
                .get(prefix.len()..)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<PayMethod>().ok());
            let strategy = std::str::from_utf8(&v).ok().and_then(Strategy::parse);
            match (method, strategy) {
                (Some(m), Some(s)) => out.push((m, s)),
                _ => {
                    return Err(ProjectError::Inconsistent(format!("merchant {merchant_id}: unreadable routing entry")))
                }
            }
        }
        Ok(out)
    }

    /// What each channel's orders of business `day` count against its daily limit.
    pub fn day_volumes(&self, day: i64) -> Result<HashMap<String, i64>, ProjectError> {
        let mut prefix = vec![VOLUME];
        prefix.extend_from_slice(&day.to_be_bytes());
        let mut out = HashMap::new();
        for item in self.db.scan_prefix(&prefix) {
            let (k, v) = item?;
            let channel = k.get(prefix.len()..).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
            let minor = v.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0);
            out.insert(channel.to_owned(), minor);
        }
        Ok(out)
    }

    /// How many orders are stored.
    pub fn order_count(&self) -> usize {
        self.db.scan_prefix([ORDER]).count()
    }
}

/// Moves a notification's index entry from `old` to where its state puts it.
fn reindex_notification(batch: &mut sled::Batch, old: Option<Vec<u8>>, n: &Notification) {
    let new = notify_index_key(n);
    if old != new {
        if let Some(k) = old {
            batch.remove(k);
        }
        if let Some(k) = new {
            batch.insert(k, &[][..]);
        }
    }
}

impl Views {
    /// Notifications whose index entries start with `prefix`, the id after `skip` bytes.
    fn indexed(&self, prefix: Vec<u8>, skip: usize, limit: usize) -> Result<Vec<Notification>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix).take(limit) {
            let (k, _) = item.map_err(storage)?;
            let id = k.get(prefix.len() + skip..).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
            if let Some(n) = self.load_notification(id).map_err(storage)? {
                out.push(n);
            }
        }
        Ok(out)
    }
}

impl Views {
    /// The order an index entry names, if its id reads as one and the order exists.
    fn load_named(&self, id: Option<PayOrderNo>) -> Result<Option<Order>, StorageError> {
        match id {
            Some(id) => self.load_order(&id).map_err(storage),
            None => Ok(None),
        }
    }

    /// Walks a listing's entries newest first: the ids (with their creation time) whose
    /// status matches, at most `query.limit`, and where to continue.
    fn list(&self, tag: u8, query: &ListQuery) -> Result<Page<(i64, String)>, StorageError> {
        let prefix = merchant_prefix(tag, &query.merchant_id);
        let bound = |t: i64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&(t.max(0) as u64).to_be_bytes());
            k
        };
        let start = bound(query.from_ms);
        let end = match &query.after {
            Some(c) => {
                let mut k = bound(c.time);
                k.extend_from_slice(c.id.as_bytes());
                k
            }
            None => bound(query.to_ms),
        };
        let mut items = Vec::new();
        let mut scanned = 0usize;
        for entry in self.db.range(start..end).rev() {
            let (k, status) = entry.map_err(storage)?;
            let time =
                k.get(prefix.len()..prefix.len() + 8).and_then(|b| b.try_into().ok()).map_or(0, i64::from_be_bytes);
            let id = k.get(prefix.len() + 8..).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default().to_owned();
            scanned += 1;
            let here = ListCursor { time, id: id.clone() };
            if query.status.is_none_or(|s| s.as_bytes() == status.as_ref()) {
                items.push((time, id));
                if items.len() >= query.limit {
                    return Ok(Page { items, next: Some(here) });
                }
            }
            if scanned >= LIST_SCAN {
                return Ok(Page { items, next: Some(here) });
            }
        }
        Ok(Page { items, next: None })
    }
}

impl NotifyStore for Views {
    fn pending(&self, merchant_id: &str, limit: usize) -> Result<Vec<Notification>, StorageError> {
        self.indexed(merchant_prefix(NOTIFY_PENDING, merchant_id), 8, limit)
    }

    fn dead(&self, merchant_id: &str, limit: usize) -> Result<Vec<Notification>, StorageError> {
        self.indexed(merchant_prefix(NOTIFY_DEAD, merchant_id), 0, limit)
    }

    fn of_order(&self, pay_order_no: &PayOrderNo) -> Result<Vec<Notification>, StorageError> {
        let mut prefix = notification_key(pay_order_no.as_str());
        prefix.push(b'-');
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (_, v) = item.map_err(storage)?;
            out.push(decode_notification(&v).map_err(storage)?);
        }
        out.sort_by_key(|n| n.sequence);
        Ok(out)
    }
}

impl OrderStore for Views {
    fn load(&self, id: &PayOrderNo) -> Result<Option<Order>, StorageError> {
        self.load_order(id).map_err(storage)
    }

    fn find(&self, merchant_id: &str, order_no: &str) -> Result<Option<PayOrderNo>, StorageError> {
        let Some(v) = self.db.get(index_key(merchant_id, order_no)).map_err(storage)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&v).map_err(storage)?;
        PayOrderNo::parse(text).map(Some).ok_or_else(|| StorageError::Failed(format!("malformed index entry {text:?}")))
    }

    fn find_refund(&self, merchant_id: &str, refund_no: &str) -> Result<Option<String>, StorageError> {
        let mut k = merchant_prefix(REFUND_INDEX, merchant_id);
        k.extend_from_slice(refund_no.as_bytes());
        let found = self.db.get(k).map_err(storage)?;
        found.map(|v| String::from_utf8(v.to_vec()).map_err(storage)).transpose()
    }

    fn list_orders(&self, query: &ListQuery) -> Result<Page<Order>, StorageError> {
        let page = self.list(ORDER_LIST, query)?;
        let mut items = Vec::with_capacity(page.items.len());
        for (_, id) in page.items {
            items.extend(self.load_named(PayOrderNo::parse(&id))?);
        }
        Ok(Page { items, next: page.next })
    }

    fn list_refunds(&self, query: &ListQuery) -> Result<Page<(Order, String)>, StorageError> {
        let page = self.list(REFUND_LIST, query)?;
        let mut items = Vec::with_capacity(page.items.len());
        for (_, no) in page.items {
            items.extend(self.load_named(Refund::order_of(&no))?.map(|o| (o, no)));
        }
        Ok(Page { items, next: page.next })
    }

    fn bill(
        &self,
        merchant_id: &str,
        day: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<BillItem>, StorageError> {
        let mut prefix = merchant_prefix(BILL, merchant_id);
        prefix.extend_from_slice(&day.to_be_bytes());
        let mut start = prefix.clone();
        if let Some(after) = after {
            start.extend_from_slice(after.as_bytes());
            start.push(0);
        }
        let mut items = Vec::new();
        for entry in self.db.range(start..).take_while(|e| e.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))) {
            let (k, _) = entry.map_err(storage)?;
            let line = k.get(prefix.len()..).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
            let (kind, id) = (line.get(..1).unwrap_or_default(), line.get(1..).unwrap_or_default());
            let item = match kind {
                "p" => self.load_named(PayOrderNo::parse(id))?.map(BillItem::Payment),
                _ => self.load_named(Refund::order_of(id))?.map(|o| BillItem::Refund(o, id.to_owned())),
            };
            items.extend(item);
            if items.len() >= limit {
                return Ok(Page { items, next: Some(ListCursor { time: day, id: line.to_owned() }) });
            }
        }
        Ok(Page { items, next: None })
    }

    fn due_timers(&self, now: i64, limit: usize) -> Result<Vec<PayOrderNo>, StorageError> {
        let start = vec![TIMER];
        // Keys are `t ‖ due ‖ id`: everything below `t ‖ now+1` is due.
        let mut end = vec![TIMER];
        end.extend_from_slice(&(now.saturating_add(1).max(0) as u64).to_be_bytes());
        let mut due = Vec::new();
        for item in self.db.range(start..end).take(limit) {
            let (k, _) = item.map_err(storage)?;
            let id = k.get(9..).and_then(|b| std::str::from_utf8(b).ok()).and_then(PayOrderNo::parse);
            due.extend(id);
        }
        Ok(due)
    }

    fn id_high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    fn under_review(&self, limit: usize) -> Result<Vec<Order>, StorageError> {
        self.reviews(limit).map_err(storage)
    }
}

impl Views {
    /// Every stored order, in id order (for tools and tests; not a hot path).
    pub fn orders(&self) -> impl Iterator<Item = Result<Order, ProjectError>> + '_ {
        self.db.scan_prefix([ORDER]).map(|item| Ok(decode_order(&item?.1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paygate_actors::money::{Currency, Money};
    use paygate_actors::order::OrderSpec;
    use paygate_actors::risk::Assessment;

    /// The record that creates order `id` at `at`, judged `decision`, refused or not.
    fn judged(id: &str, at: i64, decision: Decision, refused: bool) -> Record {
        let spec = OrderSpec {
            user_id: Some("u1".into()),
            client_ip: Some("1.0.1.7".into()),
            ..OrderSpec::new("M1", id, Money::from_minor(1_000, Currency::CNY), "tea", PayMethod::Sandbox)
        };
        let pay_order_no = PayOrderNo::parse(id).unwrap();
        let channel = if refused { "" } else { "sandbox" };
        let assessment = Assessment { decision, rules: vec![], reason: String::new(), score_ppm: 0, version: 3 };
        let mut events = vec![
            OrderEvent::created(pay_order_no.clone(), spec, channel.into(), at, 30 * 60_000),
            OrderEvent::RiskAssessed { assessment, at },
        ];
        if refused {
            events.push(OrderEvent::RiskRejected { at });
        }
        Record::Order { pay_order_no, seq: 1, events }
    }

    #[test]
    fn risk_history_counts_the_last_month_in_order_and_forgets_what_is_older() {
        let dir = tempfile::tempdir().unwrap();
        let views = Views::open(dir.path(), QueryPolicy::default(), 1 << 20).unwrap();
        let day = 86_400_000;
        let now = 1_767_225_600_000;
        let records = [
            judged("P170406720000000010001", now - 40 * day, Decision::Allow, false),
            judged("P170406720000000010002", now - day, Decision::Review, true),
            judged("P170406720000000010003", now - 2 * day, Decision::Allow, false),
        ];
        for (i, r) in records.iter().enumerate() {
            let end = Applied { position: Position { segment: 0, offset: 100 * (i as u64 + 1) }, seq: i as u64 + 1 };
            views.project([r], end).unwrap();
        }
        let mut seen = Vec::new();
        let n = views.risk_history(now - 32 * day, |t| seen.push(t)).unwrap();
        assert_eq!(n, 2);
        let summary: Vec<_> = seen.iter().map(|t| (t.at, t.decision, t.went_ahead)).collect();
        assert_eq!(summary, [(now - 2 * day, Decision::Allow, true), (now - day, Decision::Review, false)]);
        assert_eq!(seen[0].client_ip, "1.0.1.7".parse().ok());
        assert_eq!(seen[0].user_id.as_deref(), Some("u1"));
        // The one older than the month is gone, not only skipped.
        assert_eq!(views.risk_history(0, |_| {}).unwrap(), 2);
    }
}
