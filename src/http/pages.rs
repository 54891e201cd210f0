//! Pages for people: the hosted cashier (`/h5/{pay_order_no}`) a buyer pays on, its
//! status feed, the sandbox's own "provider" cashier that its code URLs lead to, the
//! node's front page (where UnionPay sends the buyer back) and the page a browser gets
//! for an address that has none.

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use paygate_actors::ids::PayOrderNo;
use paygate_actors::order::{Order, OrderStatus, PayMethod};
use paygate_actors::registry::OrderTarget;
use serde_json::json;

use super::envelope::{json_response, with_body, HttpResponse};
use super::App;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'PingFang SC',sans-serif;max-width:28rem;\
margin:0 auto;padding:1.5rem 1rem;text-align:center;color:#1d1d1f;line-height:1.4}\
.merchant{color:#555;margin:0}.subject{font-size:1.25rem;margin:.5rem 0}\
.amount{font-size:2.6rem;font-weight:700;margin:.5rem 0 1rem}\
.button{display:block;box-sizing:border-box;width:100%;padding:1rem;margin:1rem 0;border:0;border-radius:.6rem;\
background:#1677ff;color:#fff;font-size:1.2rem;text-decoration:none;cursor:pointer}\
img.qr{width:15rem;max-width:80vw;height:auto;image-rendering:pixelated}\
.status{font-size:1.2rem}.ok{color:#0a7d32}.over{color:#b00020}.small{color:#777;font-size:.85rem}";

fn page(status: StatusCode, title: &str, head: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}<title>{}</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>",
        text(title)
    );
    with_body(status, "text/html; charset=utf-8", html)
}

/// A 404 a person can read.
pub fn not_found(what: &str) -> HttpResponse {
    let body = format!("<h1>Not found</h1><p>{}</p><p class=\"small\">paygate</p>", text(what));
    page(StatusCode::NOT_FOUND, "Not found", "", &body)
}

/// What the buyer is told about an order in `status`, and the class that colours it.
fn verdict(status: OrderStatus) -> (&'static str, &'static str) {
    match status {
        OrderStatus::Pending | OrderStatus::Paying => ("Waiting for your payment.", ""),
        OrderStatus::Success | OrderStatus::PartiallyRefunded | OrderStatus::Refunded => ("Paid. Thank you!", "ok"),
        OrderStatus::Failed => {
            ("The payment did not go through. Nothing was taken; ask the merchant to try again.", "over")
        }
        OrderStatus::Closed => ("This order was closed. No payment was taken.", "over"),
        OrderStatus::Expired => ("This order expired before it was paid. No payment was taken.", "over"),
    }
}

/// Where a buyer pays the order's code in a browser: the channel's own page when the
/// code is a web address, the built-in simulator's cashier for a simulated WeChat code
/// (`weixin://` opens only inside WeChat).
fn payment_link(app: &App, order: &Order, code_url: &str) -> Option<String> {
    if code_url.starts_with("http://") || code_url.starts_with("https://") {
        return Some(code_url.to_owned());
    }
    let (sim, simulated) = app.simulator.as_ref()?;
    let token = code_url.strip_prefix("weixin://wxpay/bizpayurl?pr=")?;
    simulated.contains(&order.channel).then(|| format!("{sim}/wechat/cashier/{token}"))
}

/// `GET /h5/{pay_order_no}`: the merchant, what is bought, the amount, the code to scan
/// and a button to pay in the browser, and the status, which follows the order without
/// a reload (it asks [`cashier_status`]); once paid it sends the buyer to the
/// merchant's return_url.
pub async fn cashier(app: &App, id: &str) -> HttpResponse {
    let Some(id) = PayOrderNo::parse(id) else {
        return not_found("There is no order with this number.");
    };
    let Ok(order) = app.router.read(OrderTarget::Id(id), None).await else {
        return not_found("There is no order with this number.");
    };
    metrics::counter!("paygate_pages_total", "page" => "cashier").increment(1);
    let status = order.status;
    if let (true, PayMethod::UnionPay, true, Some(url)) =
        (order.spec.pay_scene.is_page(), order.spec.pay_method, status.is_open(), &order.code_url)
    {
        return front_form(&order.spec.subject, url);
    }
    let merchant = app.merchants.get(&order.spec.merchant_id).map(|m| m.name.clone()).unwrap_or_default();
    let return_url = order.spec.return_url.as_deref().unwrap_or_default();
    let mut head = String::new();
    if status.is_paid() && !return_url.is_empty() {
        // The script sends the buyer back; without one, the browser does.
        head.push_str(&format!(
            "<noscript><meta http-equiv=\"refresh\" content=\"2;url={}\"></noscript>",
            attr(return_url)
        ));
    }
    let pay = match (&order.code_url, status.is_open()) {
        (Some(code_url), true) => {
            let qr = super::qr(code_url)
                .map(|uri| format!("<p><img class=\"qr\" alt=\"QR code to pay\" src=\"{}\"></p>", attr(&uri)))
                .unwrap_or_default();
            let link = payment_link(app, &order, code_url)
                .map(|url| format!("<a class=\"button\" id=\"open\" href=\"{}\">Pay in the browser</a>", attr(&url)))
                .unwrap_or_else(|| "<p>Scan the code with the payment app.</p>".to_owned());
            format!("<div id=\"pay\">{qr}{link}</div>")
        }
        _ => String::new(),
    };
    let (note, class) = verdict(status);
    let body = format!(
        "<p class=\"merchant\" id=\"merchant\">{}</p><h1 class=\"subject\">{}</h1>\
         <p class=\"amount\" id=\"amount\">{} {}</p>{pay}\
         <p class=\"status\">Status: <b id=\"status\" class=\"{class}\">{status}</b></p>\
         <p id=\"note\" class=\"{class}\">{note}</p><p class=\"small\">{}</p>\
         <script>{LIVE}</script>",
        text(&merchant),
        text(&order.spec.subject),
        order.spec.amount.currency(),
        order.spec.amount,
        order.pay_order_no,
    );
    let paid = if status.is_paid() { " data-paid=\"1\"" } else { "" };
    let page_body =
        format!("<main data-order=\"{}\" data-return=\"{}\"{paid}>{body}</main>", order.pay_order_no, attr(return_url));
    page(StatusCode::OK, &format!("Pay {}", order.spec.subject), &head, &page_body)
}

/// The cashier's script: asks for the status while the order is open (each question
/// waits at the node until the status changes), shows the change in the node's words,
/// and once paid sends the buyer to the return_url. Without JavaScript the page still
/// works by reloading.
const LIVE: &str = r#"(function(){
var main=document.querySelector('main'),id=main.dataset.order,back=main.dataset.return;
var el=document.getElementById('status'),note=document.getElementById('note'),pay=document.getElementById('pay');
var open=function(s){return s==='PENDING'||s==='PAYING'};
function home(){if(back)setTimeout(function(){location.replace(back)},1500);}
function show(j){el.textContent=j.status;note.textContent=j.note;note.className=el.className=j.tone;
 main.dataset.live='updated';if(!open(j.status)&&pay)pay.remove();if(j.tone==='ok')home();}
function ask(){fetch('/h5/'+id+'/status?wait='+encodeURIComponent(el.textContent),{cache:'no-store'})
 .then(function(r){return r.json()}).then(function(j){if(j.status&&j.status!==el.textContent)show(j);
 if(open(el.textContent))ask();}).catch(function(){setTimeout(ask,3000)});}
if(open(el.textContent))ask();else if(main.dataset.paid)home();})();"#;

