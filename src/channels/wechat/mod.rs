//! WeChat Pay: API v2 (XML, MD5 / HMAC-SHA256) and API v3 (JSON, SHA256-RSA, AES-256-GCM
//! resources). Both APIs serve the same merchant accounts and the same bill format.

pub mod bill;
pub mod v2;
pub mod v3;
