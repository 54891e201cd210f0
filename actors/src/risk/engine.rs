//! The risk engine: evaluates a payment against the lists and rules in force and the
//! state it keeps, and decides ALLOW, REVIEW or DENY with the rules that fired.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use super::lists::{ListVerdict, Lists};
use super::model::{DenseModel, Feature, Features};
use super::rules::{minor_of, Action, KeyKind, Period, ReviewAction, RiskRules, Scope, Window};
use super::state::{Keyed, RiskState, Tracked};
use super::window::{Norm, Tally};
use super::{reason, Assessment, Decision, RiskInput};
use crate::daily_volume::business_day;

/// The rules and lists in force, versioned, with what evaluation needs precomputed.
#[derive(Debug)]
pub struct Policy {
    /// The rules.
    pub rules: RiskRules,
    /// The lists.
    pub lists: Lists,
    /// Changes applied since the configuration: every decision names the version.
    pub version: u64,
    model: DenseModel,
    /// Each limit's and velocity rule's amount in minor units.
    limit_minor: Vec<Option<i64>>,
    velocity_minor: Vec<Option<i64>>,
    regions: RegionTable,
}

impl Policy {
    /// `rules` and `lists` at `version`, or why the rules cannot be applied.
    pub fn new(rules: RiskRules, lists: Lists, version: u64) -> Result<Policy, String> {
        rules.check()?;
        let limit_minor = rules
            .limits
            .iter()
            .map(|l| l.max_amount.as_deref().map(|a| minor_of(a, l.currency, &l.id)).transpose())
            .collect::<Result<_, _>>()?;
        let velocity_minor = rules
            .velocity
            .iter()
            .map(|v| v.max_amount.as_deref().map(|a| minor_of(a, crate::money::Currency::CNY, &v.id)).transpose())
            .collect::<Result<_, _>>()?;
        let regions = RegionTable::new(&rules.regions)?;
        let model = rules.model.dense();
        Ok(Policy { rules, lists, version, model, limit_minor, velocity_minor, regions })
    }

    /// The region of `ip` in the table; private and unlisted addresses have none.
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.regions.lookup(ip).and_then(|i| self.rules.regions.get(i)).map(|r| r.region.as_str())
    }

    /// Whether a payment decided `decision` is refused: a DENY, or a REVIEW where
    /// reviews refuse (`review = "deny"`).
    pub fn refuses(&self, decision: Decision) -> bool {
        match decision {
            Decision::Allow => false,
            Decision::Review => self.rules.review == ReviewAction::Deny,
            Decision::Deny => true,
        }
    }
    /// The configuration's defaults and no lists: nothing fires (what tests and
    /// benches without risk rules run with).
    pub fn permissive() -> Policy {
        let rules = RiskRules::default();
        let model = rules.model.dense();
        Policy {
            rules,
            lists: Lists::default(),
            version: 0,
            model,
            limit_minor: Vec::new(),
            velocity_minor: Vec::new(),
            regions: RegionTable::default(),
        }
    }
}

impl Default for RiskEngine {
    fn default() -> Self {
        RiskEngine::new(Policy::permissive())
    }
}

/// Non-overlapping address ranges, sorted, for a binary search.
#[derive(Debug, Default)]
struct RegionTable {
    /// (first, last, index into the rules' regions), IPv4 as IPv4-mapped IPv6.
    ranges: Vec<(u128, u128, usize)>,
}

fn wide(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unspecified() || a.is_unique_local() || a.is_unicast_link_local(),
    }
}

impl RegionTable {
    fn new(regions: &[super::rules::Region]) -> Result<RegionTable, String> {
        let mut ranges = Vec::with_capacity(regions.len());
        for (i, r) in regions.iter().enumerate() {
            let net: ipnet::IpNet =
                r.cidr.parse().map_err(|_| format!("risk region {:?}: {:?} is not a CIDR range", r.region, r.cidr))?;
            if r.region.is_empty() || r.region.len() > 32 {
                return Err(format!("risk region of {}: names are 1-32 characters", r.cidr));
            }
            ranges.push((wide(net.network()), wide(net.broadcast()), i));
        }
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| matches!(w, [a, b] if b.0 <= a.1)) {
            let names: Vec<&str> = w.iter().filter_map(|r| regions.get(r.2)).map(|r| r.cidr.as_str()).collect();
            return Err(format!("risk regions overlap: {}", names.join(" and ")));
        }
        Ok(RegionTable { ranges })
    }

    fn lookup(&self, ip: IpAddr) -> Option<usize> {
        if private(ip) {
            return None;
        }
        let x = wide(ip);
        let i = self.ranges.partition_point(|r| r.0 <= x).checked_sub(1)?;
        self.ranges.get(i).filter(|r| x <= r.1).map(|r| r.2)
    }
}

