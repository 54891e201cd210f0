"""Drives the paygate simulator with the payment providers' own SDKs.

The simulator shares each adapter's wire code, so a wire mistake made on both sides
would pass every test of ours; these SDKs are written by others (Alipay, and the
maintainers of wechatpy and wechatpayv3) and judge it independently. Each check calls
the SDK as a merchant would, against the simulator's gateway, and lets the SDK verify
every answer and notification with its own code.

Usage: check.py --sim http://127.0.0.1:PORT --keys keys.json
Prints one line per check and ends with "N passed, M failed"; exits 1 if any failed.
"""

import argparse
import gzip
import http.server
import json
import queue
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

RESULTS = []


def check(name):
    def run(fn):
        try:
            fn()
            RESULTS.append((name, None))
            print(f"ok    {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            RESULTS.append((name, e))
            print(f"FAIL  {name}: {e!r}", flush=True)
            traceback.print_exc()
        return fn

    return run


DEFERRED = []


def deferred(name):
    """A check that needs the day's bill: run after the simulator's clock moved on."""

    def later(fn):
        DEFERRED.append((name, fn))
        return fn

    return later


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


class Listener:
    """A merchant's notify_url: records each notification and acknowledges it."""

    def __init__(self, reply):
        self.got = queue.Queue()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                outer.got.put((dict(self.headers.items()), body))
                status, text = reply
                self.send_response(status)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def next(self, timeout=15):
        return self.got.get(timeout=timeout)


def post_json(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def sim_pay(sim, provider, out_trade_no):
    return post_json(f"{sim}/sim/{provider}/pay", {"out_trade_no": out_trade_no})


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def alipay_checks(sim, keys, bill_day):
    from alipay import AliPay

    k = keys["alipay"]
    notify = Listener((200, b"success"))
    client = AliPay(
        appid=k["app_id"],
        app_notify_url=notify.url,
        app_private_key_string=k["app_private_key"],
        alipay_public_key_string=k["alipay_public_key"],
        sign_type="RSA2",
    )
    client._gateway = f"{sim}/alipay/gateway.do"
    paid = unique("ALI")
    state = {}

    @check("python-alipay-sdk: precreate answer verifies")
    def _():
        r = client.api_alipay_trade_precreate(subject="tea", out_trade_no=paid, total_amount="10.00")
        expect(r.get("code") == "10000" and r.get("qr_code"), r)

    @check("python-alipay-sdk: the buyer pays and the notification verifies")
    def _():
        sim_pay(sim, "alipay", paid)
        headers, body = notify.next()
        data = dict(urllib.parse.parse_qsl(body.decode()))
        signature = data.pop("sign")
        expect(client.verify(data, signature), "alipay.verify refused the notification")
        expect(data["trade_status"] == "TRADE_SUCCESS" and data["out_trade_no"] == paid, data)
        expect(data["app_id"] == k["app_id"], data)
        state["trade_no"] = data["trade_no"]

    @check("python-alipay-sdk: query by trade_no, 28-character trade_no")
    def _():
        r = client.api_alipay_trade_query(trade_no=state["trade_no"])
        expect(r.get("trade_status") == "TRADE_SUCCESS", r)
        expect(len(r["trade_no"]) == 28, f"trade_no {r['trade_no']!r} is not 28 characters")

    @check("python-alipay-sdk: refund and refund query verify")
    def _():
        r = client.api_alipay_trade_refund(refund_amount="3.00", out_trade_no=paid, out_request_no="R1")
        expect(r.get("code") == "10000" and r.get("refund_fee") == "3.00", r)
        q = client.api_alipay_trade_fastpay_refund_query(out_request_no="R1", out_trade_no=paid)
        expect(q.get("code") == "10000" and q.get("refund_amount") == "3.00", q)

    @check("python-alipay-sdk: close an unpaid trade")
    def _():
        other = unique("ALC")
        client.api_alipay_trade_precreate(subject="tea", out_trade_no=other, total_amount="1.00")
        r = client.api_alipay_trade_close(out_trade_no=other)
        expect(r.get("code") in ("10000", "40004"), r)

    @check("alipay-sdk-python (official): precreate and query answers verify")
    def _():
        from Crypto.PublicKey import RSA
        from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
        from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
        from alipay.aop.api.request.AlipayTradePrecreateRequest import AlipayTradePrecreateRequest
        from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest

        import alipay.aop.api.util.WebUtils as web

        def bare(pem):
            return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))

        # The SDK's transport connects to port 80 or 443 only (and fails to build a URL
        # with any other port): a server on loopback needs the port honoured. Its
        # signing and verification, which is what is judged here, are left as they are.
        def connection(url, query_string, timeout):
            parsed = urllib.parse.urlparse(url)
            conn = web.httplib.HTTPConnection(host=parsed.hostname, port=parsed.port or 80, timeout=timeout)
            return f"{parsed.scheme}://{parsed.netloc}{parsed.path}?{query_string}", conn

        web.get_http_connection = connection

        config = AlipayClientConfig()
        config.server_url = f"{sim}/alipay/gateway.do"
        config.app_id = k["app_id"]
        config.app_private_key = bare(RSA.importKey(k["app_private_key"]).export_key("PEM", pkcs=1).decode())
        config.alipay_public_key = bare(k["alipay_public_key"])
        official = DefaultAlipayClient(alipay_client_config=config)
        no = unique("OFF")
        req = AlipayTradePrecreateRequest()
        req.biz_content = {"out_trade_no": no, "total_amount": "2.00", "subject": "tea"}
        answer = json.loads(official.execute(req))
        expect(answer.get("code") == "10000" and answer.get("qr_code"), answer)
        sim_pay(sim, "alipay", no)
        notify.next()
        q = AlipayTradeQueryRequest()
        q.biz_content = {"out_trade_no": no}
        answer = json.loads(official.execute(q))
        expect(answer.get("trade_status") == "TRADE_SUCCESS", answer)

    @deferred("python-alipay-sdk: the bill download URL answer verifies and its file holds the payment")
    def _():
        r = client.server_api("alipay.data.dataservice.bill.downloadurl.query", {"bill_type": "trade", "bill_date": bill_day})
        url = r.get("bill_download_url")
        expect(r.get("code") == "10000" and url, r)
        with urllib.request.urlopen(url, timeout=10) as f:
            expect(f.read()[:2] == b"PK", "the bill is a zip archive")


