//! The rules risk applies, as configured in `config/risk.toml` and changed by operators:
//! limits, velocity, distinct users, anomalies, regions and the score model.

use serde::{Deserialize, Serialize};

use super::model::Model;
use super::window::DISTINCT_CAP;
use crate::money::{Currency, Money};

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The payment goes to review.
    Review,
    /// The payment is refused.
    Deny,
}

/// What REVIEW does to the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewAction {
    /// It goes ahead, and waits in the review queue for an operator.
    #[default]
    Allow,
    /// It is refused like a DENY.
    Deny,
}

/// Whose payments a limit adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The buyer's (`user_id`; a payment without one is not limited by it).
    User,
    /// The merchant's.
    Merchant,
}

/// Over what a limit adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One payment.
    Single,
    /// A business day (Beijing time).
    Day,
    /// A calendar month (Beijing time).
    Month,
}

/// A limit on amount and/or count, in one currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The rule id decisions name.
    pub id: String,
    /// Whose payments.
    pub scope: Scope,
    /// Over what.
    pub period: Period,
    /// The currency it is in; payments in others are not limited by it.
    pub currency: Currency,
    /// The most the payments may add up to (major units, e.g. `"50000.00"`).
    #[serde(default)]
    pub max_amount: Option<String>,
    /// The most payments.
    #[serde(default)]
    pub max_count: Option<u32>,
    /// What happens beyond it.
    pub action: Action,
}

/// What velocity and distinct-user rules count by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The buyer's `user_id`.
    UserId,
    /// The buyer's `device_id`.
    DeviceId,
    /// The buyer's `client_ip`.
    ClientIp,
}

/// The sliding windows velocity is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// The last minute.
    #[serde(rename = "1m")]
    Minute,
    /// The last hour.
    #[serde(rename = "1h")]
    Hour,
    /// The last day.
    #[serde(rename = "1d")]
    Day,
}

/// Too many payments, or too much, from one key within a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    /// The rule id.
    pub id: String,
    /// Counted by.
    pub key: KeyKind,
    /// Over.
    pub window: Window,
    /// Fires on the payment that would exceed this many.
    #[serde(default)]
    pub max_count: Option<u32>,
    /// Fires on the payment that would exceed this amount (major units, any currency's
    /// minor units added as they are: keep one currency per key).
    #[serde(default)]
    pub max_amount: Option<String>,
    /// What happens then.
    pub action: Action,
}

/// Too many distinct users behind one device or address in a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistinctUsers {
    /// The rule id.
    pub id: String,
    /// Counted by (`device_id` or `client_ip`).
    pub key: KeyKind,
    /// Fires on a new user beyond this many.
    pub max_users: u32,
    /// What happens then.
    pub action: Action,
}

/// Amounts far above the norm, and payments from unusual regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    /// Deviations (of the log amount) above the norm that count as far above it.
    pub amount_z: f64,
    /// Payments a user or merchant must have made before its norm is trusted.
    pub min_history: u32,
    /// What an amount far above the user's norm does (none: nothing).
    #[serde(default)]
    pub user_amount: Option<Action>,
    /// What an amount far above the merchant's norm does.
    #[serde(default)]
    pub merchant_amount: Option<Action>,
    /// What a payment from another region than the user's last does.
    #[serde(default)]
    pub region_change: Option<Action>,
}

impl Default for Anomaly {
    fn default() -> Self {
        Anomaly { amount_z: 4.0, min_history: 5, user_amount: None, merchant_amount: None, region_change: None }
    }
}

/// One row of the IP → region table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// The range.
    pub cidr: String,
    /// Its region, e.g. `CN-SH`.
    pub region: String,
}

/// Every rule, as one versioned whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskRules {
    /// Off: every payment is ALLOW and nothing is counted.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What REVIEW does.
    #[serde(default)]
    pub review: ReviewAction,
    /// Limits.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Velocity rules.
    #[serde(default)]
    pub velocity: Vec<Velocity>,
    /// Distinct-user rules.
    #[serde(default)]
    pub distinct_users: Vec<DistinctUsers>,
    /// Anomaly rules.
    #[serde(default)]
    pub anomaly: Anomaly,
    /// The IP → region table (private addresses have no region).
    #[serde(default)]
    pub regions: Vec<Region>,
    /// The score.
    #[serde(default)]
    pub model: Model,
}

fn yes() -> bool {
    true
}

impl Default for RiskRules {
    fn default() -> Self {
        RiskRules {
            enabled: true,
            review: ReviewAction::default(),
            limits: Vec::new(),
            velocity: Vec::new(),
            distinct_users: Vec::new(),
            anomaly: Anomaly::default(),
            regions: Vec::new(),
            model: Model::default(),
        }
    }
}

/// An amount in major units of `currency`, as a limit states it.
pub fn minor_of(text: &str, currency: Currency, what: &str) -> Result<i64, String> {
    let money = Money::parse_positive(text, currency, i64::MAX).map_err(|e| format!("{what}: {text:?} {e}"))?;
    Ok(money.minor())
}

impl RiskRules {
    /// Why these rules cannot be applied, if they cannot: every id unique and
    /// non-empty, every limit with something to limit, amounts readable, thresholds
    /// within what the counters count.
    pub fn check(&self) -> Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        let all_ids = self
            .limits
            .iter()
            .map(|l| &l.id)
            .chain(self.velocity.iter().map(|v| &v.id))
            .chain(self.distinct_users.iter().map(|d| &d.id));
        for id in all_ids {
            if id.is_empty() || id.len() > 64 || !ids.insert(id.as_str()) {
                return Err(format!("risk rule id {id:?}: ids are 1-64 characters and unique"));
            }
        }
        for l in &self.limits {
            if l.max_amount.is_none() && l.max_count.is_none() {
                return Err(format!("risk limit {}: give max_amount, max_count or both", l.id));
            }
            if l.period == Period::Single && l.max_count.is_some() {
                return Err(format!("risk limit {}: a single payment has no count", l.id));
            }
            if let Some(a) = &l.max_amount {
                minor_of(a, l.currency, &format!("risk limit {}", l.id))?;
            }
        }
        for v in &self.velocity {
            if v.max_amount.is_none() && v.max_count.is_none() {
                return Err(format!("risk velocity {}: give max_count, max_amount or both", v.id));
            }
            if let Some(a) = &v.max_amount {
                minor_of(a, Currency::CNY, &format!("risk velocity {}", v.id))?;
            }
        }
        for d in &self.distinct_users {
            if d.key == KeyKind::UserId || d.max_users == 0 || d.max_users as usize >= DISTINCT_CAP {
                return Err(format!(
                    "risk distinct_users {}: key is device_id or client_ip, max_users 1..{}",
                    d.id,
                    DISTINCT_CAP - 1
                ));
            }
        }
        if !(self.anomaly.amount_z.is_finite() && self.anomaly.amount_z > 0.0) {
            return Err("risk.anomaly.amount_z must be a positive number".into());
        }
        self.model.check()
    }
}
