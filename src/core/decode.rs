//! Bytes to notifications: one webhook body or notifier frame becomes the
//! ordered list of notifications it carries, as the official SDK's
//! `decodeServerNotifications` does it.
//!
//! A `NotificationBatch` is unwrapped one level, in wire order. What is not a
//! notification is skipped with a reason the caller counts: handshake
//! messages, deprecated variants, empty elements, nested batches (dropped
//! whole, their siblings kept) and variants this build does not know (a newer
//! Fishjam). A body that is not valid protobuf is an error for the whole body.
//! Pure and synchronous: no IO, no metrics.

use prost::Message;

use crate::core::proto::{Content, ServerMessage};

/// A notification's content, guaranteed to be one the bridge publishes.
pub type Notification = Content;

/// Why something in a body was not turned into an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// `authenticated`, `auth_request`, `subscribe_request`, `subscribe_response`.
    Handshake,
    /// `component_crashed`, `hls_*`, `stream_connected`, `stream_disconnected`.
    Deprecated,
    /// A message with no content at all.
    Empty,
    /// A oneof member this build does not know, or the reserved field 12.
    UnknownVariant,
    /// A batch inside a batch: the protocol forbids it.
    NestedBatch,
}

impl Skipped {
    /// Every reason, as the metrics label them.
    pub const ALL: [Skipped; 5] = [
        Skipped::Handshake,
        Skipped::Deprecated,
        Skipped::Empty,
        Skipped::UnknownVariant,
        Skipped::NestedBatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skipped::Handshake => "handshake",
            Skipped::Deprecated => "deprecated",
            Skipped::Empty => "empty",
            Skipped::UnknownVariant => "unknown_variant",
            Skipped::NestedBatch => "nested_batch",
        }
    }
}

/// What one body carried.
#[derive(Debug, Default)]
pub struct Decoded {
    /// In wire order.
    pub notifications: Vec<Notification>,
    pub skipped: Vec<Skipped>,
    /// Whether the body was a `NotificationBatch`.
    pub batch: bool,
    /// String fields that held invalid UTF-8, decoded with U+FFFD (`mend`).
    pub mended_strings: usize,
}

/// A body that is not a valid `fishjam.ServerMessage`.
#[derive(Debug, thiserror::Error)]
#[error("body is not a valid fishjam.ServerMessage: {source}")]
pub struct DecodeError {
    #[source]
    source: prost::DecodeError,
}

impl DecodeError {
    /// Every value of `reason`.
    pub const REASONS: [&'static str; 4] =
        ["invalid_utf8", "wrong_wire_type", "truncated", "malformed"];

    /// A short, fixed label for metrics: one of `REASONS`.
    pub fn reason(&self) -> &'static str {
        let [invalid_utf8, wrong_wire_type, truncated, malformed] = Self::REASONS;
        let text = self.source.to_string();
        if text.contains("UTF-8") {
            invalid_utf8
        } else if text.contains("wire type") {
            wrong_wire_type
        } else if text.contains("buffer underflow") || text.contains("invalid varint") {
            truncated
        } else {
            malformed
        }
    }
}

/// Decodes one body (a webhook body or a notifier frame). A string field
/// with invalid UTF-8 is decoded with U+FFFD in place of each invalid
/// sequence, as the official SDK does, and counted in `mended_strings`.
pub fn decode(body: &[u8]) -> Result<Decoded, DecodeError> {
    let mended;
    let (message, body, mended_strings) = match ServerMessage::decode(body) {
        Ok(message) => (message, body, 0),
        Err(source) => {
            let error = DecodeError { source };
            let Some((bytes, count)) = (error.reason() == "invalid_utf8")
                .then(|| crate::core::mend::mend(body))
                .flatten()
            else {
                return Err(error);
            };
            mended = bytes;
            let message =
                ServerMessage::decode(&mended[..]).map_err(|source| DecodeError { source })?;
            (message, &mended[..], count)
        }
    };
    let mut decoded = Decoded {
        mended_strings,
        ..Decoded::default()
    };
    match message.content {
        Some(Content::NotificationBatch(batch)) => {
            decoded.batch = true;
            // Raw element bytes are needed only to tell an empty element from
            // an unknown variant, which prost decodes to the same `None`.
            let mut raw = None;
            for (index, element) in batch.notifications.into_iter().enumerate() {
                match element.content {
                    Some(content) => decoded.push(content, true),
                    None => {
                        let raw = raw.get_or_insert_with(|| batch_elements(body));
                        let element = raw.get(index).copied().unwrap_or_default();
                        decoded.skipped.push(classify_empty(element));
                    }
                }
            }
        }
        Some(content) => decoded.push(content, false),
        None => decoded.skipped.push(classify_empty(body)),
    }
    Ok(decoded)
}

impl Decoded {
    fn push(&mut self, content: Content, in_batch: bool) {
        match skip_reason(&content, in_batch) {
            Some(reason) => self.skipped.push(reason),
            None => self.notifications.push(content),
        }
    }
}