/// Decides on payments; shared by every request.
pub struct RiskEngine {
    policy: RwLock<Arc<Policy>>,
    state: RiskState,
    /// `paygate_risk_decisions_total` by decision, registered once (a lookup per
    /// payment cost more than the rest of a calm evaluation).
    decisions: [metrics::Counter; 3],
}

/// A business month: year × 12 + month, Beijing time.
fn business_month(now_ms: i64) -> i32 {
    let day = business_day(now_ms);
    let julian = i32::try_from(day + 2_440_588).unwrap_or(0);
    match time::Date::from_julian_day(julian) {
        Ok(d) => d.year() * 12 + i32::from(u8::from(d.month())),
        Err(_) => 0,
    }
}

/// What one key said before the payment was counted.
#[derive(Debug, Clone, Copy, Default)]
struct KeySeen {
    /// The last minute's payments.
    minute: Tally,
    /// The last hour's, estimated (count, amount).
    hour: (f64, f64),
    /// The last day's, estimated.
    day: (f64, f64),
    /// Distinct users today (devices and addresses).
    users: usize,
    /// Whether the payment's user is new to it today.
    new_user: bool,
}

impl KeySeen {
    fn window(&self, w: Window) -> (f64, f64) {
        match w {
            Window::Minute => (f64::from(self.minute.count), self.minute.amount as f64),
            Window::Hour => self.hour,
            Window::Day => self.day,
        }
    }
}

/// A user's or merchant's totals, usual amount and region, before the payment.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    day: crate::risk::window::Period,
    month: crate::risk::window::Period,
    norm: crate::risk::window::Norm,
    region: u16,
}

impl Totals {
    fn of(t: &Tracked) -> Totals {
        Totals { day: t.day, month: t.month, norm: t.norm, region: t.region }
    }
}

/// What one payment's keys said before it was counted, and what counting it changed
/// that a stricter decision takes back.
#[derive(Default)]
struct Seen {
    user: Option<Totals>,
    user_velocity: Option<KeySeen>,
    device: Option<KeySeen>,
    ip: Option<KeySeen>,
    merchant: Totals,
    /// The business day and month of the payment.
    day: i32,
    month: i32,
    /// The keys of the user (if any) and the merchant.
    user_key: Option<u64>,
    merchant_key: u64,
    /// The user's region index + 1 the payment set (0: none).
    region: u16,
    /// The usual amounts as counting the payment left them.
    user_norm: Norm,
    merchant_norm: Norm,
}

/// How a payment is counted in its user's and merchant's totals and norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Not at all: it did not go ahead.
    Refused,
    /// In the limits' totals and the user's region: it went ahead under review.
    WentAhead,
    /// Also in the usual amounts: nothing found it unusual.
    Allowed,
}

impl Counted {
    /// How a payment decided `decision` under `p` counts.
    fn of(p: &Policy, decision: Decision) -> Counted {
        if p.refuses(decision) {
            Counted::Refused
        } else if decision == Decision::Allow {
            Counted::Allowed
        } else {
            Counted::WentAhead
        }
    }
}

impl RiskEngine {
    /// An engine applying `policy`.
    pub fn new(policy: Policy) -> RiskEngine {
        let decisions = [Decision::Allow, Decision::Review, Decision::Deny]
            .map(|d| metrics::counter!("paygate_risk_decisions_total", "decision" => d.as_str()));
        RiskEngine { policy: RwLock::new(Arc::new(policy)), state: RiskState::default(), decisions }
    }

    /// The rules and lists in force.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `policy` in force from the next payment on.
    pub fn replace(&self, policy: Policy) {
        let mut slot = self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Arc::new(policy);
    }

    /// Whether the policy in force refuses a payment decided `decision` (an ALLOW is
    /// answered without reading the policy: that is every calm payment).
    pub fn refuses(&self, decision: Decision) -> bool {
        decision != Decision::Allow && self.policy().refuses(decision)
    }

    /// What it remembers.
    pub fn state(&self) -> &RiskState {
        &self.state
    }

