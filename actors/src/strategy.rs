//! Routing strategies: how the channels that may take a payment are ordered, and the
//! decision an order keeps of how its channel was chosen.

use serde::{Deserialize, Serialize};

/// How the channels that may take a payment are ordered. Whatever the strategy, every
/// eligible channel is in the order, so the later ones are the fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Highest weight first (ties: configuration order).
    #[default]
    Priority,
    /// One drawn at random in proportion to its weight first, then the rest by weight:
    /// traffic shared between channels.
    Weighted,
    /// The lowest fee rate first (ties: by weight).
    LowestFee,
    /// The best recent success rate first, then the lowest p95 latency (ties: by weight).
    /// A channel with too few recent calls to judge counts as fully successful, so a new
    /// or recovered channel is tried.
    Adaptive,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 4] = [Strategy::Priority, Strategy::Weighted, Strategy::LowestFee, Strategy::Adaptive];

    /// The strategy named `name` ([`Strategy::as_str`]).
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The configuration and wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::Weighted => "weighted",
            Strategy::LowestFee => "lowest_fee",
            Strategy::Adaptive => "adaptive",
        }
    }
}

/// How an order's channel was chosen, kept with the order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Route {
    /// The strategy that ordered the channels.
    pub strategy: Strategy,
    /// The channels that could take the payment, in the order they were to be tried.
    pub candidates: Vec<String>,
    /// The channels tried before the order's, each with why it was passed over.
    pub passed_over: Vec<String>,
}
