//! paygate: the adapters around the transaction core — HTTP API (hyper), storage
//! (journal + sled), channel connectors and their simulator, configuration and CLI.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod channels;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod http;
pub mod load;
pub mod node;
pub mod notify;
pub mod qr;
pub mod receiver;
pub mod risk_train;
pub mod sandbox;
pub mod secrets;
pub mod sim;
pub mod storage;
pub use paygate_actors::time_fmt;
