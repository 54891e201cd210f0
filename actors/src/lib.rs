//! paygate-actors: the transaction core of paygate.
//!
//! Money, ids, the order / merchant / channel state machines and the actors that own
//! them, shard supervisors and the registry, and the ports (traits) through which the
//! core reaches storage, channels and time. It does no I/O of its own.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
#![warn(missing_docs)]

pub mod breaker;
pub mod channel;
pub mod channel_actor;
pub mod channel_selection;
pub mod clock;
pub mod daily_volume;
pub mod error;
pub mod ids;
pub mod merchant;
pub mod money;
pub mod notification;
pub mod notifier;
pub mod order;
pub mod order_actor;
pub mod order_router;
pub mod ports;
pub mod rate_limit;
pub mod read_cache;
pub mod refund;
pub mod registry;
pub mod risk;
pub mod shard;
pub mod shared_order;
pub mod signing;
pub mod strategy;
pub mod time_fmt;
pub mod timers;
