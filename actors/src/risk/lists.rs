//! Block and allow lists: users, merchants, devices, IP addresses, CIDR ranges and the
//! buyers' cards or payment accounts.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::RiskInput;
use crate::error::CoreError;

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    /// Payments matching it are denied.
    Block,
    /// Payments matching it (and no block entry) are allowed without the other rules.
    Allow,
}

/// What an entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// The merchant's `user_id` of the buyer.
    UserId,
    /// The merchant.
    MerchantId,
    /// The buyer's `device_id`.
    DeviceId,
    /// The buyer's `client_ip`, one address.
    Ip,
    /// The buyer's `client_ip`, a range (`10.0.0.0/8`, `2001:db8::/32`).
    Cidr,
    /// The buyer's card or payment account (`buyer_account`: a token or fingerprint the
    /// merchant's card vault or wallet gives, the same for every payment with it).
    Account,
}

impl ListName {
    /// The list named `name` ([`ListName::as_str`]).
    pub fn parse(name: &str) -> Option<ListName> {
        [ListName::Block, ListName::Allow].into_iter().find(|l| l.as_str() == name)
    }

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ListName::Block => "block",
            ListName::Allow => "allow",
        }
    }
}

impl ListKind {
    /// Every kind.
    pub const ALL: [ListKind; 6] =
        [ListKind::UserId, ListKind::MerchantId, ListKind::DeviceId, ListKind::Ip, ListKind::Cidr, ListKind::Account];

    /// The kind named `name` ([`ListKind::as_str`]).
    pub fn parse(name: &str) -> Option<ListKind> {
        ListKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ListKind::UserId => "user_id",
            ListKind::MerchantId => "merchant_id",
            ListKind::DeviceId => "device_id",
            ListKind::Ip => "ip",
            ListKind::Cidr => "cidr",
            ListKind::Account => "account",
        }
    }
}

/// One list entry, as operators write it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListEntry {
    /// Which list.
    pub list: ListName,
    /// What it matches.
    pub kind: ListKind,
    /// The value: an id, an address, a range.
    pub value: String,
}

impl ListEntry {
    /// The entry in its canonical form (an address or range as the parser writes it),
    /// or why it is not one.
    pub fn canonical(mut self) -> Result<ListEntry, CoreError> {
        let value = self.value.trim();
        if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
            return Err(CoreError::invalid("value", "must be 1-128 characters, no control characters"));
        }
        self.value = match self.kind {
            ListKind::Ip => value
                .parse::<IpAddr>()
                .map_err(|_| CoreError::invalid("value", format_args!("{value:?} is not an IP address")))?
                .to_string(),
            ListKind::Cidr => value
                .parse::<IpNet>()
                .map_err(|_| CoreError::invalid("value", format_args!("{value:?} is not a CIDR range")))?
                .trunc()
                .to_string(),
            _ => value.to_owned(),
        };
        Ok(self)
    }
}

/// What the lists say of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListVerdict {
    /// On a block list, by this kind of entry.
    Blocked(ListKind),
    /// On an allow list (and on no block list), by this kind of entry.
    Allowed(ListKind),
}

/// Every list, for lookups on the pay path without allocating.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    entries: BTreeSet<ListEntry>,
    /// Ids (users, merchants, devices) → the lists and kinds naming them.
    ids: HashMap<String, Vec<(ListName, ListKind)>>,
    /// Single addresses → the lists naming them.
    ips: HashMap<IpAddr, Vec<ListName>>,
    ranges: Vec<(ListName, IpNet)>,
}

impl Lists {
    /// Lists holding `entries` (each already canonical).
    pub fn new(entries: impl IntoIterator<Item = ListEntry>) -> Lists {
        let mut lists = Lists::default();
        for e in entries {
            lists.insert(e);
        }
        lists
    }