/// The longest a status question waits for a change.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `GET /h5/{pay_order_no}/status?wait=PAYING`: `{"status", "note", "tone"}` (the words
/// the cashier page shows) as soon as the order's status is not `wait` (at once without
/// `wait`), or after 20 s. Shows no more than the cashier page does.
pub async fn cashier_status(app: &App, id: &str, query: &str) -> HttpResponse {
    let not_found =
        || json_response(StatusCode::NOT_FOUND, &json!({ "code": "ORDER_NOT_FOUND", "message": "no such order" }));
    let Some(id) = PayOrderNo::parse(id) else {
        return not_found();
    };
    let wait: String = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "wait")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + STATUS_WAIT;
    loop {
        let Ok(order) = app.router.read(OrderTarget::Id(id.clone()), None).await else {
            return not_found();
        };
        let status = order.status.as_str();
        let stopping = app.stopping.load(std::sync::atomic::Ordering::Acquire);
        if status != wait || tokio::time::Instant::now() >= deadline || stopping {
            let (note, tone) = verdict(order.status);
            return json_response(StatusCode::OK, &json!({ "status": status, "note": note, "tone": tone }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The page that posts a channel's signed front form (`url`: its action with the fields
/// as the query) from the buyer's browser, by itself or with one press.
fn front_form(subject: &str, url: &str) -> HttpResponse {
    let (action, query) = url.split_once('?').unwrap_or((url, ""));
    let inputs: String = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", attr(&k), attr(&v)))
        .collect();
    let body = format!(
        "<h1 class=\"subject\">{}</h1><form id=\"pay\" method=\"post\" action=\"{}\">{inputs}\
         <button class=\"button\" type=\"submit\">Continue to payment</button></form>\
         <script>document.getElementById(\"pay\").submit()</script>",
        text(subject),
        attr(action)
    );
    page(StatusCode::OK, subject, "", &body)
}

/// `GET|POST /sandbox/pay/{pay_order_no}`: the sandbox provider's cashier. POST pays.
pub async fn sandbox_cashier(app: &App, id: &str, pay: bool) -> HttpResponse {
    let Some(sandbox) = app.sandbox.as_ref() else {
        return not_found("This node has no sandbox channel.");
    };
    if pay {
        let outcome = match sandbox.pay(id) {
            Ok(()) => "Paid. The gateway is being notified.".to_owned(),
            Err(e) => e.to_string(),
        };
        return page(StatusCode::OK, "Sandbox", "", &format!("<h1>Sandbox</h1><p>{}</p>", text(&outcome)));
    }
    let Some((amount, subject, open)) = sandbox.describe(id) else {
        return not_found("The sandbox has no trade with this number.");
    };
    let action = if open {
        format!(
            "<form method=\"post\" action=\"/sandbox/pay/{}\"><button class=\"button\">Pay {} {}</button></form>",
            attr(id),
            amount.currency(),
            amount
        )
    } else {
        "<p>This trade is no longer open.</p>".to_owned()
    };
    let body = format!(
        "<h1>Sandbox cashier</h1><p class=\"subject\">{}</p><p class=\"amount\">{} {}</p>{action}",
        text(&subject),
        amount.currency(),
        amount
    );
    page(StatusCode::OK, "Sandbox cashier", "", &body)
}

/// `GET|POST /`: the node's front page. A buyer sent back by UnionPay (a form with its
/// `orderId`) is told where the order stands and given its cashier page.
pub async fn landing(app: &App, req: Request<Incoming>) -> HttpResponse {
    let form = match super::read_body(app, req).await {
        Ok((_, body)) => body,
        Err(_) => bytes::Bytes::new(),
    };
    let order_id = form_urlencoded::parse(&form).find(|(k, _)| k == "orderId").and_then(|(_, v)| PayOrderNo::parse(&v));
    let order = match order_id {
        Some(id) => app.router.read(OrderTarget::Id(id), None).await.ok(),
        None => None,
    };
    let body = match order {
        Some(order) => {
            let (note, class) = match order.status {
                s if s.is_open() => ("Your payment was submitted; the merchant will be told when it is confirmed.", ""),
                s => verdict(s),
            };
            format!(
                "<h1>Back from the payment</h1><p class=\"subject\">{}</p><p class=\"amount\">{} {}</p>\
                 <p class=\"{class}\">{note}</p><p><a class=\"button\" href=\"/h5/{}\">See the order</a></p>",
                text(&order.spec.subject),
                order.spec.amount.currency(),
                order.spec.amount,
                order.pay_order_no
            )
        }
        None => "<h1>paygate</h1><p>This payment gateway is running. Merchants use its API; buyers pay on the \
                 pages their merchant sends them to.</p>"
            .to_owned(),
    };
    page(StatusCode::OK, "paygate", "", &body)
}
