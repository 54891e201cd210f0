//! The admin API (bearer token): channels (live state, enable/disable, weights),
//! merchants' routing strategies, the sandbox channel, resending notifications.

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use paygate_actors::error::{CoreError, ErrorCode};
use serde_json::json;
use subtle::ConstantTimeEq;

use paygate_actors::channel::ChannelHandle;
use paygate_actors::channel_actor::ChannelSetting;
use paygate_actors::money::{Currency, Money};
use paygate_actors::notifier::ResendWhat;
use paygate_actors::order::PayMethod;
use paygate_actors::ports::{Record, StorageError};
use paygate_actors::strategy::Strategy;
use paygate_actors::time_fmt::Rfc3339;

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

/// An operator's change: decided from the state in force (`decide`: the record to
/// journal and what to apply), journaled, then applied (`apply`) — all under the one lock
/// that keeps changes in force in the order the journal keeps them (and a restart
/// replays them).
async fn operator_change<A, T>(
    app: &App,
    decide: impl FnOnce() -> Result<(Record, A), ApiError>,
    apply: impl FnOnce(A) -> T,
) -> Result<T, ApiError> {
    let _in_order = app.admin_changes.lock().await;
    let (record, change) = decide()?;
    app.router.context().journal.append(record).await.map_err(StorageError::into_core)?;
    Ok(apply(change))
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

/// What an operator sees of a channel: its configuration and its live state.
fn channel_view(app: &App, c: &ChannelHandle) -> serde_json::Value {
    let p = &c.profile;
    let live = &c.live;
    let (p50, p95) = live.latency_us();
    let day = paygate_actors::daily_volume::business_day(app.clock.now_ms());
    let volume = Money::from_minor(c.stats.daily.used(day), Currency::CNY);
    json!({
        "code": p.code,
        "provider": p.provider,
        "methods": p.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "currencies": p.currencies.iter().map(|c| c.code()).collect::<Vec<_>>(),
        "weight": live.weight(),
        "status": if live.enabled() { "ENABLED" } else { "DISABLED" },
        "breaker": live.breaker().as_str(),
        "breaker_open_until": live.open_until().map(|t| Rfc3339(t).to_string()),
        "success_rate": live.success_rate(),
        "calls_in_window": live.calls_in_window(),
        "latency_p50_ms": p50 as f64 / 1000.0,
        "latency_p95_ms": p95 as f64 / 1000.0,
        "day_volume": volume.to_string(),
        "daily_limit": p.daily_limit_minor.map(|m| Money::from_minor(m, Currency::CNY).to_string()),
        "single_limit": p.single_limit_minor.map(|m| Money::from_minor(m, Currency::CNY).to_string()),
        "gateway_url": c.connector.gateway_url(),
    })
}

/// `GET /admin/channels`: every channel, its configuration and live state.
/// `GET /admin/channels/{code}`: one. `POST /admin/channels/{code}` with
/// `{"status": "ENABLED"|"DISABLED", "weight": n}` (either or both) changes it while the
/// node runs: journaled first, so it holds after a restart.
pub async fn channels(
    app: &App,
    method: &hyper::Method,
    code: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    authorize(app, headers)?;
    let Some(code) = code else {
        if method != hyper::Method::GET {
            return Err(ApiError::MethodNotAllowed("GET"));
        }
        let all: Vec<_> = app.channels.profiles().iter().filter_map(|p| app.channels.get(&p.code)).collect();
        return Ok(success(&json!({ "channels": all.iter().map(|c| channel_view(app, c)).collect::<Vec<_>>() })));
    };
    let channel = app.channels.get(code).ok_or(ApiError::NotFound)?;
    match *method {
        hyper::Method::GET => Ok(success(&channel_view(app, channel))),
        hyper::Method::POST => {
            let setting = channel_setting(body)?;
            let record = Record::Channel { code: code.to_owned(), setting };
            operator_change(app, || Ok((record, setting)), |setting| channel.adjust(setting)).await?;
            tracing::info!(channel = code, ?setting, "channel changed by an operator");
            // The actor applies it on its own thread: answer with what was set.
            let mut view = channel_view(app, channel);
            if let Some(o) = view.as_object_mut() {
                if let Some(on) = setting.enabled {
                    o.insert("status".into(), json!(if on { "ENABLED" } else { "DISABLED" }));
                }
                if let Some(w) = setting.weight {
                    o.insert("weight".into(), json!(w));
                }
            }
            Ok(success(&view))
        }
        _ => Err(ApiError::MethodNotAllowed("GET, POST")),
    }
}

/// Risk control as operators see it: the version, the rules, the lists.
fn risk_view(app: &App) -> serde_json::Value {
    let p = app.router.context().risk.policy();
    json!({ "version": p.version, "rules": p.rules, "lists": p.lists.entries().collect::<Vec<_>>() })
}

/// `/admin/risk…`: `GET /admin/risk` (the version, rules and lists in force),
/// `PUT /admin/risk/rules` (the rules, whole, as JSON), `POST`/`DELETE /admin/risk/lists`
/// with `{"list": "block"|"allow", "kind": "user_id"|"merchant_id"|"device_id"|"ip"|
/// "cidr"|"account", "value": …}`, `GET /admin/risk/reviews` (payments sent to review and
/// not resolved yet), `POST /admin/risk/reviews/{pay_order_no}` with `{"decision":
/// "approve"|"reject"}`. Every change is journaled first and is in force from the next
/// payment.
pub async fn risk(
    app: &App,
    method: &hyper::Method,
    rest: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    use hyper::Method;
    use paygate_actors::risk::lists::{ListEntry, ListKind};
    use paygate_actors::risk::RiskChange;
    authorize(app, headers)?;
    let engine = &app.router.context().risk;
    let entry = |body: &[u8]| -> Result<ListEntry, ApiError> {
        let e: ListEntry = serde_json::from_slice(body).map_err(|e| {
            CoreError::invalid(
                "body",
                format_args!(
                    "must be {{\"list\": \"block\"|\"allow\", \"kind\": {}, \"value\": …}} ({e})",
                    ListKind::ALL.map(|k| format!("\"{}\"", k.as_str())).join("|")
                ),
            )
        })?;
        Ok(e.canonical()?)
    };
    let change = match (method, rest) {
        (&Method::GET, "") => return Ok(success(&risk_view(app))),
        (&Method::GET, "lists") => {
            let p = engine.policy();
            return Ok(success(&json!({ "version": p.version, "lists": p.lists.entries().collect::<Vec<_>>() })));
        }
        (&Method::GET, "reviews") => {
            let orders = app.router.context().store.under_review(100).map_err(StorageError::into_core)?;
            return Ok(success(&json!({ "reviews": orders.iter().map(review_view).collect::<Vec<_>>() })));
        }
        (&Method::POST, id) if id.starts_with("reviews/") => {
            let id = id.trim_start_matches("reviews/");
            return resolve_review(app, id, body).await;
        }
        (&Method::PUT, "rules") => {
            let rules: paygate_actors::risk::rules::RiskRules = serde_json::from_slice(body)
                .map_err(|e| CoreError::invalid("body", format_args!("must be the rules as JSON ({e})")))?;
            let json = serde_json::to_string(&rules).map_err(|e| CoreError::system(e.to_string()))?;
            RiskChange::Rules(json)
        }
        (&Method::POST, "lists") => {
            let e = entry(body)?;
            if engine.policy().lists.entries().any(|x| *x == e) {
                return Ok(success(&risk_view(app)));
            }
            RiskChange::ListAdded(e)
        }
        (&Method::DELETE, "lists") => {
            let e = entry(body)?;
            if !engine.policy().lists.entries().any(|x| *x == e) {
                return Err(ApiError::NotFound);
            }
            RiskChange::ListRemoved(e)
        }
        (_, "" | "lists" | "reviews" | "rules") => return Err(ApiError::MethodNotAllowed("GET, PUT, POST, DELETE")),
        _ => return Err(ApiError::NotFound),
    };
    let decide = || {
        let next = engine.policy().changed(&change).map_err(|e| CoreError::invalid("body", e))?;
        Ok((Record::Risk { change }, next))
    };
    operator_change(app, decide, |next| {
        tracing::info!(version = next.version, "risk control changed by an operator");
        engine.replace(next);
    })
    .await?;
    Ok(success(&risk_view(app)))
}

/// A payment risk control sent to review, as operators see it.
fn review_view(o: &paygate_actors::order::Order) -> serde_json::Value {
    json!({
        "pay_order_no": o.pay_order_no.as_str(), "merchant_id": o.spec.merchant_id,
        "order_no": o.spec.order_no, "amount": o.spec.amount.to_decimal().to_string(),
        "currency": o.spec.amount.currency().code(), "status": o.status.as_str(),
        "create_time": Rfc3339(o.create_time).to_string(), "risk": o.risk,
        "review": o.review.map(|approved| if approved { "approved" } else { "rejected" }),
        "refunded_amount": Money::from_minor(o.refunded_minor, o.spec.amount.currency()).to_decimal().to_string(),
    })
}

/// `POST /admin/risk/reviews/{pay_order_no}`: an operator's verdict. Approved, the
/// payment stands; rejected, it is closed if unpaid and refunded in full if paid (refund
/// number `REVIEW-<pay_order_no>`, the merchant notified as for its own refunds).
async fn resolve_review(app: &App, id: &str, body: &[u8]) -> Result<HttpResponse, ApiError> {
    use paygate_actors::ids::PayOrderNo;
    use paygate_actors::order_actor::OrderRequest;
    use paygate_actors::registry::OrderTarget;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Verdict {
        decision: String,
    }
    let approved = match serde_json::from_slice::<Verdict>(body).map(|v| v.decision) {
        Ok(d) if d == "approve" => true,
        Ok(d) if d == "reject" => false,
        _ => return Err(CoreError::invalid("body", "must be {\"decision\": \"approve\"|\"reject\"}").into()),
    };
    let id = PayOrderNo::parse(id).ok_or(ApiError::NotFound)?;
    let order = app.router.read(OrderTarget::Id(id.clone()), None).await?;
    if !approved {
        // The refund number is the merchant's namespace: keep it from naming another
        // order's refund.
        let refund_no = format!("REVIEW-{id}");
        if !app.recent_refunds.reserve(app, &order.spec.merchant_id, &refund_no, &id)? {
            return Err(CoreError::new(
                ErrorCode::IdempotencyConflict,
                format!("refund_no {refund_no} names a refund of another order"),
            )
            .into());
        }
    }
    let resolved = app.router.dispatch(OrderTarget::Id(id), OrderRequest::ResolveReview { approved }, None).await?;
    tracing::info!(pay_order_no = %resolved.pay_order_no, approved, status = resolved.status.as_str(), "review resolved by an operator");
    Ok(success(&review_view(&resolved)))
}

/// A merchant's routing: every pay method with the strategy in force.
fn routing_view(app: &App, merchant_id: &str) -> Result<serde_json::Value, ApiError> {
    let routing = app.merchants.routing(merchant_id).ok_or(ApiError::NotFound)?;
    let strategies: serde_json::Map<String, serde_json::Value> =
        routing.iter().map(|(method, strategy)| (method.as_str().to_owned(), json!(strategy.as_str()))).collect();
    Ok(json!({ "merchant_id": merchant_id, "routing": strategies }))
}

/// `GET /admin/merchants/{id}/routing`: how each pay method of the merchant is routed.
/// `POST` with `{"method": "ALIPAY", "strategy": "adaptive"}` changes one from the next
/// payment on: journaled first, so it holds after a restart.
pub async fn routing(
    app: &App,
    method: &hyper::Method,
    merchant_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    authorize(app, headers)?;
    match *method {
        hyper::Method::GET => Ok(success(&routing_view(app, merchant_id)?)),
        hyper::Method::POST => {
            routing_view(app, merchant_id)?;
            let (pay_method, strategy) = routing_change(body)?;
            let record = Record::Routing { merchant_id: merchant_id.to_owned(), method: pay_method, strategy };
            operator_change(
                app,
                || Ok((record, ())),
                |()| app.merchants.set_strategy(merchant_id, pay_method, strategy),
            )
            .await?;
            tracing::info!(
                merchant_id,
                method = pay_method.as_str(),
                strategy = strategy.as_str(),
                "routing changed by an operator"
            );
            Ok(success(&routing_view(app, merchant_id)?))
        }
        _ => Err(ApiError::MethodNotAllowed("GET, POST")),
    }
}

/// The routing change an operator asks for: one method, one strategy.
fn routing_change(body: &[u8]) -> Result<(PayMethod, Strategy), ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Change {
        method: String,
        strategy: String,
    }
    let names = Strategy::ALL.map(Strategy::as_str).join(", ");
    let change: Change = serde_json::from_slice(body).map_err(|e| {
        CoreError::invalid(
            "body",
            format_args!("must be {{\"method\": \"ALIPAY\", \"strategy\": one of {names}}} ({e})"),
        )
    })?;
    let method = change.method.parse::<PayMethod>().map_err(|_| {
        let methods = PayMethod::ALL.map(PayMethod::as_str).join(", ");
        CoreError::invalid("method", format_args!("{:?} is not one of {methods}", change.method))
    })?;
    let strategy = Strategy::parse(&change.strategy)
        .ok_or_else(|| CoreError::invalid("strategy", format_args!("{:?} is not one of {names}", change.strategy)))?;
    Ok((method, strategy))
}

/// The change an operator asks for: `status` and/or `weight`, nothing else.
fn channel_setting(body: &[u8]) -> Result<ChannelSetting, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Change {
        status: Option<String>,
        weight: Option<u32>,
    }
    let change: Change = serde_json::from_slice(body).map_err(|e| {
        CoreError::invalid(
            "body",
            format_args!("must be {{\"status\": \"ENABLED\"|\"DISABLED\", \"weight\": n}} ({e})"),
        )
    })?;
    let enabled = match change.status.as_deref() {
        None => None,
        Some("ENABLED") => Some(true),
        Some("DISABLED") => Some(false),
        Some(other) => {
            return Err(CoreError::invalid("status", format_args!("{other:?} is not ENABLED or DISABLED")).into())
        }
    };
    if enabled.is_none() && change.weight.is_none() {
        return Err(CoreError::invalid("body", "names nothing to change: give status, weight or both").into());
    }
    if change.weight.is_some_and(|w| w > 1_000_000) {
        return Err(CoreError::invalid("weight", "must be at most 1000000").into());
    }
    Ok(ChannelSetting { enabled, weight: change.weight })
}
