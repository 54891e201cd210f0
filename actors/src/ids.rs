//! Identifiers: our payment order numbers and the shard an entity lives on.
//!
//! A `pay_order_no` carries its shard, so anything that knows the number can route to
//! the owning shard without a lookup: `P` + 13-digit unix millis + 4-digit shard +
//! 4-digit sequence, 22 characters in all.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most shards a cluster can have (the shard is four decimal digits of the id).
pub const MAX_SHARDS: u16 = 9999;

/// A shard number, `0..shard_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

/// The shard that owns the order `(merchant_id, order_no)`.
///
/// FNV-1a: stable across processes and versions, which `std`'s hasher is not.
pub fn shard_of(merchant_id: &str, order_no: &str, shard_count: u16) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in merchant_id.bytes().chain(std::iter::once(0)).chain(order_no.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ShardId((h % u64::from(shard_count.max(1))) as u16)
}

/// The key of a merchant's order number (in the registry, the read cache and the
/// views' index). Neither id contains the separator.
pub fn merchant_key(merchant_id: &str, order_no: &str) -> String {
    let mut k = String::with_capacity(merchant_id.len() + order_no.len() + 1);
    k.push_str(merchant_id);
    k.push('\u{1f}');
    k.push_str(order_no);
    k
}

/// Our payment order number (`pay_order_no`).
///
/// Held inline, not on the heap: ids are map keys on every read, and comparing one
/// must not chase a pointer into a cold allocation. Always 22 ASCII bytes (`P` and
/// digits), which both constructors check.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayOrderNo([u8; ID_LEN]);

const ID_LEN: usize = 22;

impl PayOrderNo {
    /// Builds the id for `millis`, `shard` and `seq` (seq < 10000).
    fn compose(millis: u64, shard: ShardId, seq: u16) -> PayOrderNo {
        let mut id = [b'P'; ID_LEN];
        // Each field is written right to left, modulo its width (millis has 13 digits
        // until the year 2286).
        let fields = [(millis, 1..14), (u64::from(shard.0), 14..18), (u64::from(seq), 18..22)];
        for (mut value, range) in fields {
            for digit in id.iter_mut().take(range.end).skip(range.start).rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        PayOrderNo(id)
    }

    /// Parses and checks the shape of an id received from outside.
    pub fn parse(text: &str) -> Option<PayOrderNo> {
        let bytes: [u8; ID_LEN] = text.as_bytes().try_into().ok()?;
        let ok = bytes[0] == b'P' && bytes[1..].iter().all(u8::is_ascii_digit);
        ok.then_some(PayOrderNo(bytes))
    }

    /// The shard encoded in the id.
    pub fn shard(&self) -> ShardId {
        ShardId(self.as_str().get(14..18).and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// The creation millis encoded in the id.
    pub fn millis(&self) -> u64 {
        self.as_str().get(1..14).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // ASCII by construction, so this is never the empty fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for PayOrderNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PayOrderNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PayOrderNo({:?})", self.as_str())
    }
}

/// Encoded as the text it is (so the journal holds the same bytes as when the id was a
/// `String`).
impl Serialize for PayOrderNo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PayOrderNo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl serde::de::Visitor<'_> for Id {
            type Value = PayOrderNo;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 22-character pay_order_no")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PayOrderNo, E> {
                PayOrderNo::parse(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Id)
    }
}

/// Issues unique `pay_order_no`s for one shard.
///
/// Uniqueness across restarts rests on the high-water mark: the generator never issues
/// a millisecond at or below the highest one already journaled, even if the wall clock
/// went backwards.
#[derive(Debug)]
pub struct IdGenerator {
    shard: ShardId,
    last_millis: u64,
    seq: u16,
}

impl IdGenerator {
    /// A generator for `shard` that only issues ids after `high_water_millis`.
    pub fn new(shard: ShardId, high_water_millis: u64) -> IdGenerator {
        IdGenerator { shard, last_millis: high_water_millis, seq: 9999 }
    }

