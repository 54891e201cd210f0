//! WeChat Pay: API v2 (XML, MD5 / HMAC-SHA256).

pub mod v2;