    /// Decides on a payment, counting it as an attempt (velocity, distinct users) and,
    /// if it goes ahead, as a payment (limits, the user's region; norms if allowed).
    pub fn assess(&self, input: &RiskInput<'_>) -> Assessment {
        let policy = self.policy();
        let version = policy.version;
        if !policy.rules.enabled {
            return Assessment {
                decision: Decision::Allow,
                rules: Vec::new(),
                reason: String::new(),
                score_ppm: 0,
                version,
            };
        }
        let (rules, why, score, decision) = match policy.lists.verdict(input) {
            Some(ListVerdict::Blocked(kind)) => {
                self.count(&policy, input, Counted::Refused);
                (vec![format!("list.block.{}", kind.as_str())], reason::BLOCKED, 0.0, Decision::Deny)
            }
            Some(ListVerdict::Allowed(kind)) => {
                self.count(&policy, input, Counted::Allowed);
                (vec![format!("list.allow.{}", kind.as_str())], "", 0.0, Decision::Allow)
            }
            None => {
                // Counted as allowed before it is judged (one visit per key), and taken
                // back as far as the decision says.
                let seen = self.count(&policy, input, Counted::Allowed);
                let judged = self.judge(&policy, input, &seen);
                self.take_back(input, &seen, Counted::of(&policy, judged.3));
                judged
            }
        };
        for rule in &rules {
            metrics::counter!("paygate_risk_rule_hits_total", "rule" => rule.clone()).increment(1);
        }
        if let Some(counter) = self.decisions.get(decision as usize) {
            counter.increment(1);
        }
        let score_ppm = (score.clamp(0.0, 1.0) * 1e6).round() as u32;
        Assessment { decision, rules, reason: why.to_owned(), score_ppm, version }
    }

    /// Counts a payment decided before (the node's history, after a restart) as
    /// [`RiskEngine::assess`] counted it then, without deciding again: `went_ahead` says
    /// whether it was let through (a REVIEW may have been refused).
    pub fn replay(&self, input: &RiskInput<'_>, decision: Decision, went_ahead: bool) {
        let policy = self.policy();
        if !policy.rules.enabled {
            return;
        }
        let counted = match (decision, went_ahead) {
            (_, false) | (Decision::Deny, _) => Counted::Refused,
            (Decision::Review, true) => Counted::WentAhead,
            (Decision::Allow, true) => Counted::Allowed,
        };
        self.count(&policy, input, counted);
    }

    /// Counts the payment in each key's state, one visit per key, answering what the
    /// state held before: every key counts the attempt (velocity, distinct users); the
    /// user and the merchant also count the payment as `counted` says.
    fn count(&self, p: &Policy, input: &RiskInput<'_>, counted: Counted) -> Seen {
        let (now, amount) = (input.now_ms, input.amount.minor());
        let st = &self.state;
        let mut seen = Seen {
            day: i32::try_from(business_day(now)).unwrap_or(0),
            month: business_month(now),
            user_key: input.user_id.map(|u| st.key(Keyed::User, input.merchant_id, u)),
            merchant_key: st.key(Keyed::Merchant, "", input.merchant_id),
            region: input
                .client_ip
                .and_then(|ip| p.regions.lookup(ip))
                .and_then(|r| u16::try_from(r + 1).ok())
                .unwrap_or(0),
            ..Seen::default()
        };
        let (day, month) = (seen.day, seen.month);
        // A user is known to devices and addresses by its key (users are per merchant).
        let user_hash = seen.user_key.map(|k| k as u32);
        // Reads a key's windows and users, then counts the attempt in them.
        let observe = |t: &mut Tracked| {
            let (minute, hour, dayw) = t.velocity(now);
            let users = t.users.count(day);
            let new_user = user_hash.is_some_and(|u| !t.users.contains(day, u));
            t.count_attempt(now, amount);
            KeySeen { minute, hour, day: dayw, users, new_user }
        };
        let keep = |t: &mut Tracked| {
            if counted != Counted::Refused {
                t.day.add(day, amount);
                t.month.add(month, amount);
            }
            if counted == Counted::Allowed {
                t.norm.add(amount);
            }
            t.norm
        };
        if let Some(key) = seen.user_key {
            let region = seen.region;
            let (before, velocity, norm) = st.with(key, |t| {
                let before = Totals::of(t);
                let velocity = observe(t);
                if counted != Counted::Refused && region != 0 {
                    t.region = region;
                }
                (before, velocity, keep(t))
            });
            (seen.user, seen.user_velocity, seen.user_norm) = (Some(before), Some(velocity), norm);
        }
        let with_users = |t: &mut Tracked| {
            let s = observe(t);
            if let Some(u) = user_hash {
                t.users.add(day, u);
            }
            s
        };
        if let Some(device) = input.device_id {
            seen.device = Some(st.with(st.key(Keyed::Device, "", device), with_users));
        }
        if let Some(ip) = input.client_ip {
            seen.ip = Some(st.with(st.key(Keyed::Ip, "", &ip), with_users));
        }
        (seen.merchant, seen.merchant_norm) = st.with(seen.merchant_key, |t| {
            let before = Totals::of(t);
            t.count_attempt(now, amount);
            (before, keep(t))
        });
        seen
    }

