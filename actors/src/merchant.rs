//! Merchants: their profile, and the actor that authenticates their requests
//! (signature, timestamp window, nonce replay) and will own their limits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message};

use crate::error::{CoreError, CoreResult, ErrorCode};
use crate::signing::{self, SignType};

/// Whether a merchant may transact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MerchantStatus {
    /// May transact.
    Active,
    /// Refused with MERCHANT_DISABLED.
    Disabled,
}

/// A merchant's configuration.
#[derive(Clone, serde::Deserialize)]
pub struct MerchantProfile {
    /// The merchant's id.
    pub merchant_id: String,
    /// Display name.
    pub name: String,
    /// The API secret. Never logged (see the Debug impl) and never returned.
    pub secret: String,
    /// Legacy merchants may sign with MD5.
    #[serde(default)]
    pub legacy_md5: bool,
    /// Whether the merchant may transact.
    pub status: MerchantStatus,
    /// Order lifetime when a request gives none.
    #[serde(default = "default_expire_minutes")]
    pub expire_minutes: u32,
}

fn default_expire_minutes() -> u32 {
    30
}

impl std::fmt::Debug for MerchantProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerchantProfile")
            .field("merchant_id", &self.merchant_id)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("legacy_md5", &self.legacy_md5)
            .field("status", &self.status)
            .finish()
    }
}

/// How strictly requests are checked.
#[derive(Debug, Clone, Copy)]
pub struct AuthPolicy {
    /// Accepted clock difference either way, seconds (SPEC F2: 300).
    pub timestamp_window_secs: i64,
    /// Most nonces remembered per merchant; beyond it new nonces are refused.
    pub max_nonces: usize,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy { timestamp_window_secs: 300, max_nonces: 1_000_000 }
    }
}

/// The actor that owns one merchant: its profile and the nonces it has seen.
pub struct MerchantActor {
    profile: Arc<MerchantProfile>,
    policy: AuthPolicy,
    /// nonce → unix seconds after which it may be forgotten.
    nonces: HashMap<String, i64>,
}

impl MerchantActor {
    /// A merchant actor.
    pub fn new(profile: MerchantProfile, policy: AuthPolicy) -> MerchantActor {
        MerchantActor { profile: Arc::new(profile), policy, nonces: HashMap::new() }
    }

    /// Checks a signed request at `now_secs`; pure apart from remembering the nonce.
    pub fn authenticate(
        &mut self,
        params: &BTreeMap<String, String>,
        now_secs: i64,
    ) -> CoreResult<Arc<MerchantProfile>> {
        let p = &self.profile;
        if p.status != MerchantStatus::Active {
            return Err(CoreError::new(ErrorCode::MerchantDisabled, "merchant is disabled"));
        }
        let sign_type = match params.get("sign_type").map(String::as_str) {
            None | Some("") => SignType::HmacSha256,
            Some(text) => {
                SignType::parse(text).ok_or_else(|| CoreError::invalid("sign_type", "must be HMAC-SHA256 or MD5"))?
            }
        };
        if sign_type == SignType::Md5 && !p.legacy_md5 {
            return Err(CoreError::new(
                ErrorCode::SignError,
                "sign_type MD5 is only accepted for merchants in legacy mode; use HMAC-SHA256",
            ));
        }
        if !signing::verify(params, &p.secret, sign_type) {
            return Err(CoreError::new(ErrorCode::SignError, "signature does not match"));
        }
        let ts: i64 = params
            .get("timestamp")
            .filter(|t| (1..=12).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| CoreError::invalid("timestamp", "must be unix seconds as a string of digits"))?;
        let window = self.policy.timestamp_window_secs;
        if (now_secs - ts).abs() > window {
            return Err(CoreError::new(
                ErrorCode::TimestampExpired,
                format!("timestamp is more than {window} seconds from the server time"),
            ));
        }
        if let Some(nonce) = params.get("nonce").filter(|n| !n.is_empty()) {
            self.remember_nonce(nonce, now_secs)?;
        }
        Ok(Arc::clone(&self.profile))
    }

