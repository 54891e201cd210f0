//! Channel callbacks: verify, apply through the order actor, answer as the provider
//! expects. An unverified callback changes nothing.

use hyper::StatusCode;
use paygate_actors::channel::ChannelHandle;
use paygate_actors::error::ErrorCode;
use paygate_actors::order_actor::OrderRequest;
use paygate_actors::ports::{CallbackReply, CallbackRequest, Verified};
use paygate_actors::registry::OrderTarget;

use super::envelope::{with_body, ApiError, HttpResponse};
use super::App;

fn reply(r: CallbackReply) -> HttpResponse {
    with_body(StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK), r.content_type, r.body)
}

/// `POST /callback/{provider}`.
pub async fn handle(app: &App, path: &str, request: CallbackRequest) -> Result<HttpResponse, ApiError> {
    // `/callback/wechat/v2` is the provider `wechat_v2`.
    let provider = path.replace('/', "_");
    let provider = provider.as_str();
    let mut tries: Vec<&ChannelHandle> = app.channels.of_provider(provider).collect();
    let first = *tries.first().ok_or(ApiError::NotFound)?;
    // A provider may have several channels (accounts). The order the callback names
    // says which one carries it: that channel's keys and account must verify it, so it
    // is tried first (with one channel there is nothing to choose). A callback naming
    // no order we know is tried against each channel in turn.
    if tries.len() > 1 {
        let carrier = match first.connector.unverified_order(&request) {
            Some(id) => app.router.read(OrderTarget::Id(id), None).await.ok().map(|o| o.channel.clone()),
            None => None,
        };
        tries.sort_by_key(|c| Some(&c.profile.code) != carrier.as_ref());
    }
    let (channel, verified) = tries
        .iter()
        .find_map(|c| c.connector.verify_callback(&request).map(|v| (*c, Some(v))))
        .unwrap_or((first, None));
    let connector = &channel.connector;
    if verified == Some(Verified::Informational) {
        metrics::counter!("paygate_callbacks_total", "provider" => provider.to_owned(), "result" => "informational")
            .increment(1);
        return Ok(reply(connector.callback_ack()));
    }
    let (pay_order_no, request) = match verified {
        Some(Verified::Order(v)) => {
            (v.pay_order_no, OrderRequest::Notice { channel: channel.profile.code.clone(), notice: v.notice })
        }
        Some(Verified::Refund(v)) => {
            let request = OrderRequest::RefundNotice {
                refund_order_no: v.refund_order_no,
                outcome: v.outcome,
                amount_minor: v.amount_minor,
            };
            (v.pay_order_no, request)
        }
        _ => return unverified(app, provider, channel, &request),
    };
    let target = OrderTarget::Id(pay_order_no.clone());
    // The order must be one this channel carries (or carried a trade of, given up on in
    // failover): a well-signed callback about another channel's order is an anomaly,
    // not a payment.
    let code = &channel.profile.code;
    let carried =
        app.router.read(target.clone(), None).await.is_ok_and(|o| &o.channel == code || o.abandoned.contains(code));
    if !carried {
        metrics::counter!("paygate_alerts_total", "kind" => "callback_foreign_order").increment(1);
        tracing::warn!(provider, %pay_order_no, "verified callback for an order this channel does not carry");
        return Ok(reply(connector.callback_nack()));
    }
    match app.router.dispatch(target, request, None).await {
        Ok(_) => {
            metrics::counter!("paygate_callbacks_total", "provider" => provider.to_owned(), "result" => "applied")
                .increment(1);
            Ok(reply(connector.callback_ack()))
        }
        Err(e) => {
            let result = if e.code == ErrorCode::ChannelError { "mismatch" } else { "refused" };
            metrics::counter!("paygate_callbacks_total", "provider" => provider.to_owned(), "result" => result)
                .increment(1);
            if e.code == ErrorCode::ChannelError {
                metrics::counter!("paygate_alerts_total", "kind" => "callback_mismatch").increment(1);
            }
            tracing::warn!(provider, %pay_order_no, error = %e, "callback not applied");
            Ok(reply(connector.callback_nack()))
        }
    }
}

/// A callback that failed verification changes nothing; the channel is asked about the
/// order it names instead.
fn unverified(
    app: &App,
    provider: &str,
    channel: &paygate_actors::channel::ChannelHandle,
    request: &CallbackRequest,
) -> Result<HttpResponse, ApiError> {
    let connector = &channel.connector;
    metrics::counter!("paygate_callbacks_total", "provider" => provider.to_owned(), "result" => "bad_signature")
        .increment(1);
    tracing::warn!(provider, "callback failed verification; it changes nothing");
    // What it claims is not believed, but the channel is asked about the order it names
    // (if it is one this channel carries): a real notification whose signature we could
    // not check must not leave a paid order waiting. Anyone can post such callbacks: the
    // gate bounds how often they cost a query.
    if let Some(id) = connector.unverified_order(request) {
        let result = match app.reconcile_gate.admit(&id, std::time::Instant::now()) {
            Some(slot) => {
                let router = app.router.clone();
                let codes: Vec<String> = app.channels.of_provider(provider).map(|c| c.profile.code.clone()).collect();
                tokio::spawn(async move {
                    let _slot = slot;
                    let target = OrderTarget::Id(id);
                    if router.read(target.clone(), None).await.is_ok_and(|o| codes.contains(&o.channel)) {
                        let _ = router.dispatch(target, OrderRequest::Reconcile, None).await;
                    }
                });
                "asked"
            }
            None => "skipped",
        };
        metrics::counter!("paygate_callback_reconciles_total", "result" => result).increment(1);
    }
    Ok(reply(connector.callback_nack()))
}