    /// Takes back what counting a payment as allowed did that `counted` would not
    /// have: its amount from the usual ones and, if it did not go ahead, from the
    /// limits' totals and the user's region. A norm another payment has moved since is
    /// left as it is (both learned; a race of two payments of one user, rare and mild).
    fn take_back(&self, input: &RiskInput<'_>, seen: &Seen, counted: Counted) {
        if counted == Counted::Allowed {
            return;
        }
        let amount = input.amount.minor();
        let undo = |t: &mut Tracked, before: &Totals, learned: Norm| {
            if t.norm == learned {
                t.norm = before.norm;
            }
            if counted == Counted::Refused {
                t.day.remove(seen.day, amount);
                t.month.remove(seen.month, amount);
            }
        };
        let st = &self.state;
        if let (Some(key), Some(before)) = (seen.user_key, seen.user.as_ref()) {
            st.with(key, |t| {
                undo(t, before, seen.user_norm);
                if counted == Counted::Refused && seen.region != 0 && t.region == seen.region {
                    t.region = before.region;
                }
            });
        }
        st.with(seen.merchant_key, |t| undo(t, &seen.merchant, seen.merchant_norm));
    }

    /// The rules that fire, the score and the decision.
    fn judge(&self, p: &Policy, input: &RiskInput<'_>, seen: &Seen) -> (Vec<String>, &'static str, f64, Decision) {
        let amount = input.amount.minor();
        let (day, month) = (seen.day, seen.month);
        let mut hits: Vec<(&str, Action, &'static str)> = Vec::new();
        let anomaly = &p.rules.anomaly;

        // Limits: the payment would take a total beyond them.
        for (limit, max_minor) in p.rules.limits.iter().zip(&p.limit_minor) {
            if limit.currency != input.amount.currency() {
                continue;
            }
            let tracked = match limit.scope {
                Scope::User => seen.user.as_ref(),
                Scope::Merchant => Some(&seen.merchant),
            };
            let Some(t) = tracked else { continue };
            let so_far = match limit.period {
                Period::Single => Tally::default(),
                Period::Day => t.day.of(day),
                Period::Month => t.month.of(month),
            };
            let over_amount = max_minor.is_some_and(|max| so_far.amount.saturating_add(amount) > max);
            let over_count = limit.max_count.is_some_and(|max| so_far.count >= max);
            if over_amount || over_count {
                hits.push((limit.id.as_str(), limit.action, reason::LIMIT_EXCEEDED));
            }
        }

        // Velocity: this payment would be one too many, or too much, in the window.
        for (rule, max_minor) in p.rules.velocity.iter().zip(&p.velocity_minor) {
            let key = match rule.key {
                KeyKind::UserId => seen.user_velocity,
                KeyKind::DeviceId => seen.device,
                KeyKind::ClientIp => seen.ip,
            };
            let Some(key) = key else { continue };
            let (count, sum) = key.window(rule.window);
            let over_count = rule.max_count.is_some_and(|max| count.round() >= f64::from(max));
            let over_amount = max_minor.is_some_and(|max| sum + amount as f64 > max as f64);
            if over_count || over_amount {
                hits.push((rule.id.as_str(), rule.action, reason::TOO_MANY_PAYMENTS));
            }
        }

        // Distinct users: a new user on a device or address that already had many today.
        for rule in &p.rules.distinct_users {
            let key = match rule.key {
                KeyKind::DeviceId => seen.device,
                KeyKind::ClientIp => seen.ip,
                KeyKind::UserId => None,
            };
            let Some(KeySeen { users, new_user, .. }) = key else { continue };
            if new_user && users >= rule.max_users as usize {
                hits.push((rule.id.as_str(), rule.action, reason::TOO_MANY_PAYMENTS));
            }
        }

        // Anomalies: far above the usual amount; another region than the user's last.
        let user_z =
            seen.user.as_ref().filter(|t| t.norm.count() >= anomaly.min_history).map_or(0.0, |t| t.norm.z(amount));
        let merchant_z =
            Some(&seen.merchant).filter(|t| t.norm.count() >= anomaly.min_history).map_or(0.0, |t| t.norm.z(amount));
        if let (Some(action), true) = (anomaly.user_amount, user_z >= anomaly.amount_z) {
            hits.push(("anomaly.user_amount", action, reason::UNUSUAL_PAYMENT));
        }
        if let (Some(action), true) = (anomaly.merchant_amount, merchant_z >= anomaly.amount_z) {
            hits.push(("anomaly.merchant_amount", action, reason::UNUSUAL_PAYMENT));
        }
        let region = input.client_ip.and_then(|ip| p.regions.lookup(ip));
        let region_changed = match (seen.user.as_ref().map(|t| t.region), region) {
            (Some(last), Some(now_region)) => last != 0 && usize::from(last) != now_region + 1,
            _ => false,
        };
        if let (Some(action), true) = (anomaly.region_change, region_changed) {
            hits.push(("anomaly.region_change", action, reason::UNUSUAL_PAYMENT));
        }

        // The score over every feature.
        let mut f = Features::default();
        let major = input.amount.to_decimal();
        f.set(Feature::AmountLog, rust_decimal::prelude::ToPrimitive::to_f64(&major).unwrap_or(0.0).max(0.0).ln_1p());
        // Capped: beyond ten deviations an amount is no more unusual for the score.
        f.set(Feature::UserAmountZ, user_z.min(10.0));
        f.set(Feature::MerchantAmountZ, merchant_z.min(10.0));
        if let Some(u) = seen.user_velocity {
            f.set(Feature::UserCount1h, u.hour.0);
            f.set(Feature::UserCount1d, u.day.0);
        }
        if let Some(d) = seen.device {
            f.set(Feature::DeviceCount1m, f64::from(d.minute.count));
            f.set(Feature::DeviceCount1h, d.hour.0);
            f.set(Feature::DeviceUsers1d, d.users as f64);
        }
        if let Some(ip) = seen.ip {
            f.set(Feature::IpCount1h, ip.hour.0);
            f.set(Feature::IpUsers1d, ip.users as f64);
        }
        let new_user = seen.user.as_ref().is_some_and(|t| t.norm.count() == 0);
        f.set(Feature::NewUser, if new_user { 1.0 } else { 0.0 });
        f.set(Feature::RegionChange, if region_changed { 1.0 } else { 0.0 });
        let score = p.model.score(&f);
        if score >= p.rules.model.deny_at {
            hits.push(("risk.score", Action::Deny, reason::HIGH_RISK));
        } else if score >= p.rules.model.review_at {
            hits.push(("risk.score", Action::Review, reason::HIGH_RISK));
        }

        let of = |a: Action| match a {
            Action::Review => Decision::Review,
            Action::Deny => Decision::Deny,
        };
        let decision = hits.iter().fold(Decision::Allow, |d, (_, a, _)| d.max(of(*a)));
        // The rules that made the decision first; the merchant is told the first's kind.
        hits.sort_by_key(|(_, a, _)| std::cmp::Reverse(of(*a)));
        let why = hits.first().map_or("", |(_, _, why)| *why);
        (hits.into_iter().map(|(id, ..)| id.to_owned()).collect(), why, score, decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, Money};
    use crate::risk::lists::{ListEntry, ListKind, ListName};
    use crate::risk::model::Model;
    use crate::risk::rules::{Anomaly, DistinctUsers, Limit, Region, Velocity};
    use crate::risk::state::Keyed;
    use proptest::prelude::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn cny(minor: i64) -> Money {
        Money::from_minor(minor, Currency::CNY)
    }

    fn input<'a>(
        user: Option<&'a str>,
        device: Option<&'a str>,
        ip: Option<&str>,
        minor: i64,
        now: i64,
    ) -> RiskInput<'a> {
        RiskInput {
            merchant_id: "M1",
            amount: cny(minor),
            user_id: user,
            device_id: device,
            client_ip: ip.map(|i| i.parse().unwrap()),
            account: None,
            now_ms: now,
        }
    }