    fn remember_nonce(&mut self, nonce: &str, now_secs: i64) -> CoreResult<()> {
        if nonce.len() > 64 {
            return Err(CoreError::invalid("nonce", "must be at most 64 characters"));
        }
        if self.nonces.get(nonce).is_some_and(|&until| until >= now_secs) {
            return Err(CoreError::new(ErrorCode::TimestampExpired, "nonce was already used"));
        }
        if self.nonces.len() >= self.policy.max_nonces {
            self.nonces.retain(|_, until| *until >= now_secs);
            if self.nonces.len() >= self.policy.max_nonces {
                return Err(CoreError::overloaded());
            }
        }
        // Remembered for the whole window either side, since that is how long the
        // signed request stays acceptable.
        self.nonces.insert(nonce.to_owned(), now_secs + 2 * self.policy.timestamp_window_secs);
        Ok(())
    }
}

impl Actor for MerchantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// Authenticate a signed merchant request.
#[derive(Message)]
#[rtype(result = "CoreResult<Arc<MerchantProfile>>")]
pub struct Authenticate {
    /// Every request parameter, `sign` included.
    pub params: Arc<BTreeMap<String, String>>,
    /// Server time, unix seconds.
    pub now_secs: i64,
}

impl Handler<Authenticate> for MerchantActor {
    type Result = CoreResult<Arc<MerchantProfile>>;

    fn handle(&mut self, msg: Authenticate, _: &mut Context<Self>) -> Self::Result {
        self.authenticate(&msg.params, msg.now_secs)
    }
}

/// Every merchant of the node, by id.
#[derive(Clone, Default)]
pub struct MerchantDirectory {
    actors: Arc<HashMap<String, Addr<MerchantActor>>>,
}

impl MerchantDirectory {
    /// A directory of started merchant actors.
    pub fn new(actors: HashMap<String, Addr<MerchantActor>>) -> MerchantDirectory {
        MerchantDirectory { actors: Arc::new(actors) }
    }

    /// Authenticates a request with the merchant it names.
    pub async fn authenticate(
        &self,
        params: Arc<BTreeMap<String, String>>,
        now_secs: i64,
    ) -> CoreResult<Arc<MerchantProfile>> {
        let id = params.get("merchant_id").map(String::as_str).unwrap_or_default();
        let addr =
            self.actors.get(id).ok_or_else(|| CoreError::new(ErrorCode::MerchantNotFound, "no such merchant"))?;
        addr.send(Authenticate { params, now_secs })
            .await
            .map_err(|_| CoreError::system("merchant actor unavailable"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(legacy: bool) -> MerchantActor {
        MerchantActor::new(
            MerchantProfile {
                merchant_id: "M1".into(),
                name: "m".into(),
                secret: "sec".into(),
                legacy_md5: legacy,
                status: MerchantStatus::Active,
                expire_minutes: 30,
            },
            AuthPolicy::default(),
        )
    }

    fn signed(extra: &[(&str, &str)], st: SignType) -> BTreeMap<String, String> {
        let mut p: BTreeMap<String, String> = [("merchant_id", "M1"), ("timestamp", "1000")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in extra {
            p.insert(k.to_string(), v.to_string());
        }
        let s = signing::sign(&p, "sec", st);
        p.insert("sign".into(), s);
        p
    }

    fn code(r: CoreResult<Arc<MerchantProfile>>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn checks_sign_time_and_nonce() {
        let mut a = actor(false);
        assert_eq!(code(a.authenticate(&signed(&[], SignType::HmacSha256), 1_200)), None);
        assert_eq!(code(a.authenticate(&signed(&[], SignType::HmacSha256), 1_301)), Some(ErrorCode::TimestampExpired));
        assert_eq!(code(a.authenticate(&signed(&[], SignType::HmacSha256), 699)), Some(ErrorCode::TimestampExpired));
        let mut bad = signed(&[], SignType::HmacSha256);
        bad.insert("amount".into(), "1.00".into());
        assert_eq!(code(a.authenticate(&bad, 1_000)), Some(ErrorCode::SignError));
        let n = signed(&[("nonce", "abc")], SignType::HmacSha256);
        assert_eq!(code(a.authenticate(&n, 1_000)), None);
        assert_eq!(code(a.authenticate(&n, 1_001)), Some(ErrorCode::TimestampExpired));
    }

    #[test]
    fn md5_only_for_legacy_merchants() {
        let p = signed(&[("sign_type", "MD5")], SignType::Md5);
        assert_eq!(code(actor(false).authenticate(&p, 1_000)), Some(ErrorCode::SignError));
        assert_eq!(code(actor(true).authenticate(&p, 1_000)), None);
    }
}
