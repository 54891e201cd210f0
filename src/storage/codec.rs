//! The versioned envelope around everything we persist: `{format_version, kind,
//! payload}`, each part postcard-encoded. A reader refuses versions it does not know
//! rather than guessing.

use paygate_actors::order::Order;
use paygate_actors::ports::Record;
use serde::{Deserialize, Serialize};

/// The format this build writes.
pub const FORMAT_VERSION: u16 = 1;

/// What the payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// A journal [`Record`].
    Record = 1,
    /// An order snapshot.
    OrderSnapshot = 2,
}

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    format_version: u16,
    kind: u16,
    #[serde(borrow)]
    payload: &'a [u8],
}

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Bytes that are not a valid envelope or payload.
    #[error("undecodable bytes: {0}")]
    Postcard(#[from] postcard::Error),
    /// Written by a newer or unknown format.
    #[error("format version {0} is not supported by this build (it writes {FORMAT_VERSION})")]
    Version(u16),
    /// The envelope holds another kind of payload.
    #[error("expected payload kind {expected}, found {found}")]
    Kind {
        /// Wanted.
        expected: u16,
        /// Found.
        found: u16,
    },
}

fn wrap(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(&Envelope { format_version: FORMAT_VERSION, kind: kind as u16, payload })?)
}

fn unwrap(kind: Kind, bytes: &[u8]) -> Result<&[u8], CodecError> {
    let env: Envelope<'_> = postcard::from_bytes(bytes)?;
    if env.format_version != FORMAT_VERSION {
        return Err(CodecError::Version(env.format_version));
    }
    if env.kind != kind as u16 {
        return Err(CodecError::Kind { expected: kind as u16, found: env.kind });
    }
    Ok(env.payload)
}

/// Encodes a journal record.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, CodecError> {
    wrap(Kind::Record, &postcard::to_stdvec(record)?)
}

/// Decodes a journal record.
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    Ok(postcard::from_bytes(unwrap(Kind::Record, bytes)?)?)
}

/// Encodes an order snapshot.
pub fn encode_order(order: &Order) -> Result<Vec<u8>, CodecError> {
    wrap(Kind::OrderSnapshot, &postcard::to_stdvec(order)?)
}

/// Decodes an order snapshot.
pub fn decode_order(bytes: &[u8]) -> Result<Order, CodecError> {
    Ok(postcard::from_bytes(unwrap(Kind::OrderSnapshot, bytes)?)?)
}
