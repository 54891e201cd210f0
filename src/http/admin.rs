//! The admin API (bearer token): for now, driving the sandbox channel.

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use paygate_actors::error::{CoreError, ErrorCode};
use serde_json::json;
use subtle::ConstantTimeEq;

use paygate_actors::notifier::ResendWhat;

use super::envelope::{success, ApiError, HttpResponse};
use super::App;
use crate::sandbox::{SandboxError, SandboxSettings};

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let given =
        headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(app.admin_token.as_bytes())) && !given.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn sandbox_error(e: SandboxError) -> ApiError {
    let code = match e {
        SandboxError::UnknownTrade(_) => ErrorCode::OrderNotFound,
        SandboxError::NotOpen(_) => ErrorCode::OrderStatusError,
    };
    ApiError::Core(CoreError::new(code, e.to_string()))
}

/// `/admin/sandbox/…`: `orders/{id}/pay|fail|hang` and `settings` (GET or POST).
pub async fn sandbox(
    app: &App,
    method: &hyper::Method,
    rest: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    authorize(app, headers)?;
    let sandbox = app.sandbox.as_ref().ok_or(ApiError::NotFound)?;
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        (&hyper::Method::GET, ["settings"]) => Ok(success(&sandbox.settings())),
        (&hyper::Method::POST, ["settings"]) => {
            let settings: SandboxSettings = serde_json::from_slice(body)
                .map_err(|e| CoreError::invalid("body", format_args!("is not sandbox settings ({e})")))?;
            sandbox.set_settings(settings).map_err(|e| CoreError::invalid("settings", e))?;
            Ok(success(&sandbox.settings()))
        }
        (&hyper::Method::POST, ["orders", id, action]) => {
            match *action {
                "pay" => sandbox.pay(id),
                "fail" => {
                    let reason = serde_json::from_slice::<serde_json::Value>(body)
                        .ok()
                        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| "declined by the sandbox".into());
                    sandbox.fail(id, &reason)
                }
                "hang" => sandbox.hang(id),
                _ => return Err(ApiError::NotFound),
            }
            .map_err(sandbox_error)?;
            Ok(success(&json!({ "pay_order_no": id, "action": action })))
        }
        (_, ["settings"] | ["orders", _, _]) => Err(ApiError::MethodNotAllowed("POST")),
        _ => Err(ApiError::NotFound),
    }
}

/// `POST /admin/notify/resend` with `{"merchant_id": …}`: sends every DEAD notification
/// of the merchant again now (after its endpoint's outage, say).
pub async fn notify_resend(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<HttpResponse, ApiError> {
    authorize(app, headers)?;
    let merchant_id = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("merchant_id").and_then(|m| m.as_str()).map(str::to_owned))
        .ok_or_else(|| CoreError::invalid("merchant_id", "is required: {\"merchant_id\": \"…\"}"))?;
    let resent = app.notifier.resend(&merchant_id, ResendWhat::Dead).await?;
    let ids: Vec<&str> = resent.iter().map(|n| n.notify_id.as_str()).collect();
    Ok(success(&json!({ "merchant_id": merchant_id, "resent": ids.len(), "notify_ids": ids })))
}
