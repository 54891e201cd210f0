//! The outbound HTTP client (channel calls, sandbox callbacks, the CLI): one pooled
//! hyper client, every call bounded by a timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ssrf::GuardedResolver;

/// The largest answer a channel call reads: a day's bill file fits many times over; a
/// peer that sends more is not a payment provider behaving, and is not held in memory.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// A pooled HTTP/1 client for `http://` and `https://` (rustls with its ring provider;
/// the webpki roots and, optionally, the CAs of a PEM file).
#[derive(Clone)]
pub struct HttpClient {
    inner: Inner,
    max_answer: usize,
    public_only: bool,
}

/// The pooled client: with TLS, or — only if TLS could not be set up, which the
/// compiled-in roots and provider rule out — plain HTTP, refusing `https://`.
#[derive(Clone)]
enum Inner {
    Tls(Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>),
    Plain(Client<HttpConnector<GuardedResolver>, Full<Bytes>>, String),
}

/// How a client is built.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// A PEM file of further CA certificates to trust (a private CA, a test one).
    pub ca_file: Option<std::path::PathBuf>,
    /// Further CA certificates to trust, PEM text (the simulator's, made at its start).
    pub ca_pem: Option<String>,
    /// Connect only to public addresses ([`crate::http::ssrf`]).
    pub public_only: bool,
    /// The largest answer read; 0: [`MAX_ANSWER_BYTES`].
    pub max_answer: usize,
    /// The certificate and key to present when a server asks for one (mutual TLS).
    pub identity: Option<ClientIdentity>,
}

/// A client certificate for mutual TLS, e.g. a WeChat Pay merchant's API certificate.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate, then any intermediates, PEM.
    pub certificate_pem: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("private_key_pem", &"<redacted>").finish_non_exhaustive()
    }
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

/// A call that got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// What happened, with its causes.
    pub message: String,
    /// True when the request certainly never reached the peer: the connection (or its
    /// TLS handshake) could not be made, or the request was refused before sending.
    pub not_sent: bool,
}

impl SendError {
    fn not_sent(message: String) -> SendError {
        SendError { message, not_sent: true }
    }

    fn lost(message: String) -> SendError {
        SendError { message, not_sent: false }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SendError> for String {
    fn from(e: SendError) -> String {
        e.message
    }
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

/// The TLS configuration: rustls on ring, TLS 1.2 and 1.3, webpki roots plus `ca_file`
/// and `ca_pem`, presenting `identity` when a server asks for a certificate.
fn tls_config(
    ca_file: Option<&std::path::Path>,
    ca_pem: Option<&str>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = ca_pem {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA certificate: {e}"))?;
        }
    }
    if let Some(path) = ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let Some(identity) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(identity.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client certificate: {e}"))?;
    if chain.is_empty() {
        return Err("client certificate: no PEM certificate in it".into());
    }
    // Its error would name nothing of the key; say only which setting is wrong.
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(identity.private_key_pem.as_bytes())
        .map_err(|_| "client private key: not a PEM private key".to_owned())?;
    builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate and key: {e}"))
}

impl HttpClient {
    /// A client that trusts the webpki roots and may connect anywhere.
    pub fn new() -> HttpClient {
        let options = ClientOptions::default();
        let http = HttpClient::connector(&options);
        let inner = match tls_config(None, None, None) {
            Ok(tls) => HttpClient::tls(http, tls),
            Err(e) => {
                tracing::error!(error = %e, "TLS is unavailable; https:// calls will fail");
                Inner::Plain(HttpClient::pool().build(http), e)
            }
        };
        HttpClient { inner, max_answer: MAX_ANSWER_BYTES, public_only: false }
    }

    /// A client built as `options` say; fails on an unreadable CA file.
    pub fn with(options: &ClientOptions) -> Result<HttpClient, String> {
        let tls = tls_config(options.ca_file.as_deref(), options.ca_pem.as_deref(), options.identity.as_ref())?;
        let inner = HttpClient::tls(HttpClient::connector(options), tls);
        let max_answer = if options.max_answer == 0 { MAX_ANSWER_BYTES } else { options.max_answer };
        Ok(HttpClient { inner, max_answer, public_only: options.public_only })
    }

    fn connector(options: &ClientOptions) -> HttpConnector<GuardedResolver> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { public_only: options.public_only });
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        http
    }

    fn pool() -> hyper_util::client::legacy::Builder {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        builder
    }

    fn tls(http: HttpConnector<GuardedResolver>, tls: rustls::ClientConfig) -> Inner {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Inner::Tls(HttpClient::pool().build(https))
    }

    /// Sends `method url` with `body`; fails on transport errors and on timeout, saying
    /// whether the request certainly never left.
    pub async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        if self.public_only {
            // A literal address is not resolved, so the resolver cannot refuse it.
            let host = super::ssrf::host_of(url).map_err(SendError::not_sent)?;
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                if let Some(why) = super::ssrf::forbidden(ip) {
                    return Err(SendError::not_sent(format!("{url}: {ip} is a {why} address")));
                }
            }
        }
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req =
            req.body(Full::new(Bytes::from(body))).map_err(|e| SendError::not_sent(format!("bad request: {e}")))?;
        let call = async {
            let sent = match &self.inner {
                Inner::Tls(client) => client.request(req).await,
                Inner::Plain(_, why) if url.starts_with("https:") => {
                    return Err(SendError::not_sent(format!("{url}: {why}")))
                }
                Inner::Plain(client, _) => client.request(req).await,
            };
            // A connect error (refused, unreachable, TLS handshake) is the one failure
            // after which the peer certainly has not seen the request.
            let resp = sent.map_err(|e| {
                let message = format!("{url}: {}", error_chain(&e));
                if e.is_connect() {
                    SendError::not_sent(message)
                } else {
                    SendError::lost(message)
                }
            })?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let max = self.max_answer;
            let body = http_body_util::Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|e| SendError::lost(format!("{url}: answer unreadable or over {max} bytes: {e}")))?
                .to_bytes();
            Ok(Answer { status, headers, body })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| SendError::lost(format!("{url}: no answer within {timeout:?}")))?
    }

    /// POSTs a body of `content_type`.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        self.send(hyper::Method::POST, url, &[("content-type", content_type)], body, timeout).await
    }
}

/// An error with its causes: hyper's own message ("client error (Connect)") hides the
/// reason (refused, a certificate not trusted, an address the guard refused).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
