//! Risk control (风控): every new payment is judged before it is routed — lists,
//! limits, velocity, distinct users, anomalies and a logistic score — and the decision,
//! with the rules that made it and their version, is kept with the order.
//!
//! Evaluation reads the rules in force without a lock worth the name (an `Arc` cloned
//! under a read lock) and the per-key state in one concurrent map; it allocates only
//! for the rules that fire.

pub mod engine;
pub mod lists;
pub mod model;
pub mod rules;
pub mod state;
pub mod window;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::money::Money;

pub use engine::{Policy, RiskEngine};

/// What risk looks at in a payment.
#[derive(Debug, Clone, Copy)]
pub struct RiskInput<'a> {
    /// The merchant.
    pub merchant_id: &'a str,
    /// The amount.
    pub amount: Money,
    /// The buyer at the merchant.
    pub user_id: Option<&'a str>,
    /// The buyer's device.
    pub device_id: Option<&'a str>,
    /// The buyer's address.
    pub client_ip: Option<IpAddr>,
    /// The buyer's card or payment account, as the merchant names it (a token, never a
    /// card number); matched against the lists only.
    pub account: Option<&'a str>,
    /// When, unix millis.
    pub now_ms: i64,
}

/// An operator's change to risk control, journaled before it takes effect; each one
/// makes the next version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RiskChange {
    /// The rules replaced whole, as JSON (text, so the rules may grow new fields and
    /// old records still read).
    Rules(String),
    /// An entry added to a list.
    ListAdded(lists::ListEntry),
    /// An entry removed from a list.
    ListRemoved(lists::ListEntry),
}

impl Policy {
    /// This policy with `change` applied, as the next version; or why it cannot be.
    pub fn changed(&self, change: &RiskChange) -> Result<Policy, String> {
        let mut rules = self.rules.clone();
        let mut lists = self.lists.clone();
        match change {
            RiskChange::Rules(json) => {
                rules = serde_json::from_str(json).map_err(|e| format!("risk rules: {e}"))?;
            }
            RiskChange::ListAdded(entry) => {
                lists.insert(entry.clone());
            }
            RiskChange::ListRemoved(entry) => {
                lists.remove(entry);
            }
        }
        Policy::new(rules, lists, self.version + 1)
    }
}

/// What risk decided, from the mildest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// The payment goes ahead.
    Allow,
    /// It goes ahead and waits for an operator in the review queue (or is refused, as
    /// configured).
    Review,
    /// It is refused: `RISK_REJECTED`.
    Deny,
}

impl Decision {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "ALLOW",
            Decision::Review => "REVIEW",
            Decision::Deny => "DENY",
        }
    }
}

/// A decision and why, as the order keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// The decision.
    pub decision: Decision,
    /// The ids of the rules that fired (`list.block.user_id`, `velocity.device.1m`,
    /// `risk.score`, …).
    pub rules: Vec<String>,
    /// What a merchant is told of a REVIEW or DENY ([`reason`]); empty for ALLOW.
    pub reason: String,
    /// The model's score, in millionths.
    pub score_ppm: u32,
    /// The version of the rules and lists that decided.
    pub version: u64,
}

/// The reasons a merchant is given for a refusal: what kind of rule refused, never
/// which rule or its numbers.
pub mod reason {
    /// On a block list.
    pub const BLOCKED: &str = "BLOCKED";
    /// Beyond a limit.
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
    /// Too many payments (velocity, distinct users).
    pub const TOO_MANY_PAYMENTS: &str = "TOO_MANY_PAYMENTS";
    /// An unusual amount or region.
    pub const UNUSUAL_PAYMENT: &str = "UNUSUAL_PAYMENT";
    /// The score.
    pub const HIGH_RISK: &str = "HIGH_RISK";
}
