//! The versioned envelope around everything we persist: `{format_version, kind,
//! payload}`, each part postcard-encoded. A reader refuses versions it does not know
//! rather than guessing.

use paygate_actors::notification::Notification;
use paygate_actors::order::Order;
use paygate_actors::ports::Record;
use serde::{Deserialize, Serialize};

/// The format this build writes. 2: the order spec carries `pay_scene`. No build that
/// wrote version 1 was released, so there is no reader for it.
pub const FORMAT_VERSION: u16 = 2;

/// What the payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// A journal [`Record`].
    Record = 1,
    /// An order snapshot.
    OrderSnapshot = 2,
    /// A notification's state.
    NotificationSnapshot = 3,
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
        /// The version the stored value says it was written in.
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

/// A postcard output that appends to a vector it borrows, so a hot loop can reuse one.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes a journal record into `out` (cleared first), using `scratch` for the payload:
/// the writer thread's way, with buffers it reuses for every record. The same bytes as
/// [`encode_record`].
pub fn encode_record_into(record: &Record, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    scratch.clear();
    postcard::serialize_with_flavor(record, Append(scratch))?;
    out.clear();
    let env = Envelope { format_version: FORMAT_VERSION, kind: Kind::Record as u16, payload: scratch };
    postcard::serialize_with_flavor(&env, Append(out))?;
    Ok(())
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

/// Encodes a notification's state.
pub fn encode_notification(n: &Notification) -> Result<Vec<u8>, CodecError> {
    wrap(Kind::NotificationSnapshot, &postcard::to_stdvec(n)?)
}

/// Decodes a notification's state.
pub fn decode_notification(bytes: &[u8]) -> Result<Notification, CodecError> {
    Ok(postcard::from_bytes(unwrap(Kind::NotificationSnapshot, bytes)?)?)
}

#[cfg(test)]
mod tests {
    use paygate_actors::ids::PayOrderNo;
    use paygate_actors::order::OrderEvent;

    use super::*;

    #[test]
    fn the_writer_encoding_is_the_reference_encoding() {
        let (mut scratch, mut out) = (vec![9; 3], vec![7; 5]);
        for n in 0..3 {
            let id = PayOrderNo::parse(&format!("P1700000000000000100{n:02}")).unwrap();
            let reason = "x".repeat(n * 100);
            let record =
                Record::Order { pay_order_no: id, seq: 2, events: vec![OrderEvent::ChannelRejected { reason, at: 5 }] };
            encode_record_into(&record, &mut scratch, &mut out).unwrap();
            assert_eq!(out, encode_record(&record).unwrap());
            let back = decode_record(&out).unwrap();
            assert_eq!(encode_record(&back).ok(), Some(out.clone()));
        }
    }
}
