//! `paygate receiver`: a small merchant-side endpoint for notifications. It verifies
//! both signatures (the `sign` field, as the merchant's own requests are signed, and the
//! `Paygate-Signature` header over the raw body), answers `SUCCESS` when both hold and
//! prints one JSON line per notification. For trying the gateway, and as a model of
//! what a merchant's receiver must check.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paygate_actors::clock::Clock;
use paygate_actors::clock::SystemClock;
use paygate_actors::signing::{self, SignType};

/// How far a `Paygate-Signature` timestamp may be from this machine's clock, seconds.
pub const TOLERANCE_SECS: i64 = 300;
const MAX_BODY: usize = 64 * 1024;

/// What a notification's checks found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The body's fields, when it is a JSON object of strings.
    pub fields: Option<BTreeMap<String, String>>,
    /// Why it is not to be believed; `None` when both signatures hold.
    pub refusal: Option<String>,
}

/// Checks a notification `body` with its `Paygate-Signature` `header` against `secret`
/// at `now_secs`.
pub fn verify(secret: &str, header: Option<&str>, body: &[u8], now_secs: i64) -> Verdict {
    let Ok(fields) = serde_json::from_slice::<BTreeMap<String, String>>(body) else {
        return Verdict { fields: None, refusal: Some("the body is not a JSON object of strings".into()) };
    };
    let sign_type = match fields.get("sign_type").map(String::as_str) {
        None => Some(SignType::HmacSha256),
        Some(t) => SignType::parse(t),
    };
    let refusal = match (sign_type, header) {
        (None, _) => Some("unknown sign_type".to_owned()),
        (Some(st), _) if !signing::verify(&fields, secret, st) => Some("the sign field does not verify".to_owned()),
        (_, None) => Some("no Paygate-Signature header".to_owned()),
        (_, Some(h)) if !signing::verify_payload_signature(secret, h, body, now_secs, TOLERANCE_SECS) => {
            Some("the Paygate-Signature header does not verify (or is too old)".to_owned())
        }
        _ => None,
    };
    Verdict { fields: Some(fields), refusal }
}

async fn answer(secret: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = req.headers().get("paygate-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "FAIL: body too large"),
    };
    let now = SystemClock.now_ms() / 1000;
    let verdict = verify(secret, header.as_deref(), &body, now);
    let line = serde_json::json!({
        "verified": verdict.refusal.is_none(),
        "refusal": verdict.refusal,
        "notification": verdict.fields,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    match verdict.refusal {
        None => reply(StatusCode::OK, "SUCCESS"),
        Some(why) => reply(StatusCode::BAD_REQUEST, &format!("FAIL: {why}")),
    }
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_owned())));
    *resp.status_mut() = status;
    resp
}

/// Serves on `listen` until interrupted.
pub fn run(listen: &str, secret: String) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("paygate receiver: listening on http://{addr}/ (answers SUCCESS to notifications that verify)");
        let secret: std::sync::Arc<str> = secret.into();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted.map_err(|e| e.to_string())?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let secret = std::sync::Arc::clone(&secret);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let secret = std::sync::Arc::clone(&secret);
                    async move { Ok::<_, Infallible>(answer(&secret, req).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use paygate_actors::signing::payload_signature_header;

    fn signed(secret: &str, st: SignType) -> Vec<u8> {
        let mut p: BTreeMap<String, String> =
            [("notify_id", "P1-2"), ("status", "SUCCESS"), ("sign_type", st.as_str())]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let s = signing::sign(&p, secret, st);
        p.insert("sign".into(), s);
        serde_json::to_vec(&p).unwrap()
    }

    #[test]
    fn both_signatures_must_hold() {
        let body = signed("k", SignType::HmacSha256);
        let header = payload_signature_header("k", 1000, &body);
        assert_eq!(verify("k", Some(&header), &body, 1000).refusal, None);
        assert!(verify("k", None, &body, 1000).refusal.unwrap().contains("no Paygate-Signature"));
        assert!(verify("k", Some(&header), &body, 1000 + 301).refusal.unwrap().contains("too old"));
        assert!(verify("other", Some(&header), &body, 1000).refusal.unwrap().contains("sign field"));
        let mut tampered = body.clone();
        tampered.extend_from_slice(b" ");
        assert!(verify("k", Some(&header), &tampered, 1000).refusal.unwrap().contains("header"));
        let md5 = signed("k", SignType::Md5);
        assert_eq!(verify("k", Some(&payload_signature_header("k", 5, &md5)), &md5, 5).refusal, None);
    }
}
