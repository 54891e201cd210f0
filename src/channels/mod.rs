//! Channel adapters: one payment provider's wire protocol each, behind the
//! `ChannelConnector` port.

pub mod alipay;
pub mod unionpay;
pub mod wechat;

use paygate_actors::ports::ChannelError;

use crate::http::client::SendError;

/// A call to a provider that got no answer: `Unavailable` when the request certainly
/// never reached it (another channel may then be tried at once), else `Unknown`.
pub fn unanswered(what: &str, e: SendError) -> ChannelError {
    if e.not_sent {
        ChannelError::Unavailable(format!("{what}: {e}"))
    } else {
        ChannelError::Unknown(format!("{what}: {e}"))
    }
}

/// A provider's answer with an HTTP status other than the protocol's: 503 says the
/// request was not taken up (the channel is unavailable); anything else leaves the
/// outcome unknown.
pub fn bad_status(what: &str, status: u16) -> ChannelError {
    if status == 503 {
        ChannelError::Unavailable(format!("{what}: HTTP 503"))
    } else {
        ChannelError::Unknown(format!("{what}: HTTP {status}"))
    }
}