fn skip_reason(content: &Content, in_batch: bool) -> Option<Skipped> {
    match content {
        Content::Authenticated(_)
        | Content::AuthRequest(_)
        | Content::SubscribeRequest(_)
        | Content::SubscribeResponse(_) => Some(Skipped::Handshake),
        Content::ComponentCrashed(_)
        | Content::HlsPlayable(_)
        | Content::HlsUploaded(_)
        | Content::HlsUploadCrashed(_)
        | Content::StreamConnected(_)
        | Content::StreamDisconnected(_) => Some(Skipped::Deprecated),
        Content::NotificationBatch(_) if in_batch => Some(Skipped::NestedBatch),
        _ => None,
    }
}

/// Highest oneof member number this build knows.
const LAST_KNOWN_FIELD: u64 = 34;
/// Formerly `metrics_report`; reserved in the schema.
const RESERVED_FIELD: u64 = 12;

/// A message that decoded to no content: empty, or carrying a member this
/// build does not know.
fn classify_empty(message: &[u8]) -> Skipped {
    let unknown = fields(message)
        .any(|(field, _)| field > LAST_KNOWN_FIELD || field == RESERVED_FIELD || field == 0);
    if unknown {
        Skipped::UnknownVariant
    } else {
        Skipped::Empty
    }
}

/// How many elements a body's `notification_batch` holds (0 for a single
/// notification), counted on the wire without decoding them: a limit on
/// notifications per body is checked before decoding allocates for each.
pub fn batch_len(body: &[u8]) -> usize {
    fields(body)
        .filter(|&(field, _)| field == 33)
        .filter_map(|(_, value)| value)
        .map(|batch| fields(batch).filter(|&(field, _)| field == 1).count())
        .sum()
}

/// The raw bytes of every element of a body's `notification_batch`, in order.
fn batch_elements(body: &[u8]) -> Vec<&[u8]> {
    fields(body)
        .filter(|&(field, _)| field == 33)
        .filter_map(|(_, value)| value)
        .flat_map(|batch| {
            fields(batch)
                .filter(|&(field, _)| field == 1)
                .filter_map(|(_, value)| value)
        })
        .collect()
}

/// Walks the top-level fields of an already validated message: field number
/// and, for length-delimited fields, the value's bytes. Stops at anything it
/// cannot read.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = (u64, Option<&[u8]>)> {
    std::iter::from_fn(move || {
        let key = read_varint(&mut buf)?;
        let (field, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => {
                read_varint(&mut buf)?;
                None
            }
            1 => {
                buf = buf.get(8..)?;
                None
            }
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                let value = buf.get(..len)?;
                buf = &buf[len..];
                Some(value)
            }
            5 => {
                buf = buf.get(4..)?;
                None
            }
            _ => return None,
        };
        Some((field, value))
    })
}

pub(crate) fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *buf = &buf[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::proto::server_message as sm;

    #[test]
    fn batch_len_counts_elements_without_decoding() {
        let element = ServerMessage {
            content: Some(Content::RoomCreated(sm::RoomCreated {
                room_id: "r".into(),
            })),
        };
        let batch = |n: usize| ServerMessage {
            content: Some(Content::NotificationBatch(sm::NotificationBatch {
                notifications: vec![element.clone(); n],
            })),
        };
        assert_eq!(batch_len(&batch(3).encode_to_vec()), 3);
        assert_eq!(batch_len(&batch(0).encode_to_vec()), 0);
        assert_eq!(batch_len(&element.encode_to_vec()), 0);
        // A batch field repeated on the wire is merged by decoding: counted whole.
        let mut twice = batch(2).encode_to_vec();
        twice.extend(batch(4).encode_to_vec());
        assert_eq!(batch_len(&twice), 6);
        assert_eq!(decode(&twice).unwrap().notifications.len(), 6);
    }

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    #[test]
    fn empty_body_is_empty() {
        let decoded = decode(&[]).unwrap();
        assert!(decoded.notifications.is_empty());
        assert_eq!(decoded.skipped, vec![Skipped::Empty]);
    }

    #[test]
    fn unknown_member_is_told_from_empty() {
        // Field 35, length-delimited, holding two bytes.
        let decoded = decode(&hex("9a02020a00")).unwrap();
        assert_eq!(decoded.skipped, vec![Skipped::UnknownVariant]);
        // Reserved field 12.
        let decoded = decode(&hex("620100")).unwrap();
        assert_eq!(decoded.skipped, vec![Skipped::UnknownVariant]);
    }

    #[test]
    fn handshake_is_skipped() {
        let decoded = decode(&hex("3200")).unwrap();
        assert!(decoded.notifications.is_empty());
        assert_eq!(decoded.skipped, vec![Skipped::Handshake]);
    }

    #[test]
    fn batch_elements_are_found_in_order() {
        // Batch of: room_created{"a"}, empty element, unknown field 40.
        let body = hex("8a020f0a0552030a01610a000a04c2020100");
        let decoded = decode(&body).unwrap();
        assert!(decoded.batch);
        assert_eq!(decoded.notifications.len(), 1);
        assert_eq!(
            decoded.skipped,
            vec![Skipped::Empty, Skipped::UnknownVariant]
        );
    }

    #[test]
    fn truncated_body_is_an_error() {
        let error = decode(&hex("12")).unwrap_err();
        assert_eq!(error.reason(), "truncated");
    }
}
