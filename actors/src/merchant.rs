//! Merchants: their profile, and the authentication of their requests (signature,
//! timestamp window, nonce replay).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::error::{CoreError, CoreResult, ErrorCode};
use crate::order::PayMethod;
use crate::rate_limit::{RateLimit, TokenBucket};
use crate::signing::{self, ParamMap, SignType};
use crate::strategy::Strategy;

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
    /// Where notifications go for orders that name no `notify_url`.
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Whether notifications may go to loopback, private, link-local, unique-local or
    /// multicast addresses (a merchant on the same network; the demo). Off by default:
    /// such a URL is a way to make the gateway call into its own network.
    #[serde(default)]
    pub allow_private_notify: bool,
    /// How many requests a second it may make, and how many at once (none: no limit of
    /// its own; the node's still applies).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// The routing strategy per pay method (`ALIPAY = "lowest_fee"`) as configured; a
    /// method not named is routed by priority. Operators may change them while the
    /// node runs ([`MerchantDirectory::set_strategy`]).
    #[serde(default)]
    pub routing: BTreeMap<String, Strategy>,
}

impl MerchantProfile {
    /// How this merchant's payments by `method` are routed, as configured.
    pub fn strategy(&self, method: PayMethod) -> Strategy {
        self.routing.get(method.as_str()).copied().unwrap_or_default()
    }

    /// How this merchant's requests and notifications are signed by default.
    pub fn sign_type(&self) -> SignType {
        if self.legacy_md5 {
            SignType::Md5
        } else {
            SignType::HmacSha256
        }
    }
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
            .field("notify_url", &self.notify_url)
            .field("allow_private_notify", &self.allow_private_notify)
            .finish()
    }
}

/// How strictly requests are checked.
#[derive(Debug, Clone, Copy)]
pub struct AuthPolicy {
    /// Accepted clock difference either way, seconds (300 by default).
    pub timestamp_window_secs: i64,
    /// Most nonces remembered per merchant; beyond it new nonces are refused.
    pub max_nonces: usize,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy { timestamp_window_secs: 300, max_nonces: 1_000_000 }
    }
}

/// Checks a signed request against the merchant's profile: status, sign type, signature
/// and timestamp window. Pure, so it runs on the caller's thread; only the nonce (state)
/// goes to the merchant's actor.
pub fn check_request(
    profile: &MerchantProfile,
    params: &impl ParamMap,
    now_secs: i64,
    policy: &AuthPolicy,
) -> CoreResult<()> {
    if profile.status != MerchantStatus::Active {
        return Err(CoreError::new(ErrorCode::MerchantDisabled, "merchant is disabled"));
    }
    let sign_type = match params.param("sign_type") {
        None | Some("") => SignType::HmacSha256,
        Some(text) => {
            SignType::parse(text).ok_or_else(|| CoreError::invalid("sign_type", "must be HMAC-SHA256 or MD5"))?
        }
    };
    if sign_type == SignType::Md5 && !profile.legacy_md5 {
        return Err(CoreError::new(
            ErrorCode::SignError,
            "sign_type MD5 is only accepted for merchants in legacy mode; use HMAC-SHA256",
        ));
    }
    if !signing::verify(params, &profile.secret, sign_type) {
        return Err(CoreError::new(ErrorCode::SignError, "signature does not match"));
    }
    let ts: i64 = params
        .param("timestamp")
        .filter(|t| (1..=12).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| CoreError::invalid("timestamp", "must be unix seconds as a string of digits"))?;
    let window = policy.timestamp_window_secs;
    if (now_secs - ts).abs() > window {
        return Err(CoreError::new(
            ErrorCode::TimestampExpired,
            format!("timestamp is more than {window} seconds from the server time"),
        ));
    }
    if params.param("nonce").is_some_and(|n| n.len() > 64) {
        return Err(CoreError::invalid("nonce", "must be at most 64 characters"));
    }
    Ok(())
}

/// The nonces one merchant's signed requests have used. Concurrent, so the check runs on
/// the caller's thread: a hop to an actor per request cost more than the check itself.
pub struct NonceBook {
    policy: AuthPolicy,
    /// nonce → unix seconds after which it may be forgotten.
    seen: DashMap<String, i64>,
    /// Entries, counted on insert and recounted when expired ones are dropped.
    entries: AtomicUsize,
}

impl NonceBook {
    /// An empty book.
    pub fn new(policy: AuthPolicy) -> NonceBook {
        NonceBook { policy, seen: DashMap::new(), entries: AtomicUsize::new(0) }
    }