    fn rules() -> RiskRules {
        RiskRules {
            limits: vec![
                Limit {
                    id: "limit.user.single".into(),
                    scope: Scope::User,
                    period: Period::Single,
                    currency: Currency::CNY,
                    max_amount: Some("5000.00".into()),
                    max_count: None,
                    action: Action::Deny,
                },
                Limit {
                    id: "limit.user.day".into(),
                    scope: Scope::User,
                    period: Period::Day,
                    currency: Currency::CNY,
                    max_amount: Some("8000.00".into()),
                    max_count: Some(50),
                    action: Action::Deny,
                },
            ],
            velocity: vec![Velocity {
                id: "velocity.device.1m".into(),
                key: KeyKind::DeviceId,
                window: Window::Minute,
                max_count: Some(20),
                max_amount: None,
                action: Action::Deny,
            }],
            distinct_users: vec![DistinctUsers {
                id: "distinct.device.1d".into(),
                key: KeyKind::DeviceId,
                max_users: 3,
                action: Action::Review,
            }],
            anomaly: Anomaly {
                amount_z: 4.0,
                min_history: 5,
                user_amount: Some(Action::Review),
                merchant_amount: None,
                region_change: Some(Action::Review),
            },
            regions: vec![
                Region { cidr: "1.0.1.0/24".into(), region: "CN-FJ".into() },
                Region { cidr: "1.0.8.0/21".into(), region: "CN-GD".into() },
            ],
            ..RiskRules::default()
        }
    }