    /// Adds an entry; `false` if it was there.
    pub fn insert(&mut self, entry: ListEntry) -> bool {
        if !self.entries.insert(entry.clone()) {
            return false;
        }
        match entry.kind {
            ListKind::Cidr => self.ranges.extend(entry.value.parse::<IpNet>().ok().map(|net| (entry.list, net))),
            ListKind::Ip => {
                if let Ok(ip) = entry.value.parse::<IpAddr>() {
                    self.ips.entry(ip).or_default().push(entry.list);
                }
            }
            kind => self.ids.entry(entry.value).or_default().push((entry.list, kind)),
        }
        true
    }

    /// Removes an entry; `false` if it was not there.
    pub fn remove(&mut self, entry: &ListEntry) -> bool {
        if !self.entries.remove(entry) {
            return false;
        }
        match entry.kind {
            ListKind::Cidr => {
                let net = entry.value.parse::<IpNet>().ok();
                self.ranges.retain(|(l, n)| !(*l == entry.list && Some(*n) == net));
            }
            ListKind::Ip => {
                if let Some(lists) = entry.value.parse::<IpAddr>().ok().and_then(|ip| self.ips.get_mut(&ip)) {
                    lists.retain(|l| *l != entry.list);
                }
                self.ips.retain(|_, lists| !lists.is_empty());
            }
            kind => {
                if let Some(named) = self.ids.get_mut(&entry.value) {
                    named.retain(|n| *n != (entry.list, kind));
                    if named.is_empty() {
                        self.ids.remove(&entry.value);
                    }
                }
            }
        }
        true
    }

    /// Every entry, in order.
    pub fn entries(&self) -> impl Iterator<Item = &ListEntry> {
        self.entries.iter()
    }

