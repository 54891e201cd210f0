//! The one error type of the core. The HTTP layer maps it to the API envelope once.

use std::borrow::Cow;

/// The stable API error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A parameter is missing or breaks a rule.
    InvalidParam,
    /// The signature does not match.
    SignError,
    /// The timestamp is outside the accepted window, or a nonce was replayed.
    TimestampExpired,
    /// No such merchant.
    MerchantNotFound,
    /// The merchant exists but may not transact.
    MerchantDisabled,
    /// No such order for this merchant.
    OrderNotFound,
    /// The key was used before with other parameters.
    IdempotencyConflict,
    /// The order's state does not allow the operation.
    OrderStatusError,
    /// A refund would exceed what was paid.
    RefundExceedsPaid,
    /// Risk control denied the payment.
    RiskRejected,
    /// No channel can take the payment.
    NoAvailableChannel,
    /// Too many requests.
    RateLimited,
    /// The channel refused or failed to answer.
    ChannelError,
    /// Our own failure.
    SystemError,
    /// The node's disk is full: writes are refused until an operator frees space; reads
    /// go on.
    StorageFull,
    /// The part of the node that holds this order is saturated: retry shortly.
    SystemBusy,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidParam,
        ErrorCode::SignError,
        ErrorCode::TimestampExpired,
        ErrorCode::MerchantNotFound,
        ErrorCode::MerchantDisabled,
        ErrorCode::OrderNotFound,
        ErrorCode::IdempotencyConflict,
        ErrorCode::OrderStatusError,
        ErrorCode::RefundExceedsPaid,
        ErrorCode::RiskRejected,
        ErrorCode::NoAvailableChannel,
        ErrorCode::RateLimited,
        ErrorCode::ChannelError,
        ErrorCode::SystemError,
        ErrorCode::StorageFull,
        ErrorCode::SystemBusy,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidParam => "INVALID_PARAM",
            ErrorCode::SignError => "SIGN_ERROR",
            ErrorCode::TimestampExpired => "TIMESTAMP_EXPIRED",
            ErrorCode::MerchantNotFound => "MERCHANT_NOT_FOUND",
            ErrorCode::MerchantDisabled => "MERCHANT_DISABLED",
            ErrorCode::OrderNotFound => "ORDER_NOT_FOUND",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::OrderStatusError => "ORDER_STATUS_ERROR",
            ErrorCode::RefundExceedsPaid => "REFUND_EXCEEDS_PAID",
            ErrorCode::RiskRejected => "RISK_REJECTED",
            ErrorCode::NoAvailableChannel => "NO_AVAILABLE_CHANNEL",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ChannelError => "CHANNEL_ERROR",
            ErrorCode::SystemError => "SYSTEM_ERROR",
            ErrorCode::StorageFull => "STORAGE_FULL",
            ErrorCode::SystemBusy => "SYSTEM_BUSY",
        }
    }
}

/// A refusal or failure with its code and a message fit for the merchant to read.
/// Messages never carry secrets or internal detail beyond what helps fix the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct CoreError {
    /// The stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: Cow<'static, str>,
}

impl CoreError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> CoreError {
        CoreError { code, message: message.into() }
    }

    /// `INVALID_PARAM` naming the field and the rule it broke.
    pub fn invalid(field: &str, rule: impl std::fmt::Display) -> CoreError {
        CoreError::new(ErrorCode::InvalidParam, format!("{field} {rule}"))
    }

    /// `SYSTEM_ERROR`; the detail is logged by the caller, not sent.
    pub fn system(message: impl Into<Cow<'static, str>>) -> CoreError {
        CoreError::new(ErrorCode::SystemError, message)
    }

    /// `ORDER_NOT_FOUND`: also the answer about another merchant's order.
    pub fn order_not_found() -> CoreError {
        CoreError::new(ErrorCode::OrderNotFound, "no such order")
    }

    /// `STORAGE_FULL`: nothing was recorded; the same request succeeds once space is freed.
    pub fn storage_full() -> CoreError {
        CoreError::new(
            ErrorCode::StorageFull,
            "the gateway's storage is full; nothing was recorded, retry the same request later",
        )
    }

    /// `SYSTEM_BUSY`: the order's shard has as much queued as it takes; nothing was done.
    pub fn shard_busy() -> CoreError {
        CoreError::new(ErrorCode::SystemBusy, "the gateway is busy; nothing was done, retry shortly")
    }

    /// The node is saturated: the caller should back off and retry.
    pub fn overloaded() -> CoreError {
        CoreError::new(ErrorCode::RateLimited, "the node is at capacity; retry shortly")
    }
}

/// Result with [`CoreError`].
pub type CoreResult<T> = Result<T, CoreError>;