    fn engine(rules: RiskRules, lists: Lists) -> RiskEngine {
        RiskEngine::new(Policy::new(rules, lists, 7).unwrap())
    }

    #[test]
    fn the_twenty_first_payment_from_one_device_within_a_minute_is_denied() {
        let e = engine(rules(), Lists::default());
        for i in 0..20 {
            let a = e.assess(&input(Some(&format!("u{}", i % 3)), Some("dev-1"), None, 100, T0 + i * 1_000));
            assert_ne!(a.decision, Decision::Deny, "payment {i}: {a:?}");
        }
        let a = e.assess(&input(Some("u1"), Some("dev-1"), None, 100, T0 + 20_500));
        assert_eq!(
            (a.decision, a.rules[0].as_str(), a.reason.as_str()),
            (Decision::Deny, "velocity.device.1m", "TOO_MANY_PAYMENTS")
        );
        assert_eq!(a.version, 7);
        // Another device is not held back; the first is again a minute later.
        assert_eq!(e.assess(&input(Some("u1"), Some("dev-2"), None, 100, T0 + 21_000)).decision, Decision::Allow);
        assert_eq!(e.assess(&input(Some("u1"), Some("dev-1"), None, 100, T0 + 90_000)).decision, Decision::Allow);
    }

    #[test]
    fn lists_decide_before_the_rules_and_a_block_wins() {
        let lists = Lists::new(
            [
                (ListName::Block, ListKind::UserId, "u-bad"),
                (ListName::Allow, ListKind::UserId, "u-vip"),
                (ListName::Block, ListKind::Cidr, "203.0.113.0/24"),
            ]
            .map(|(list, kind, value)| ListEntry { list, kind, value: value.into() }.canonical().unwrap()),
        );
        let e = engine(rules(), lists);
        let a = e.assess(&input(Some("u-bad"), None, None, 100, T0));
        assert_eq!(
            (a.decision, a.rules.clone(), a.reason.as_str()),
            (Decision::Deny, vec!["list.block.user_id".to_owned()], "BLOCKED")
        );
        let vip = e.assess(&input(Some("u-vip"), None, None, 900_000, T0));
        assert_eq!(
            (vip.decision, vip.rules[0].as_str()),
            (Decision::Allow, "list.allow.user_id"),
            "over every limit, allowed"
        );
        let a = e.assess(&input(Some("u-vip"), None, Some("203.0.113.9"), 100, T0));
        assert_eq!((a.decision, a.rules[0].as_str()), (Decision::Deny, "list.block.cidr"));
    }