def wechat_v2_checks(sim, keys, bill_day):
    from wechatpy.pay import WeChatPay

    k = keys["wechat_v2"]
    reply = b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    notify = Listener((200, reply))
    pay = WeChatPay(appid=k["appid"], api_key=k["api_key"], mch_id=k["mch_id"])
    pay.API_BASE_URL = f"{sim}/wechat/"
    paid = unique("WX")
    state = {}

    @check("wechatpy: unifiedorder NATIVE answer verifies")
    def _():
        r = pay.order.create(trade_type="NATIVE", body="tea", total_fee=1000, notify_url=notify.url,
                             out_trade_no=paid, product_id=paid, client_ip="127.0.0.1")
        expect(r.get("code_url", "").startswith("weixin://wxpay/bizpayurl"), r)

    @check("wechatpy: the payment notification verifies")
    def _():
        sim_pay(sim, "wechat", paid)
        _, body = notify.next()
        result = pay.parse_payment_result(body)
        expect(result["out_trade_no"] == paid and result["result_code"] == "SUCCESS", result)
        expect(len(result["transaction_id"]) == 28, f"transaction_id {result['transaction_id']!r} is not 28 digits")
        state["transaction_id"] = result["transaction_id"]

    @check("wechatpy: orderquery by transaction_id alone")
    def _():
        r = pay.order.query(transaction_id=state["transaction_id"])
        expect(r.get("trade_state") == "SUCCESS" and r.get("out_trade_no") == paid, r)

    @check("wechatpy: refund, then refundquery by each of its four ids")
    def _():
        r = pay.refund.apply(total_fee=1000, refund_fee=400, out_refund_no=f"{paid}R", out_trade_no=paid,
                             notify_url=notify.url)
        expect(r.get("result_code") == "SUCCESS", r)
        refund_id = r["refund_id"]
        for by in ({"out_refund_no": f"{paid}R"}, {"refund_id": refund_id},
                   {"transaction_id": state["transaction_id"]}, {"out_trade_no": paid}):
            q = pay.refund.query(**by)
            expect(q.get("refund_count") == "1" and q.get("refund_fee_0") == "400", (by, q))

    @check("wechatpy: the refund notification's req_info decrypts")
    def _():
        _, body = notify.next()
        r = pay.parse_refund_notify_result(body)
        expect(r["out_refund_no"] == f"{paid}R" and r["refund_status"] == "SUCCESS", r)
        expect(r["refund_fee"] == 400 and r["out_trade_no"] == paid, r)

    @check("wechatpy: closeorder of an unpaid trade")
    def _():
        other = unique("WXC")
        pay.order.create(trade_type="NATIVE", body="tea", total_fee=100, notify_url=notify.url,
                         out_trade_no=other, product_id=other, client_ip="127.0.0.1")
        r = pay.order.close(other)
        expect(r.get("result_code") == "SUCCESS", r)

    @deferred("wechatpy: downloadbill")
    def _():
        text = pay.tools.download_bill(bill_day.replace("-", ""))
        text = text if isinstance(text, str) else getattr(text, "text", str(text))
        expect(paid in text, "the bill lists the payment")