    /// Accepts a nonce once within the window either side of `now_secs`.
    pub fn use_once(&self, nonce: &str, now_secs: i64) -> CoreResult<()> {
        if self.entries.load(Ordering::Relaxed) >= self.policy.max_nonces {
            self.seen.retain(|_, until| *until >= now_secs);
            self.entries.store(self.seen.len(), Ordering::Relaxed);
            if self.seen.len() >= self.policy.max_nonces {
                return Err(CoreError::overloaded());
            }
        }
        // Remembered for the whole window either side: that is how long the signed
        // request stays acceptable.
        let until = now_secs + 2 * self.policy.timestamp_window_secs;
        match self.seen.entry(nonce.to_owned()) {
            Entry::Occupied(e) if *e.get() >= now_secs => {
                Err(CoreError::new(ErrorCode::TimestampExpired, "nonce was already used"))
            }
            Entry::Occupied(mut e) => {
                e.insert(until);
                Ok(())
            }
            Entry::Vacant(e) => {
                e.insert(until);
                self.entries.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

struct Merchant {
    profile: Arc<MerchantProfile>,
    nonces: NonceBook,
    routing: LiveRouting,
    /// Its request rate ([`MerchantProfile::rate_limit`]).
    rate: Option<TokenBucket>,
}

/// The strategy in force for each pay method of one merchant: read on every payment
/// without a lock, changed by operators.
struct LiveRouting([AtomicU8; PayMethod::ALL.len()]);

impl LiveRouting {
    fn of(profile: &MerchantProfile) -> LiveRouting {
        LiveRouting(PayMethod::ALL.map(|m| AtomicU8::new(strategy_index(profile.strategy(m)))))
    }

    fn get(&self, method: PayMethod) -> Strategy {
        let stored = self.slot(method).map_or(0, |a| a.load(Ordering::Relaxed));
        Strategy::ALL.get(usize::from(stored)).copied().unwrap_or_default()
    }

    fn set(&self, method: PayMethod, strategy: Strategy) {
        if let Some(a) = self.slot(method) {
            a.store(strategy_index(strategy), Ordering::Relaxed);
        }
    }

    fn slot(&self, method: PayMethod) -> Option<&AtomicU8> {
        PayMethod::ALL.iter().position(|m| *m == method).and_then(|i| self.0.get(i))
    }
}

fn strategy_index(strategy: Strategy) -> u8 {
    // Four strategies: the position always fits.
    Strategy::ALL.iter().position(|s| *s == strategy).and_then(|i| u8::try_from(i).ok()).unwrap_or(0)
}

/// Every merchant of the node, by id.
#[derive(Clone, Default)]
pub struct MerchantDirectory {
    merchants: Arc<HashMap<String, Merchant>>,
    policy: AuthPolicy,
}

impl MerchantDirectory {
    /// A directory of merchants.
    pub fn new(merchants: Vec<MerchantProfile>, policy: AuthPolicy) -> MerchantDirectory {
        let merchants = merchants
            .into_iter()
            .map(|p| {
                let routing = LiveRouting::of(&p);
                let rate = p.rate_limit.and_then(TokenBucket::new);
                let nonces = NonceBook::new(policy);
                (p.merchant_id.clone(), Merchant { profile: Arc::new(p), nonces, routing, rate })
            })
            .collect();
        MerchantDirectory { merchants: Arc::new(merchants), policy }
    }

    /// The merchant with `merchant_id`.
    pub fn get(&self, merchant_id: &str) -> Option<Arc<MerchantProfile>> {
        self.merchants.get(merchant_id).map(|m| Arc::clone(&m.profile))
    }

    /// Every merchant.
    pub fn profiles(&self) -> impl Iterator<Item = &Arc<MerchantProfile>> {
        self.merchants.values().map(|m| &m.profile)
    }

    /// How merchant `merchant_id`'s payments by `method` are routed now (an unknown
    /// merchant's: by priority).
    pub fn strategy(&self, merchant_id: &str, method: PayMethod) -> Strategy {
        self.merchants.get(merchant_id).map(|m| m.routing.get(method)).unwrap_or_default()
    }

    /// Every pay method's strategy in force for `merchant_id`, if it is a merchant.
    pub fn routing(&self, merchant_id: &str) -> Option<BTreeMap<PayMethod, Strategy>> {
        let m = self.merchants.get(merchant_id)?;
        Some(PayMethod::ALL.iter().map(|method| (*method, m.routing.get(*method))).collect())
    }

    /// Takes one request of `merchant_id` from its rate limit at `now_us` (a monotonic
    /// clock); `Err`: how long until it may make another. No limit, no wait.
    pub fn admit(&self, merchant_id: &str, now_us: i64) -> Result<(), std::time::Duration> {
        match self.merchants.get(merchant_id).and_then(|m| m.rate.as_ref()) {
            Some(bucket) => bucket.take(now_us),
            None => Ok(()),
        }
    }

    /// Routes `merchant_id`'s payments by `method` with `strategy` from the next
    /// payment on. `false`: no such merchant.
    pub fn set_strategy(&self, merchant_id: &str, method: PayMethod, strategy: Strategy) -> bool {
        self.merchants.get(merchant_id).map(|m| m.routing.set(method, strategy)).is_some()
    }

    /// Authenticates a request with the merchant it names.
    pub fn authenticate(&self, params: &impl ParamMap, now_secs: i64) -> CoreResult<Arc<MerchantProfile>> {
        let id = params.param("merchant_id").unwrap_or_default();
        let m =
            self.merchants.get(id).ok_or_else(|| CoreError::new(ErrorCode::MerchantNotFound, "no such merchant"))?;
        check_request(&m.profile, params, now_secs, &self.policy)?;
        if let Some(nonce) = params.param("nonce").filter(|n| !n.is_empty()) {
            m.nonces.use_once(nonce, now_secs)?;
        }
        Ok(Arc::clone(&m.profile))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn profile(legacy: bool) -> MerchantProfile {
        MerchantProfile {
            merchant_id: "M1".into(),
            name: "m".into(),
            secret: "sec".into(),
            legacy_md5: legacy,
            status: MerchantStatus::Active,
            expire_minutes: 30,
            notify_url: None,
            allow_private_notify: false,
            rate_limit: None,
            routing: Default::default(),
        }
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

    fn code(r: CoreResult<()>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn routing_starts_as_configured_and_changes_per_method() {
        let mut configured = profile(false);
        configured.routing.insert("WECHAT_PAY".into(), Strategy::Adaptive);
        let d = MerchantDirectory::new(vec![configured], AuthPolicy::default());
        assert_eq!(d.strategy("M1", PayMethod::WechatPay), Strategy::Adaptive);
        assert_eq!(d.strategy("M1", PayMethod::Alipay), Strategy::Priority, "not named: priority");
        for s in Strategy::ALL {
            assert!(d.set_strategy("M1", PayMethod::Alipay, s));
            assert_eq!(d.strategy("M1", PayMethod::Alipay), s);
        }
        assert_eq!(d.strategy("M1", PayMethod::WechatPay), Strategy::Adaptive, "other methods untouched");
        assert!(!d.set_strategy("M2", PayMethod::Alipay, Strategy::Weighted));
        assert_eq!(d.routing("M1").map(|r| r.len()), Some(PayMethod::ALL.len()));
        assert!(d.routing("M2").is_none());
    }

    #[test]
    fn checks_status_sign_and_time() {
        let (p, policy) = (profile(false), AuthPolicy::default());
        let ok = signed(&[], SignType::HmacSha256);
        assert_eq!(code(check_request(&p, &ok, 1_200, &policy)), None);
        assert_eq!(code(check_request(&p, &ok, 1_301, &policy)), Some(ErrorCode::TimestampExpired));
        assert_eq!(code(check_request(&p, &ok, 699, &policy)), Some(ErrorCode::TimestampExpired));
        let mut bad = ok.clone();
        bad.insert("amount".into(), "1.00".into());
        assert_eq!(code(check_request(&p, &bad, 1_000, &policy)), Some(ErrorCode::SignError));
        let disabled = MerchantProfile { status: MerchantStatus::Disabled, ..profile(false) };
        assert_eq!(code(check_request(&disabled, &ok, 1_000, &policy)), Some(ErrorCode::MerchantDisabled));
    }

    #[test]
    fn md5_only_for_legacy_merchants() {
        let p = signed(&[("sign_type", "MD5")], SignType::Md5);
        let policy = AuthPolicy::default();
        assert_eq!(code(check_request(&profile(false), &p, 1_000, &policy)), Some(ErrorCode::SignError));
        assert_eq!(code(check_request(&profile(true), &p, 1_000, &policy)), None);
    }

    #[test]
    fn a_nonce_is_accepted_once_per_window() {
        let book = NonceBook::new(AuthPolicy::default());
        assert_eq!(code(book.use_once("n1", 1_000)), None);
        assert_eq!(code(book.use_once("n1", 1_001)), Some(ErrorCode::TimestampExpired));
        assert_eq!(code(book.use_once("n1", 1_000 + 601)), None, "forgotten after the window");
    }

    #[test]
    fn a_full_book_drops_expired_nonces_and_refuses_only_when_all_are_live() {
        let book = NonceBook::new(AuthPolicy { max_nonces: 2, ..AuthPolicy::default() });
        assert_eq!(code(book.use_once("a", 1_000)), None);
        assert_eq!(code(book.use_once("b", 1_000)), None);
        assert_eq!(code(book.use_once("c", 1_001)), Some(ErrorCode::RateLimited));
        assert_eq!(code(book.use_once("c", 2_000)), None, "a and b expired and were dropped");
        assert_eq!(code(book.use_once("a", 2_000)), None);
    }
}
