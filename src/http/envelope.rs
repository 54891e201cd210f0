//! The API envelope and the one mapping from errors to codes and HTTP statuses.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use paygate_actors::error::{CoreError, ErrorCode};
use serde_json::json;

/// A response body: whole (every API answer), or streamed in chunks (a bill file).
pub type Body = http_body_util::Either<Full<Bytes>, UnsyncBoxBody<Bytes, std::convert::Infallible>>;

/// The response type of every handler.
pub type HttpResponse = Response<Body>;

/// Every way a request can fail at the HTTP layer.
#[derive(Debug)]
pub enum ApiError {
    /// A refusal or failure from the core (carries its stable code).
    Core(CoreError),
    /// The body is larger than allowed.
    TooLarge(usize),
    /// No such endpoint.
    NotFound,
    /// The endpoint exists with other methods: these (the `Allow` header).
    MethodNotAllowed(&'static str),
    /// The admin token is missing or wrong.
    Unauthorized,
    /// A request rate limit is reached (429 with `Retry-After`).
    RateLimited {
        /// How long until a request would be taken.
        retry_after: std::time::Duration,
        /// Whose limit, as the message says it ("the node's", "this merchant's").
        scope: &'static str,
    },
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        ApiError::Core(e)
    }
}

/// The HTTP status of a code.
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
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::SystemBusy => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::MethodNotAllowed(allow) => {
                let message = format!("this endpoint takes {allow}");
                let mut resp = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({ "code": "METHOD_NOT_ALLOWED", "message": message }),
                );
                resp.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
                return resp;
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "admin token missing or wrong".into()),
            ApiError::RateLimited { retry_after, scope } => {
                // Whole seconds, rounded up: never "retry now" while still limited.
                let secs = retry_after.as_micros().div_ceil(1_000_000).max(1);
                let message = format!("{scope} request rate limit is reached; retry after {secs} s");
                let body = json!({ "code": ErrorCode::RateLimited.as_str(), "message": message });
                let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)));
                return resp;
            }
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

impl<'a, T> Success<'a, T> {
    fn of(data: &'a T) -> Self {
        Success { code: "SUCCESS", message: "success", data }
    }
}

/// `{"code":"SUCCESS","message":"success","data":…}`, serialized straight from `data`.
pub fn success<T: serde::Serialize>(data: &T) -> HttpResponse {
    success_from(success_bytes(data))
}

/// The body of [`success`].
pub fn success_bytes<T: serde::Serialize>(data: &T) -> Bytes {
    Bytes::from(json_bytes(&Success::of(data)))
}

/// The body of [`success`], to keep: its bytes take no more room than they need.
pub fn success_body<T: serde::Serialize>(data: &T) -> Bytes {
    let mut bytes = json_bytes(&Success::of(data));
    bytes.shrink_to_fit();
    Bytes::from(bytes)
}

/// A kept answer (see [`success_body`]) as a response.
pub fn success_from(body: Bytes) -> HttpResponse {
    with_body(StatusCode::OK, JSON, body)
}

/// Any JSON body.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> HttpResponse {
    with_body(status, JSON, json_bytes(body))
}

const JSON: &str = "application/json; charset=utf-8";

fn json_bytes<T: serde::Serialize + ?Sized>(body: &T) -> Vec<u8> {
    // An order's answer is 600-700 bytes: start there instead of growing to it.
    let mut bytes = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
    }
    bytes
}

/// A value shown in an answer through its `Display` (amounts, times, URLs), formatted
/// on the stack and escaped once, instead of into a `String` first (an allocation) or
/// straight through `collect_str` (which escapes every small piece on its own).
#[derive(Debug, Clone, Copy)]
pub struct Shown<T>(pub T);

impl<T: std::fmt::Display> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut text = StackText { bytes: [0; 128], len: 0 };
        match write!(text, "{}", self.0) {
            Ok(()) => s.serialize_str(text.as_str()),
            // Longer than the buffer: stream it.
            Err(_) => s.collect_str(&self.0),
        }
    }
}

/// Text formatted into a fixed buffer; a write that does not fit fails.
struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn as_str(&self) -> &str {
        // Only whole `str`s are ever appended, so the bytes are UTF-8.
        self.bytes.get(..self.len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(std::fmt::Error)?;
        self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Any body.
pub fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(http_body_util::Either::Left(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A 200 whose body is the chunks `chunks` yields, sent as they come (chunked): the
/// answer starts before the whole body exists, and never all of it is in memory.
pub fn streamed(content_type: &'static str, chunks: tokio::sync::mpsc::Receiver<Bytes>) -> HttpResponse {
    let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)), rx))
    });
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut resp = Response::new(http_body_util::Either::Right(body));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_json_strings_whatever_their_length() {
        let short = serde_json::to_string(&Shown("a\"b")).unwrap();
        assert_eq!(short, r#""a\"b""#);
        let long = "x\"".repeat(100);
        let shown = serde_json::to_string(&Shown(&long)).unwrap();
        assert_eq!(shown, serde_json::to_string(&long).unwrap());
    }
}