    #[test]
    fn limits_count_what_went_ahead_and_a_refusal_does_not_use_them_up() {
        let e = engine(rules(), Lists::default());
        let a = e.assess(&input(Some("u"), None, None, 500_001, T0));
        assert_eq!(
            (a.decision, a.rules[0].as_str(), a.reason.as_str()),
            (Decision::Deny, "limit.user.single", "LIMIT_EXCEEDED")
        );
        assert_eq!(e.assess(&input(Some("u"), None, None, 400_000, T0 + 1)).decision, Decision::Allow);
        assert_eq!(
            e.assess(&input(Some("u"), None, None, 400_000, T0 + 2)).decision,
            Decision::Allow,
            "8000.00 exactly"
        );
        let a = e.assess(&input(Some("u"), None, None, 1, T0 + 3));
        assert_eq!((a.decision, a.rules[0].as_str()), (Decision::Deny, "limit.user.day"));
        // The refused cent did not count: the next business day starts from nothing.
        let next_day = T0 + 86_400_000;
        assert_eq!(e.assess(&input(Some("u"), None, None, 400_000, next_day)).decision, Decision::Allow);
        // Another merchant's user of the same id is another user.
        let other = RiskInput { merchant_id: "M2", ..input(Some("u"), None, None, 400_000, T0 + 4) };
        assert_eq!(e.assess(&other).decision, Decision::Allow);

        // Where reviews refuse, a reviewed payment does not go ahead and does not count
        // in the limits or move the user's region; under review it would.
        for (review, counted) in [(ReviewAction::Deny, 0u16), (ReviewAction::Allow, 1)] {
            let e = engine(RiskRules { review, ..rules() }, Lists::default());
            let day = i32::try_from(business_day(T0)).unwrap();
            let user = e.state().key(Keyed::User, "M1", "r");
            assert_eq!(e.assess(&input(Some("r"), None, Some("1.0.1.1"), 1_000, T0)).decision, Decision::Allow);
            let a = e.assess(&input(Some("r"), None, Some("1.0.9.9"), 1_000, T0 + 1));
            assert_eq!((a.decision, a.rules.as_slice()), (Decision::Review, &["anomaly.region_change".to_owned()][..]));
            let (tally, region) = e.state().peek(user, |t| (t.day.of(day), t.region)).unwrap();
            assert_eq!(tally.count, 1 + u32::from(counted), "{review:?}");
            // The table's index + 1: 1 is CN-FJ, 2 CN-GD (1.0.9.9).
            assert_eq!(region, 1 + counted, "{review:?}: the user's region");
        }
    }

