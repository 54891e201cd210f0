//! Notification delivery over HTTP(S): the transport the merchants' delivery actors
//! use, and its configuration (`[notify]`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use paygate_actors::breaker::BreakerPolicy;
use paygate_actors::notification::{Attempt, RetrySchedule};
use paygate_actors::notifier::NotifyPolicy;
use paygate_actors::ports::{BoxFuture, NotifyTransport, Outgoing};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::http::client::{ClientOptions, HttpClient};

/// `[notify]`: how merchants are notified.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NotifyConfig {
    /// Delays before the 2nd, 3rd, … attempt, millis, each from the previous attempt.
    pub retry_delays_ms: Vec<i64>,
    /// Fraction of each delay it may move either way.
    pub jitter: f64,
    /// Longest an attempt may take, millis (connect, send, answer).
    pub timeout_ms: u64,
    /// The most of a merchant's answer that is read, bytes.
    pub max_answer_bytes: usize,
    /// Deliveries in flight to one merchant at once.
    pub max_in_flight: usize,
    /// Notifications one merchant's actor holds in memory; more wait in the views.
    pub queue: usize,
    /// Consecutive failed attempts that open a merchant's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before its first probe, millis (doubling after
    /// each failed probe up to `breaker_max_open_ms`).
    pub breaker_open_ms: i64,
    /// The longest an open breaker waits, millis.
    pub breaker_max_open_ms: i64,
    /// A PEM file of further CAs to trust for `https://` notify URLs.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        let breaker = BreakerPolicy::default();
        let policy = NotifyPolicy::default();
        NotifyConfig {
            retry_delays_ms: RetrySchedule::default().delays_ms,
            jitter: RetrySchedule::default().jitter,
            timeout_ms: 5_000,
            max_answer_bytes: 64 * 1024,
            max_in_flight: policy.max_in_flight,
            queue: policy.queue,
            breaker_failures: breaker.failures_to_open,
            breaker_open_ms: breaker.open_ms,
            breaker_max_open_ms: breaker.max_open_ms,
            ca_file: None,
        }
    }
}

impl NotifyConfig {
    /// The delivery actors' policy; refuses settings that make no sense.
    pub fn policy(&self) -> Result<NotifyPolicy, ConfigError> {
        let bad = |what: &str| Err(ConfigError(format!("notify.{what}")));
        if self.retry_delays_ms.iter().any(|d| *d < 0) {
            return bad("retry_delays_ms must not be negative");
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return bad("jitter must be 0 to 0.5");
        }
        if self.timeout_ms == 0 || self.max_in_flight == 0 || self.queue == 0 || self.max_answer_bytes < 64 {
            return bad("timeout_ms, max_in_flight and queue must be positive and max_answer_bytes at least 64");
        }
        Ok(NotifyPolicy {
            schedule: RetrySchedule { delays_ms: self.retry_delays_ms.clone(), jitter: self.jitter },
            breaker: BreakerPolicy {
                failures_to_open: self.breaker_failures,
                open_ms: self.breaker_open_ms,
                max_open_ms: self.breaker_max_open_ms,
                probes: 1,
                ..BreakerPolicy::default()
            },
            max_in_flight: self.max_in_flight,
            queue: self.queue,
        })
    }
}

/// POSTs notifications: one client that connects only to public addresses, one for
/// merchants allowed private ones.
pub struct HttpNotifyTransport {
    public: HttpClient,
    private: HttpClient,
    timeout: Duration,
}

impl HttpNotifyTransport {
    /// The transport `config` describes.
    pub fn new(config: &NotifyConfig) -> Result<HttpNotifyTransport, ConfigError> {
        let options = |public_only| ClientOptions {
            ca_file: config.ca_file.clone(),
            public_only,
            max_answer: config.max_answer_bytes,
            ..ClientOptions::default()
        };
        let client = |public_only| {
            HttpClient::with(&options(public_only)).map_err(|e| ConfigError(format!("notify.ca_file: {e}")))
        };
        Ok(HttpNotifyTransport {
            public: client(true)?,
            private: client(false)?,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }
}

impl NotifyTransport for HttpNotifyTransport {
    fn deliver(&self, outgoing: Outgoing, started: i64) -> BoxFuture<Attempt> {
        let client = if outgoing.allow_private { self.private.clone() } else { self.public.clone() };
        let timeout = self.timeout;
        Box::pin(async move {
            let clock = Instant::now();
            let headers = [
                ("content-type", "application/json; charset=utf-8"),
                ("paygate-signature", outgoing.signature_header.as_str()),
                ("paygate-notify-id", outgoing.notify_id.as_str()),
                ("user-agent", "paygate-notify/1"),
            ];
            let answer = client.send(hyper::Method::POST, &outgoing.url, &headers, outgoing.body, timeout).await;
            let latency_ms = u32::try_from(clock.elapsed().as_millis()).unwrap_or(u32::MAX);
            match answer {
                Ok(a) => Attempt::answered(started, latency_ms, a.status, &a.body),
                Err(e) => Attempt::failed(started, latency_ms, e),
            }
        })
    }
}

/// The transport as the core sees it.
pub fn transport(config: &NotifyConfig) -> Result<Arc<dyn NotifyTransport>, ConfigError> {
    Ok(Arc::new(HttpNotifyTransport::new(config)?))
}
