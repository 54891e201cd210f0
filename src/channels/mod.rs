//! Channel adapters: one payment provider's wire protocol each, behind the
//! `ChannelConnector` port.

pub mod alipay;
pub mod unionpay;
pub mod wechat;
