//! Request parameters: a flat JSON object whose every value is a string, so the signed
//! text is unambiguous (SPEC F2).

use std::collections::BTreeMap;

use paygate_actors::error::CoreError;
use serde_json::Value;

/// The parameters of a request.
pub type Params = BTreeMap<String, String>;

/// Most parameters in one request.
const MAX_PARAMS: usize = 64;
/// Longest parameter value.
const MAX_VALUE: usize = 2048;

/// Parses a request body into parameters.
pub fn parse(body: &[u8]) -> Result<Params, CoreError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CoreError::invalid("body", format_args!("is not valid JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(CoreError::invalid("body", "must be a JSON object"));
    };
    if map.len() > MAX_PARAMS {
        return Err(CoreError::invalid("body", format_args!("has more than {MAX_PARAMS} parameters")));
    }
    let mut params = Params::new();
    for (k, v) in map {
        let Value::String(s) = v else {
            return Err(CoreError::invalid(&k, "must be a JSON string (e.g. \"100.00\", \"1704067200\")"));
        };
        if s.len() > MAX_VALUE {
            return Err(CoreError::invalid(&k, format_args!("is longer than {MAX_VALUE} bytes")));
        }
        params.insert(k, s);
    }
    Ok(params)
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
