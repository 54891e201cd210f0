"""Signs every generated body as the demo merchant, so the fuzzer reaches past SIGN_ERROR.

Only well-formed auth fields are replaced: a malformed one is a negative case the server
must refuse, and replacing it would turn the case into a valid one.
"""
import hashlib, hmac, re, time
import schemathesis

KEY = "demo-secret-change-me-0123456789"


def well_formed(body, field, pattern):
    value = body.get(field)
    return value is None or (isinstance(value, str) and re.fullmatch(pattern, value))


@schemathesis.hook
def map_body(ctx, body):
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        return body
    if not (well_formed(body, "merchant_id", r"[A-Za-z0-9_-]{1,32}")
            and well_formed(body, "timestamp", r"[0-9]{1,12}")
            and well_formed(body, "sign", r"[0-9A-Fa-f]{32}([0-9A-Fa-f]{32})?")):
        return body
    if "merchant_id" in body:
        body["merchant_id"] = "M20240101001"
    if "timestamp" in body:
        body["timestamp"] = str(int(time.time()))
    if "sign" in body:
        body.pop("sign")
        text = "&".join(f"{k}={v}" for k, v in sorted(body.items()) if v != "") + "&key=" + KEY
        if body.get("sign_type") == "MD5":
            body["sign"] = hashlib.md5(text.encode()).hexdigest().upper()
        else:
            body["sign"] = hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return body