def wechat_v3_checks(sim, keys, bill_day):
    import wechatpayv3.core as core
    from wechatpayv3 import WeChatPay, WeChatPayType

    k = keys["wechat_v3"]
    notify = Listener((204, b""))
    fetch = core.Core._init_certificates
    core.Core._init_certificates = lambda self: None
    try:
        pay = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=k["mchid"], private_key=k["merchant_private_key"],
                        cert_serial_no=k["merchant_serial"], appid=k["appid"], apiv3_key=k["api_v3_key"],
                        notify_url=notify.url)
    finally:
        core.Core._init_certificates = fetch
    pay._core._gate_way = sim
    paid = unique("V3")
    state = {}

    @check("wechatpayv3: platform certificates download and decrypt")
    def _():
        pay._core._init_certificates()
        expect(pay._core._certificates, "no certificate")

    @check("wechatpayv3: native pay answer verifies")
    def _():
        code, message = pay.pay(description="tea", out_trade_no=paid, amount={"total": 1000})
        expect(code == 200 and json.loads(message)["code_url"].startswith("weixin://"), (code, message))

    @check("wechatpayv3: the notification verifies and decrypts")
    def _():
        sim_pay(sim, "wechat", paid)
        headers, body = notify.next()
        result = pay.callback(headers, body)
        expect(result and result["event_type"] == "TRANSACTION.SUCCESS", result)
        resource = result["resource"]
        expect(resource["out_trade_no"] == paid and resource["trade_state"] == "SUCCESS", resource)
        state["transaction_id"] = resource["transaction_id"]

    @check("wechatpayv3: query by transaction_id and by out_trade_no")
    def _():
        for by in ({"transaction_id": state["transaction_id"]}, {"out_trade_no": paid}):
            code, message = pay.query(**by)
            body = json.loads(message)
            expect(code == 200 and body["trade_state"] == "SUCCESS", (by, code, message))
            expect(body["trade_state_desc"] != body["trade_state"], f"trade_state_desc {body['trade_state_desc']!r}")

    @check("wechatpayv3: refund and query_refund verify")
    def _():
        code, message = pay.refund(out_refund_no=f"{paid}R", amount={"refund": 300, "total": 1000, "currency": "CNY"},
                                   out_trade_no=paid)
        expect(code == 200, (code, message))
        code, message = pay.query_refund(out_refund_no=f"{paid}R")
        expect(code == 200 and json.loads(message)["amount"]["refund"] == 300, (code, message))

    @check("wechatpayv3: the REFUND.SUCCESS notification verifies and decrypts")
    def _():
        while True:
            headers, body = notify.next()
            result = pay.callback(headers, body)
            expect(result, "the notification did not verify")
            if result["event_type"] != "TRANSACTION.SUCCESS":
                break
        expect(result["event_type"] == "REFUND.SUCCESS", result)
        resource = result["resource"]
        expect(resource["out_refund_no"] == f"{paid}R" and resource["refund_status"] == "SUCCESS", resource)
        expect(resource["amount"]["refund"] == 300 and "appid" not in resource, resource)

    @check("wechatpayv3: close an unpaid trade (a signed 204)")
    def _():
        other = unique("V3C")
        pay.pay(description="tea", out_trade_no=other, amount={"total": 100})
        code, message = pay.close(out_trade_no=other)
        expect(code == 204, (code, message))

    @deferred("wechatpayv3: tradebill GZIP, downloaded and matching its hash")
    def _():
        import hashlib

        code, message = pay.trade_bill(bill_date=bill_day, tar_type="GZIP")
        expect(code == 200, (code, message))
        answer = json.loads(message)
        code, raw = pay.download_bill(answer["download_url"])
        expect(code == 200 and isinstance(raw, bytes), (code, raw))
        plain = gzip.decompress(raw)
        expect(hashlib.sha1(plain).hexdigest().upper() == answer["hash_value"].upper(), "the hash is the plain bill's")
        expect(paid.encode() in plain, "the bill lists the payment")

    @check("wechatpayv3: answers carry WeChat's header names")
    def _():
        # An unauthenticated call is refused, and signed like every answer.
        try:
            urllib.request.urlopen(urllib.request.Request(f"{sim}/v3/certificates"), timeout=10)
            raise AssertionError("an unauthenticated call was answered")
        except urllib.error.HTTPError as e:
            status, names = e.code, {name for name, _ in e.headers.items()}
        wanted = {"Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial",
                  "Wechatpay-Signature-Type"}
        expect(status == 401 and wanted <= names, (status, sorted(names)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim", required=True)
    parser.add_argument("--keys", required=True)
    args = parser.parse_args()
    with open(args.keys, encoding="utf-8") as f:
        keys = json.load(f)
    sim = args.sim.rstrip("/")
    # Bills are by Beijing day. Today's payments are in today's bill, which exists once
    # the day is over: the simulator's clock is moved a day on before bills are asked for.
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))
    for run in (alipay_checks, wechat_v2_checks, wechat_v3_checks):
        run(sim, keys, today)
    post_json(f"{sim}/sim/clock", {"advance_secs": 86_400})
    for name, fn in DEFERRED:
        check(name)(fn)
    failed = [name for name, e in RESULTS if e is not None]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
