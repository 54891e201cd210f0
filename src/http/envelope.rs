//! The API envelope and the one mapping from errors to codes and HTTP statuses.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use paygate_actors::error::{CoreError, ErrorCode};
use serde_json::json;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Every way a request can fail at the HTTP layer.
#[derive(Debug)]
pub enum ApiError {
    /// A refusal or failure from the core (carries its stable code).
    Core(CoreError),
    /// The body is larger than allowed.
    TooLarge(usize),
    /// No such endpoint.
    NotFound,
    /// The endpoint exists with another method.
    MethodNotAllowed,
    /// The admin token is missing or wrong.
    Unauthorized,
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        ApiError::Core(e)
    }
}

/// The HTTP status of a code (SPEC F2).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidParam => StatusCode::BAD_REQUEST,
        ErrorCode::SignError | ErrorCode::TimestampExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::MerchantDisabled | ErrorCode::RiskRejected => StatusCode::FORBIDDEN,
        ErrorCode::MerchantNotFound | ErrorCode::OrderNotFound => StatusCode::NOT_FOUND,
        ErrorCode::IdempotencyConflict => StatusCode::CONFLICT,
        ErrorCode::OrderStatusError | ErrorCode::RefundExceedsPaid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ChannelError => StatusCode::BAD_GATEWAY,
        ErrorCode::NoAvailableChannel => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::SystemError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The error as an envelope response.
    pub fn into_response(self) -> HttpResponse {
        let (status, code, message) = match self {
            ApiError::Core(e) => (status_of(e.code), e.code.as_str(), e.message.into_owned()),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::InvalidParam.as_str(),
                format!("request body exceeds {limit} bytes"),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint".into()),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "method not allowed here".into())
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "admin token missing or wrong".into()),
        };
        let mut resp = json_response(status, &json!({ "code": code, "message": message }));
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[derive(serde::Serialize)]
struct Success<'a, T> {
    code: &'static str,
    message: &'static str,
    data: &'a T,
}

/// `{"code":"SUCCESS","message":"success","data":…}`, serialized straight from `data`.
pub fn success<T: serde::Serialize>(data: &T) -> HttpResponse {
    json_response(StatusCode::OK, &Success { code: "SUCCESS", message: "success", data })
}

/// Any JSON body.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> HttpResponse {
    // An order's answer is 600-700 bytes: start there instead of growing to it.
    let mut bytes = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
    }
    with_body(status, "application/json; charset=utf-8", bytes)
}

/// A value shown in an answer through its `Display` (amounts, times, URLs), written
/// straight into the JSON string instead of into a `String` first.
#[derive(Debug, Clone, Copy)]
pub struct Shown<T>(pub T);

impl<T: std::fmt::Display> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Any body.
pub fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
