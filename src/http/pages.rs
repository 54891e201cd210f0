//! Pages for people: the hosted cashier (`/h5/{pay_order_no}`) and the sandbox's own
//! "provider" cashier that its code URLs lead to.

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use hyper::StatusCode;
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order::PayMethod;
use paygate_actors::registry::OrderTarget;

use super::envelope::{with_body, ApiError, HttpResponse};
use super::App;

fn page(status: StatusCode, title: &str, head: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         {head}<title>{}</title><style>body{{font-family:sans-serif;max-width:28rem;margin:2rem auto;text-align:center}}\
         .amount{{font-size:2rem;font-weight:bold}}</style></head><body>{body}</body></html>",
        text(title)
    );
    with_body(status, "text/html; charset=utf-8", html)
}

/// `GET /h5/{pay_order_no}`: amount, subject, QR code and live status; sends the buyer
/// to the merchant's return_url once paid.
pub async fn cashier(app: &App, id: &str) -> Result<HttpResponse, ApiError> {
    let Some(id) = PayOrderNo::parse(id) else {
        return Err(ApiError::NotFound);
    };
    let order = app.router.read(OrderTarget::Id(id), None).await.map_err(|_| ApiError::NotFound)?;
    let status = order.status;
    if let (true, PayMethod::UnionPay, true, Some(url)) =
        (order.spec.pay_scene.is_page(), order.spec.pay_method, status.is_open(), &order.code_url)
    {
        return Ok(front_form(&order.spec.subject, url));
    }
    let mut head = String::new();
    if status.is_open() {
        head.push_str("<meta http-equiv=\"refresh\" content=\"3\">");
    } else if let (true, Some(ret)) = (status.is_paid(), &order.spec.return_url) {
        head.push_str(&format!("<meta http-equiv=\"refresh\" content=\"2;url={}\">", attr(ret)));
    }
    let qr = match (&order.code_url, status.is_open()) {
        (Some(url), true) => super::qr(url)
            .map(|uri| {
                format!(
                    "<p><img alt=\"QR code\" src=\"{}\"></p><p><a href=\"{}\">Open payment page</a></p>",
                    attr(&uri),
                    attr(url)
                )
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    let body = format!(
        "<h1>{}</h1><p class=\"amount\">{} {}</p>{qr}<p>Status: <b id=\"status\">{}</b></p><p><small>{}</small></p>",
        text(&order.spec.subject),
        order.spec.amount.currency(),
        order.spec.amount,
        status,
        order.pay_order_no
    );
    Ok(page(StatusCode::OK, &order.spec.subject, &head, &body))
}

/// The page that posts a channel's signed front form (`url`: its action with the fields
/// as the query) from the buyer's browser, by itself or with one press.
fn front_form(subject: &str, url: &str) -> HttpResponse {
    let (action, query) = url.split_once('?').unwrap_or((url, ""));
    let inputs: String = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", attr(&k), attr(&v)))
        .collect();
    let body = format!(
        "<h1>{}</h1><form id=\"pay\" method=\"post\" action=\"{}\">{inputs}\
         <button type=\"submit\">Continue to payment</button></form>\
         <script>document.getElementById(\"pay\").submit()</script>",
        text(subject),
        attr(action)
    );
    page(StatusCode::OK, subject, "", &body)
}

/// `GET|POST /sandbox/pay/{pay_order_no}`: the sandbox provider's cashier. POST pays.
pub async fn sandbox_cashier(app: &App, id: &str, pay: bool) -> Result<HttpResponse, ApiError> {
    let sandbox = app.sandbox.as_ref().ok_or(ApiError::NotFound)?;
    if pay {
        let outcome = match sandbox.pay(id) {
            Ok(()) => "Paid. The gateway is being notified.".to_owned(),
            Err(e) => e.to_string(),
        };
        return Ok(page(StatusCode::OK, "Sandbox", "", &format!("<h1>Sandbox</h1><p>{}</p>", text(&outcome))));
    }
    let (amount, subject, open) = sandbox.describe(id).ok_or(ApiError::NotFound)?;
    let action = if open {
        format!(
            "<form method=\"post\" action=\"/sandbox/pay/{}\"><button>Pay {} {}</button></form>",
            attr(id),
            amount.currency(),
            amount
        )
    } else {
        "<p>This trade is no longer open.</p>".to_owned()
    };
    let body = format!(
        "<h1>Sandbox cashier</h1><p>{}</p><p class=\"amount\">{} {}</p>{action}",
        text(&subject),
        amount.currency(),
        amount
    );
    Ok(page(StatusCode::OK, "Sandbox cashier", "", &body))
}
