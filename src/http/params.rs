//! Request parameters: a flat JSON object whose every value is a string, so the signed
//! text is unambiguous.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use paygate_actors::error::CoreError;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The parameters of a request, borrowed from its body (a key or value is copied only
/// when it had escapes to decode).
pub type Params<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// Most parameters in one request.
const MAX_PARAMS: usize = 64;
/// Longest parameter value.
const MAX_VALUE: usize = 2048;

/// Parses a request body into parameters.
///
/// Straight into the map, without an intermediate `serde_json::Value`, and without
/// copying: a query's dozen small allocations came from memory gone cold under load.
pub fn parse(body: &[u8]) -> Result<Params<'_>, CoreError> {
    let parsed = serde_json::from_slice::<Parsed>(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => CoreError::invalid("body", "must be a JSON object"),
        _ => CoreError::invalid("body", format_args!("is not valid JSON ({e})")),
    })?;
    match parsed {
        Parsed::Params(params) => Ok(params),
        Parsed::TooMany => Err(CoreError::invalid("body", format_args!("has more than {MAX_PARAMS} parameters"))),
        Parsed::NotText(k) => Err(CoreError::invalid(&k, "must be a JSON string (e.g. \"100.00\", \"1704067200\")")),
        Parsed::TooLong(k) => Err(CoreError::invalid(&k, format_args!("is longer than {MAX_VALUE} bytes"))),
    }
}

/// A body read as parameters, or the first rule it breaks.
enum Parsed<'a> {
    Params(Params<'a>),
    TooMany,
    NotText(String),
    TooLong(String),
}

/// One parameter's value: text, or anything else (which is refused by name).
enum Value<'a> {
    Text(Cow<'a, str>),
    Other,
}

/// A key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyText;
        impl<'de> Visitor<'de> for KeyText {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyText)
    }
}

impl<'de> Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Parsed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
                let mut params = Params::new();
                let mut refusal = None;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value = map.next_value::<Value>()?;
                    if refusal.is_some() {
                        continue; // read to the end, so that only the first refusal counts
                    }
                    refusal = match value {
                        Value::Other => Some(Parsed::NotText(key.into_owned())),
                        Value::Text(s) if s.len() > MAX_VALUE => Some(Parsed::TooLong(key.into_owned())),
                        Value::Text(s) => {
                            params.insert(key, s);
                            (params.len() > MAX_PARAMS).then_some(Parsed::TooMany)
                        }
                    };
                }
                Ok(refusal.unwrap_or(Parsed::Params(params)))
            }
        }
        d.deserialize_map(Object)
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnyValue;
        impl<'de> Visitor<'de> for AnyValue {
            type Value = Value<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'de>, E> {
                Ok(Value::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'de>, E> {
                Ok(Value::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value<'de>, E> {
                Ok(Value::Text(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value<'de>, E> {
                Ok(Value::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value<'de>, E> {
                Ok(Value::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value<'de>, E> {
                Ok(Value::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value<'de>, E> {
                Ok(Value::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value<'de>, E> {
                Ok(Value::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Value::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Value::Other)
            }
        }
        d.deserialize_any(AnyValue)
    }
}

/// A required, non-empty parameter.
pub fn required<'a>(params: &'a Params, field: &str) -> Result<&'a str, CoreError> {
    match params.get(field) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CoreError::invalid(field, "is required")),
    }
}

/// An optional parameter (empty counts as absent) of at most `max_chars` characters
/// and no control characters.
pub fn optional(params: &Params, field: &str, max_chars: usize) -> Result<Option<String>, CoreError> {
    match params.get(field).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => text(field, v, max_chars).map(|s| Some(s.to_owned())),
    }
}

/// Checks free text: length in characters and no control characters.
pub fn text<'a>(field: &str, value: &'a str, max_chars: usize) -> Result<&'a str, CoreError> {
    if value.chars().count() > max_chars {
        return Err(CoreError::invalid(field, format_args!("must be at most {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(CoreError::invalid(field, "must not contain control characters"));
    }
    Ok(value)
}

/// The fields every signed request carries.
pub fn require_auth_fields(params: &Params) -> Result<(), CoreError> {
    for field in ["merchant_id", "timestamp", "sign"] {
        required(params, field)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn refusal(body: &str) -> String {
        match parse(body.as_bytes()) {
            Ok(p) => panic!("{body} was taken as {p:?}"),
            Err(e) => e.message.into_owned(),
        }
    }

    #[test]
    fn a_flat_object_of_strings_is_taken_with_escapes_decoded() {
        let p = parse(br#"{"b":"2","a":"x\"y\u00e9","c":""}"#).unwrap();
        assert_eq!(p.get("a").map(AsRef::as_ref), Some("x\"y\u{e9}"));
        assert_eq!(p.get("b").map(AsRef::as_ref), Some("2"));
        assert_eq!(p.get("c").map(AsRef::as_ref), Some(""));
        assert_eq!(p.len(), 3);
        // Copied only where an escape had to be decoded.
        assert!(p.iter().all(|(k, v)| matches!(k, Cow::Borrowed(_)) && matches!(v, Cow::Borrowed(_)) == (k != "a")));
        let escaped_key = parse(br#"{"\u0061":"1"}"#).unwrap();
        assert!(matches!(escaped_key.first_key_value(), Some((Cow::Owned(k), _)) if k == "a"));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        assert_eq!(parse(br#"{"a":"1","a":"2"}"#).unwrap().get("a").map(AsRef::as_ref), Some("2"));
    }

    #[test]
    fn each_refusal_names_its_rule_and_field() {
        for body in ["[1,2]", "\"text\"", "7", "null"] {
            assert!(refusal(body).contains("must be a JSON object"), "{body}");
        }
        for body in ["", "{\"a\":", "{\"a\":\"1\"} x", "{a:1}"] {
            assert!(refusal(body).contains("is not valid JSON"), "{body}");
        }
        for value in ["1", "1.5", "true", "null", "[\"1\"]", "{\"x\":\"1\"}"] {
            let m = refusal(&format!(r#"{{"ok":"1","amount":{value},"later":"2"}}"#));
            assert!(m.contains("amount") && m.contains("must be a JSON string"), "{value}: {m}");
        }
        let long = format!(r#"{{"subject":"{}"}}"#, "x".repeat(MAX_VALUE + 1));
        assert!(refusal(&long).contains("subject"));
        assert!(parse(format!(r#"{{"subject":"{}"}}"#, "x".repeat(MAX_VALUE)).as_bytes()).is_ok());
        let many =
            |n: usize| format!("{{{}}}", (0..n).map(|i| format!("\"k{i}\":\"v\"")).collect::<Vec<_>>().join(","));
        assert!(refusal(&many(MAX_PARAMS + 1)).contains(&format!("more than {MAX_PARAMS}")));
        assert_eq!(parse(many(MAX_PARAMS).as_bytes()).unwrap().len(), MAX_PARAMS);
    }

    proptest! {
        #[test]
        fn any_flat_map_of_strings_reads_back_as_written(
            map in proptest::collection::btree_map("\\PC{0,12}", "\\PC{0,40}", 0..MAX_PARAMS)
        ) {
            let body = serde_json::to_vec(&map).unwrap();
            let parsed: BTreeMap<String, String> =
                parse(&body).unwrap().into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            prop_assert_eq!(parsed, map);
        }
    }
}