    /// The next id, given the wall clock.
    pub fn next(&mut self, now_millis: u64) -> PayOrderNo {
        if now_millis > self.last_millis {
            self.last_millis = now_millis;
            self.seq = 0;
        } else if self.seq >= 9999 {
            // Sequence exhausted (or first id after a restart in the same ms): borrow
            // the next millisecond; the wall clock catches up.
            self.last_millis += 1;
            self.seq = 0;
        } else {
            self.seq += 1;
        }
        PayOrderNo::compose(self.last_millis, self.shard, self.seq)
    }
}

/// Checks a merchant's identifier field (`merchant_id`, `order_no`, `refund_no`):
/// 1..=32 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_external_id(text: &str) -> bool {
    (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn ids_carry_their_shard_and_time() {
        let mut g = IdGenerator::new(ShardId(37), 0);
        let id = g.next(1_704_067_200_123);
        assert_eq!(id.as_str().len(), ID_LEN);
        assert_eq!(id.shard(), ShardId(37));
        assert_eq!(id.millis(), 1_704_067_200_123);
        assert_eq!(PayOrderNo::parse(id.as_str()), Some(id));
        assert_eq!(PayOrderNo::parse("P123"), None);
        assert_eq!(PayOrderNo::parse("X1704067200123003700000"), None);
    }

    #[test]
    fn ids_stay_unique_when_the_clock_stalls_or_goes_back() {
        let mut g = IdGenerator::new(ShardId(1), 5_000);
        let mut seen = HashSet::new();
        for i in 0..30_000u64 {
            // Clock stuck in the past for a while, then jumping around.
            let now = if i < 20_000 { 1_000 } else { 4_000 + (i % 7) };
            let id = g.next(now);
            assert!(id.millis() > 5_000, "never at or below the high-water mark");
            assert!(seen.insert(id), "duplicate id");
        }
    }

    #[test]
    fn an_id_is_encoded_as_its_text() {
        let id = PayOrderNo::compose(1_704_067_200_123, ShardId(37), 42);
        assert_eq!(id.as_str(), "P170406720012300370042");
        assert_eq!(format!("{id:?}"), "PayOrderNo(\"P170406720012300370042\")");
        let as_string = postcard::to_allocvec(&id.as_str().to_owned()).unwrap();
        assert_eq!(postcard::to_allocvec(&id).unwrap(), as_string, "the journal's bytes are unchanged");
        assert_eq!(postcard::from_bytes::<PayOrderNo>(&as_string).unwrap(), id);
        let bad = postcard::to_allocvec(&"P12".to_owned()).unwrap();
        assert!(postcard::from_bytes::<PayOrderNo>(&bad).is_err());
    }

    proptest! {
        #[test]
        fn composed_ids_read_back(millis in 0u64..10_000_000_000_000, shard in 0u16..=MAX_SHARDS, seq in 0u16..10_000) {
            let id = PayOrderNo::compose(millis, ShardId(shard), seq);
            prop_assert_eq!(id.as_str(), format!("P{millis:013}{shard:04}{seq:04}"));
            prop_assert_eq!(id.millis(), millis);
            prop_assert_eq!(id.shard(), ShardId(shard));
            prop_assert_eq!(PayOrderNo::parse(id.as_str()), Some(id));
        }

        #[test]
        fn shard_is_in_range(m in "[A-Z0-9]{1,32}", o in "[A-Za-z0-9_-]{1,32}", n in 1u16..2048) {
            prop_assert!(shard_of(&m, &o, n).0 < n);
        }
    }

    /// Shards are stored with every record: the function must never change. Pinned to
    /// FNV-1a's published value for one zero byte and to values computed independently.
    #[test]
    fn shards_are_pinned() {
        let fnv = |m: &str, o: &str| shard_of(m, o, u16::MAX).0;
        // FNV-1a 64 of "\0" (merchant "" and order "") is 0xaf63bd4c8601b7df.
        assert_eq!(u64::from(fnv("", "")), 0xaf63_bd4c_8601_b7df % u64::from(u16::MAX));
        assert_eq!(shard_of("M20240101001", "ORDER-1", 8), ShardId(5));
        assert_eq!(shard_of("M20240101001", "ORDER-2", 64), ShardId(20));
    }
}
