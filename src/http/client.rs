//! The outbound HTTP client (channel calls, sandbox callbacks, the CLI): one pooled
//! hyper client, every call bounded by a timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The largest answer a channel call reads: a day's bill file fits many times over; a
/// peer that sends more is not a payment provider behaving, and is not held in memory.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// A pooled HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Header names (lowercase) and values; values that are not text are left out.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Bytes,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A new client.
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        HttpClient { inner }
    }

    /// Sends `method url` with `body`; fails on transport errors and on timeout.
    pub async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| format!("bad request: {e}"))?;
        let call = async {
            let resp = self.inner.request(req).await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: answer unreadable or over {MAX_ANSWER_BYTES} bytes: {e}"))?
                .to_bytes();
            Ok(Answer { status, headers, body })
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    }

    /// POSTs a body of `content_type`.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        self.send(hyper::Method::POST, url, &[("content-type", content_type)], body, timeout).await
    }
}
