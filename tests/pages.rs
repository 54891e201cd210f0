//! The pages a buyer sees, in a real headless browser (Chromium, which `.ci/run`
//! installs when it is missing): the hosted cashier shows the merchant, the amount and a
//! QR code of the code URL; paying at the simulator's cashier turns it to SUCCESS
//! without a reload; a paid order sends the buyer to the merchant's return_url; browsers
//! get pages, not JSON, for addresses that have none.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"].iter().find_map(|name| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| PathBuf::from(dir).join(name)).find(|p| p.is_file())
    });
    found.expect("Chromium is needed for the page tests: apt-get install chromium (.ci/run installs it)")
}

/// Starts Chromium on `url`; `budget_ms` of virtual time lets scripts run (a request in
/// flight holds virtual time still), none dumps the page as loaded.
fn open(url: &str, budget_ms: Option<u64>) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(budget_ms.map(|ms| format!("--virtual-time-budget={ms}")))
        .args(["--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    Browser { child: cmd.spawn().unwrap(), _profile: profile }
}

/// A running Chromium and its profile directory, removed when done.
struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
}

/// The page's DOM after it loaded (and ran, given a budget). A page that never settles
/// (a question to the node that never ends) fails the test instead of hanging it.
fn dom(browser: Browser) -> String {
    let Browser { mut child, _profile } = browser;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let settled = eventually(Duration::from_secs(60), || child.try_wait().unwrap());
    if settled.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the page did not settle within 60 s");
    }
    reader.join().unwrap().unwrap()
}

fn render(url: &str) -> String {
    dom(open(url, None))
}

/// The `src` of the first `<img class="qr" …>`.
fn qr_src(dom: &str) -> String {
    let tag = dom.split("<img").find(|t| t.contains("class=\"qr\"")).expect("a QR code image");
    between(tag, "src=\"", "\"").replace("&amp;", "&")
}

#[test]
fn a_buyer_pays_on_the_hosted_cashier_and_sees_it_change_without_a_reload() {
    let t = TestNode::start();
    let c = t.client();
    let cashier_pages = || metric(&t.url, "paygate_pages_total{page=\"cashier\"}");

    // The hosted cashier: merchant, amount, a QR code of the code URL, a link to pay.
    let a = c.pay_by("ALIPAY", "PAGE-1", "88.88");
    let (id, code_url, pay_url) =
        (a.data("pay_order_no").to_owned(), a.data("code_url").to_owned(), a.data("pay_url").to_owned());
    let page = render(&pay_url);
    assert!(page.contains("Demo Merchant"), "{page}");
    assert!(page.contains("CNY 88.88"), "{page}");
    assert!(page.contains("name=\"viewport\""), "{page}");
    assert_eq!(decode_qr(&qr_src(&page)), code_url);
    assert!(page.contains(&format!("href=\"{code_url}\"")), "a button to pay in the browser: {page}");

    // The simulator's cashier, as a browser shows it: its Pay button posts the form.
    let sim_page = render(&code_url);
    assert!(sim_page.contains("name=\"viewport\"") && sim_page.contains("id=\"pay\""), "{sim_page}");
    let action = between(&sim_page, "action=\"", "\"");

    // The buyer has the cashier open; paying at the simulator changes it in place.
    let before = cashier_pages();
    let watching = open(&pay_url, Some(5_000));
    assert!(
        eventually(Duration::from_secs(30), || (cashier_pages() > before).then_some(())).is_some(),
        "the browser never asked for the cashier"
    );
    let paid = ureq::post(&format!("{}{action}", sim_url(&t))).send_string("").unwrap().into_string().unwrap();
    assert!(paid.contains("TRADE_SUCCESS") && !paid.contains("id=\"pay\""), "no Pay button once paid: {paid}");
    let page = dom(watching);
    assert!(page.contains("data-live=\"updated\""), "updated by the page itself, not reloaded: {page}");
    assert!(page.contains(">SUCCESS<") && page.contains("Paid. Thank you!"), "{page}");
    assert!(!page.contains("class=\"qr\""), "nothing left to pay: {page}");
    wait_status(&c, &id, "SUCCESS", Duration::from_secs(10));

    // A paid order with a return_url sends the buyer back to the merchant.
    let mut p = Client::pay_params("PAGE-2", "1.00");
    p.insert("return_url".into(), format!("{}/", t.url));
    let a = c.call("/api/v1/payment/pay", p);
    sandbox_pay(&t.url, a.data("pay_order_no"));
    wait_status(&c, a.data("pay_order_no"), "SUCCESS", Duration::from_secs(10));
    let back = dom(open(a.data("pay_url"), Some(5_000)));
    assert!(back.contains("This payment gateway is running"), "at the return_url: {back}");

    // A closed order says so.
    let a = c.pay("PAGE-3", "2.00");
    c.close_id(a.data("pay_order_no"));
    let closed = render(a.data("pay_url"));
    assert!(closed.contains("This order was closed. No payment was taken."), "{closed}");
    assert!(!closed.contains("class=\"qr\""), "{closed}");

    // A simulated WeChat code opens the simulator's cashier, not weixin://.
    let a = c.pay_by("WECHAT_PAY", "PAGE-4", "3.00");
    let wx = render(a.data("pay_url"));
    let token = a.data("code_url").rsplit('=').next().unwrap().to_owned();
    assert!(wx.contains(&format!("href=\"{}/wechat/cashier/{token}\"", sim_url(&t))), "{wx}");

    // Addresses without a page answer a page.
    for path in ["/h5/P000", "/sandbox/pay/P000", "/no/such/page"] {
        let page = render(&format!("{}{path}", t.url));
        assert!(page.contains("<h1>Not found</h1>"), "{path}: {page}");
    }
    let front = render(&format!("{}/", t.url));
    assert!(front.contains("This payment gateway is running"), "{front}");
}

#[test]
fn unknown_addresses_answer_api_clients_in_json_and_wrong_methods_name_the_right_ones() {
    let t = TestNode::start();
    let r = ureq::get(&format!("{}/no/such/page", t.url)).set("accept", "text/html").call();
    let Err(ureq::Error::Status(404, r)) = r else { panic!("{r:?}") };
    assert!(r.content_type().starts_with("text/html"));
    let r = ureq::get(&format!("{}/no/such/page", t.url)).call();
    let Err(ureq::Error::Status(404, r)) = r else { panic!("{r:?}") };
    assert_eq!(r.into_json::<serde_json::Value>().unwrap()["code"], "NOT_FOUND");
    let r = ureq::get(&format!("{}/api/v1/payment/pay", t.url)).call();
    let Err(ureq::Error::Status(405, r)) = r else { panic!("{r:?}") };
    assert_eq!(r.header("allow"), Some("POST"));
    // UnionPay sends the buyer back to the node's front page with its form.
    let a = t.client().pay_by("UNION_PAY", "PAGE-UP", "4.00");
    let back = ureq::post(&format!("{}/", t.url))
        .send_form(&[("orderId", a.data("pay_order_no")), ("respCode", "00")])
        .unwrap()
        .into_string()
        .unwrap();
    assert!(back.contains("Back from the payment") && back.contains("CNY 4.00"), "{back}");
}