    #[test]
    fn concurrent_payments_of_one_user_never_overrun_a_limit() {
        // A payment's check and its count in a key's totals are one step under the
        // key's lock: payments in flight at once are counted, not raced past.
        for _ in 0..20 {
            let e = Arc::new(engine(rules(), Lists::default()));
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let e = Arc::clone(&e);
                    std::thread::spawn(move || {
                        (0..25)
                            .map(|i| {
                                let amount = 10_000 + (t * 25 + i) * 97;
                                let a = e.assess(&input(Some("u"), None, None, amount, T0 + i));
                                if a.decision == Decision::Allow {
                                    (1, amount)
                                } else {
                                    (0, 0)
                                }
                            })
                            .fold((0, 0), |(n, sum), (k, a)| (n + k, sum + a))
                    })
                })
                .collect();
            let (allowed, sum) =
                threads.into_iter().map(|t| t.join().unwrap()).fold((0, 0), |(n, s), (k, a)| (n + k, s + a));
            // limit.user.day: 50 payments, 8000.00; 200 tried, at least 100.00 each.
            assert!(allowed <= 50 && sum <= 800_000, "{allowed} payments, {sum} fen");
            assert!(allowed > 0);
        }
    }

    #[test]
    fn many_users_on_one_device_go_to_review() {
        let e = engine(rules(), Lists::default());
        for u in ["a", "b", "c", "a", "b"] {
            assert_eq!(e.assess(&input(Some(u), Some("shared"), None, 100, T0)).decision, Decision::Allow);
        }
        let a = e.assess(&input(Some("d"), Some("shared"), None, 100, T0 + 1));
        assert_eq!((a.decision, a.rules[0].as_str()), (Decision::Review, "distinct.device.1d"));
        assert_eq!(
            e.assess(&input(Some("a"), Some("shared"), None, 100, T0 + 2)).decision,
            Decision::Allow,
            "a known user"
        );
    }

    #[test]
    fn an_amount_far_above_the_users_norm_and_a_new_region_go_to_review() {
        let e = engine(rules(), Lists::default());
        for i in 0..6 {
            let a = e.assess(&input(Some("u"), None, Some("1.0.1.7"), 1_000 + i * 10, T0 + i * 3_600_000));
            assert_eq!(a.decision, Decision::Allow, "{a:?}");
        }
        let a = e.assess(&input(Some("u"), None, Some("1.0.1.8"), 300_000, T0 + 7 * 3_600_000));
        assert_eq!(
            (a.decision, a.rules.clone(), a.reason.as_str()),
            (Decision::Review, vec!["anomaly.user_amount".to_owned()], "UNUSUAL_PAYMENT")
        );
        // It went ahead but did not become usual: the same amount is reviewed again.
        let a = e.assess(&input(Some("u"), None, Some("1.0.1.8"), 300_000, T0 + 7 * 3_600_000 + 1));
        assert_eq!(a.rules, ["anomaly.user_amount"]);
        let a = e.assess(&input(Some("u"), None, Some("1.0.9.1"), 1_000, T0 + 8 * 3_600_000));
        assert_eq!(a.rules, ["anomaly.region_change"]);
        // A private address has no region: not a change.
        let a = e.assess(&input(Some("u"), None, Some("192.168.1.2"), 1_000, T0 + 9 * 3_600_000));
        assert_eq!(a.decision, Decision::Allow);
        assert_eq!(e.policy().region_of("1.0.15.255".parse().unwrap()), Some("CN-GD"));
        assert_eq!(e.policy().region_of("1.0.16.0".parse().unwrap()), None);
    }

    #[test]
    fn the_score_denies_above_its_threshold_and_rules_off_allow_everything() {
        let model = Model {
            bias: -3.0,
            weights: [(Feature::DeviceCount1m, 1.0)].into_iter().collect(),
            review_at: 0.5,
            deny_at: 0.9,
        };
        let e = engine(RiskRules { model, velocity: Vec::new(), ..rules() }, Lists::default());
        let decisions: Vec<Decision> =
            (0..7).map(|i| e.assess(&input(None, Some("d"), None, 100, T0 + i)).decision).collect();
        assert_eq!(decisions[..3], [Decision::Allow; 3]);
        assert_eq!(decisions[3..6], [Decision::Review; 3], "score 0.5 at 3 before");
        assert_eq!(decisions[6], Decision::Deny, "score 0.95 at 6 before");
        let off = engine(RiskRules { enabled: false, ..rules() }, Lists::default());
        let a = off.assess(&input(Some("u"), None, None, 999_999_999, T0));
        assert_eq!((a.decision, a.rules.len()), (Decision::Allow, 0));
        assert!(off.state().is_empty(), "nothing counted");
    }

    #[test]
    fn rules_that_cannot_work_are_refused() {
        let mut r = rules();
        r.velocity.push(r.velocity[0].clone());
        assert!(Policy::new(r, Lists::default(), 0).unwrap_err().contains("unique"));
        let mut r = rules();
        r.regions.push(Region { cidr: "1.0.1.128/25".into(), region: "X".into() });
        assert!(Policy::new(r, Lists::default(), 0).unwrap_err().contains("overlap"));
        let mut r = rules();
        r.limits[0].max_amount = Some("-1".into());
        assert!(Policy::new(r, Lists::default(), 0).is_err());
        let mut r = rules();
        r.distinct_users[0].max_users = 64;
        assert!(Policy::new(r, Lists::default(), 0).is_err());
    }

    proptest! {
        /// Whatever the payments, a decision is the most severe action among the rules
        /// that fired (ALLOW when none did), and the rules that decided come first.
        #[test]
        fn the_decision_is_the_most_severe_rule(
            payments in proptest::collection::vec((0usize..4, 0usize..3, 1i64..700_000, 0i64..40_000), 1..80)
        ) {
            let e = engine(rules(), Lists::default());
            let severity = |id: &str| match id {
                "limit.user.single" | "limit.user.day" | "velocity.device.1m" => Decision::Deny,
                _ => Decision::Review,
            };
            let mut now = T0;
            for (u, d, amount, gap) in payments {
                now += gap;
                let users = ["u0", "u1", "u2", "u3"];
                let devices = ["d0", "d1", "d2"];
                let a = e.assess(&input(users.get(u).copied(), devices.get(d).copied(), Some("1.0.1.1"), amount, now));
                let most = a.rules.iter().map(|r| severity(r)).max().unwrap_or(Decision::Allow);
                prop_assert_eq!(a.decision, most, "{:?}", a);
                prop_assert_eq!(a.rules.first().map(|r| severity(r)), (!a.rules.is_empty()).then_some(a.decision));
                prop_assert_eq!(a.reason.is_empty(), a.decision == Decision::Allow);
            }
        }
    }
}