    /// What the lists say of `payment`. A block entry wins over an allow entry.
    pub fn verdict(&self, payment: &RiskInput<'_>) -> Option<ListVerdict> {
        if self.entries.is_empty() {
            return None;
        }
        let ip = payment.client_ip;
        let keys = [
            (ListKind::MerchantId, Some(payment.merchant_id)),
            (ListKind::UserId, payment.user_id),
            (ListKind::DeviceId, payment.device_id),
            (ListKind::Account, payment.account),
        ];
        // Each value is looked up once; the first block entry decides, else the first
        // allow entry.
        let mut allowed = None;
        let mut note = |list: ListName, kind: ListKind| match list {
            ListName::Block => Some(ListVerdict::Blocked(kind)),
            ListName::Allow => {
                allowed = allowed.or(Some(ListVerdict::Allowed(kind)));
                None
            }
        };
        for (kind, value) in keys {
            let Some(named) = value.and_then(|v| self.ids.get(v)) else { continue };
            for (list, _) in named.iter().filter(|(_, k)| *k == kind) {
                if let Some(blocked) = note(*list, kind) {
                    return Some(blocked);
                }
            }
        }
        if let Some(ip) = ip {
            for list in self.ips.get(&ip).into_iter().flatten() {
                if let Some(blocked) = note(*list, ListKind::Ip) {
                    return Some(blocked);
                }
            }
            for (list, _) in self.ranges.iter().filter(|(_, net)| net.contains(&ip)) {
                if let Some(blocked) = note(*list, ListKind::Cidr) {
                    return Some(blocked);
                }
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(list: ListName, kind: ListKind, value: &str) -> ListEntry {
        ListEntry { list, kind, value: value.into() }.canonical().unwrap()
    }

    /// A payment of merchant `m` by `user`, from `device` and `ip`, with `account`.
    struct Pay<'a>(&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<&'a str>);

    impl Pay<'_> {
        fn verdict(&self, lists: &Lists) -> Option<ListVerdict> {
            lists.verdict(&RiskInput {
                merchant_id: self.0,
                amount: crate::money::Money::from_minor(100, crate::money::Currency::CNY),
                user_id: self.1,
                device_id: self.2,
                client_ip: self.3.and_then(|ip| ip.parse().ok()),
                account: self.4,
                now_ms: 0,
            })
        }
    }

    #[test]
    fn a_block_entry_of_any_kind_denies_and_wins_over_an_allow_entry() {
        let mut lists = Lists::new([
            entry(ListName::Block, ListKind::UserId, "u-bad"),
            entry(ListName::Block, ListKind::Cidr, "10.1.0.0/16"),
            entry(ListName::Allow, ListKind::UserId, "u-vip"),
            entry(ListName::Allow, ListKind::Ip, "::ffff:1.2.3.4"),
        ]);
        assert_eq!(
            Pay("M1", Some("u-bad"), None, None, None).verdict(&lists),
            Some(ListVerdict::Blocked(ListKind::UserId))
        );
        assert_eq!(
            Pay("M1", Some("u-vip"), None, Some("10.1.2.3"), None).verdict(&lists),
            Some(ListVerdict::Blocked(ListKind::Cidr))
        );
        assert_eq!(
            Pay("M1", Some("u-vip"), None, Some("10.2.0.1"), None).verdict(&lists),
            Some(ListVerdict::Allowed(ListKind::UserId))
        );
        assert_eq!(
            Pay("M1", None, Some("d"), Some("::ffff:1.2.3.4"), None).verdict(&lists),
            Some(ListVerdict::Allowed(ListKind::Ip))
        );
        assert_eq!(Pay("M1", Some("u"), Some("d"), Some("8.8.8.8"), None).verdict(&lists), None);
        assert!(lists.insert(entry(ListName::Block, ListKind::MerchantId, "M1")));
        assert!(!lists.insert(entry(ListName::Block, ListKind::MerchantId, "M1")), "once");
        assert_eq!(Pay("M1", None, None, None, None).verdict(&lists), Some(ListVerdict::Blocked(ListKind::MerchantId)));
        assert!(lists.remove(&entry(ListName::Block, ListKind::Cidr, "10.1.9.9/16")), "the same range");
        assert_eq!(
            Pay("M2", Some("u-vip"), None, Some("10.1.2.3"), None).verdict(&lists),
            Some(ListVerdict::Allowed(ListKind::UserId))
        );
        assert_eq!(lists.entries().count(), 4);
        // An account is matched as an account only: the same text as a user id is not it.
        assert!(lists.insert(entry(ListName::Block, ListKind::Account, "tok_4f9a")));
        assert_eq!(
            Pay("M2", Some("u-vip"), None, None, Some("tok_4f9a")).verdict(&lists),
            Some(ListVerdict::Blocked(ListKind::Account))
        );
        assert_eq!(Pay("M2", Some("tok_4f9a"), None, None, Some("tok_other")).verdict(&lists), None);
    }

    #[test]
    fn entries_are_checked_and_written_one_way() {
        let bad =
            |kind, value: &str| ListEntry { list: ListName::Block, kind, value: value.into() }.canonical().is_err();
        assert!(bad(ListKind::Ip, "1.2.3"));
        assert!(bad(ListKind::Cidr, "10.0.0.0/33"));
        assert!(bad(ListKind::UserId, ""));
        assert!(bad(ListKind::UserId, "a\u{0}b"));
        assert!(bad(ListKind::DeviceId, &"x".repeat(129)));
        assert_eq!(entry(ListName::Block, ListKind::Cidr, "10.9.8.7/8").value, "10.0.0.0/8");
        assert_eq!(entry(ListName::Block, ListKind::Ip, " 2001:DB8::1 ").value, "2001:db8::1");
        // The API's names (serde) and the views' (as_str) are the same.
        for kind in ListKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(ListKind::parse(kind.as_str()), Some(kind));
        }
        for list in [ListName::Block, ListName::Allow] {
            assert_eq!(serde_json::to_value(list).unwrap(), list.as_str());
            assert_eq!(ListName::parse(list.as_str()), Some(list));
        }
    }
}
