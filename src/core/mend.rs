//! Invalid UTF-8 in a string field, mended as the official SDK decodes it:
//! each invalid sequence becomes U+FFFD, so one bad string costs neither its
//! notification nor the other notifications of its body. prost refuses such
//! a message whole; `mend` walks the body with the schema (the descriptors
//! `build.rs` keeps from `proto/`) and rewrites only the strings that need
//! it, for prost to decode again. Only bodies prost refused for UTF-8 come
//! here, so the walk costs nothing on the hot path.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::core::decode::read_varint;

/// The schema of every message in `proto/`, as `build.rs` wrote it.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The root message of a webhook body or notifier frame.
const ROOT: &str = ".fishjam.ServerMessage";

/// Deeper than the schema goes (prost's own limit is 100): a body nested
/// past it is refused rather than walked.
const MAX_DEPTH: usize = 32;

/// Per message (by its full name, `.fishjam.ServerMessage`), per field
/// number: the field's type and, for a message field, its type's name.
type Schema = HashMap<String, HashMap<u64, (Type, String)>>;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let set =
            FileDescriptorSet::decode(DESCRIPTORS).expect("build.rs writes valid descriptors");
        let mut schema = Schema::new();
        for file in &set.file {
            for message in &file.message_type {
                add(&mut schema, &format!(".{}", file.package()), message);
            }
        }
        schema
    })
}

fn add(schema: &mut Schema, scope: &str, message: &DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        add(schema, &name, nested);
    }
    let fields = message
        .field
        .iter()
        .map(|f| (f.number() as u64, (f.r#type(), f.type_name().to_owned())))
        .collect();
    schema.insert(name, fields);
}

/// `body` with every invalid UTF-8 sequence in a string field replaced by
/// U+FFFD, and how many string fields were mended; `None` when the body
/// cannot be walked (it is malformed in some other way too).
pub fn mend(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut mended = 0;
    walk(body, ROOT, 0, &mut out, &mut mended)?;
    Some((out, mended))
}

fn walk(
    mut buf: &[u8],
    message: &str,
    depth: usize,
    out: &mut Vec<u8>,
    mended: &mut usize,
) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let fields = schema().get(message);
    while !buf.is_empty() {
        let start = buf;
        let key = read_varint(&mut buf)?;
        match key & 7 {
            0 => {
                read_varint(&mut buf)?;
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                let value = buf.get(..len)?;
                buf = &buf[len..];
                match fields.and_then(|f| f.get(&(key >> 3))) {
                    Some((Type::String, _)) if std::str::from_utf8(value).is_err() => {
                        let text = String::from_utf8_lossy(value);
                        write_field(out, key, text.as_bytes());
                        *mended += 1;
                        continue;
                    }
                    Some((Type::Message, name)) => {
                        let mut inner = Vec::with_capacity(value.len());
                        walk(value, name, depth + 1, &mut inner, mended)?;
                        write_field(out, key, &inner);
                        continue;
                    }
                    // Bytes, packed numbers, fields this build does not know.
                    _ => {}
                }
            }
            _ => return None,
        }
        out.extend_from_slice(&start[..start.len() - buf.len()]);
    }
    Some(())
}

fn write_field(out: &mut Vec<u8>, key: u64, value: &[u8]) {
    prost::encoding::encode_varint(key, out);
    prost::encoding::encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::proto::server_message as sm;
    use crate::core::proto::{Content, ServerMessage};

    fn room_created(id: &str) -> ServerMessage {
        ServerMessage {
            content: Some(Content::RoomCreated(sm::RoomCreated {
                room_id: id.to_owned(),
            })),
        }
    }

    #[test]
    fn a_bad_string_in_a_batch_is_mended_and_its_siblings_kept() {
        let batch = ServerMessage {
            content: Some(Content::NotificationBatch(sm::NotificationBatch {
                notifications: vec![room_created("a"), room_created("BAD"), room_created("c")],
            })),
        };
        let mut body = batch.encode_to_vec();
        // "BAD" becomes "B", 0xff, "D": one byte, same length.
        let at = body.windows(3).position(|w| w == b"BAD").unwrap();
        body[at + 1] = 0xff;
        assert!(ServerMessage::decode(&body[..]).is_err());
        let (mended, count) = mend(&body).unwrap();
        assert_eq!(count, 1);
        let decoded = ServerMessage::decode(&mended[..]).unwrap();
        let Some(Content::NotificationBatch(batch)) = decoded.content else {
            panic!("a batch")
        };
        let ids: Vec<String> = batch
            .notifications
            .into_iter()
            .map(|n| match n.content {
                Some(Content::RoomCreated(r)) => r.room_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["a", "B\u{FFFD}D", "c"]);
    }

    #[test]
    fn valid_bodies_and_unknown_fields_pass_unchanged() {
        let body = room_created("room").encode_to_vec();
        assert_eq!(mend(&body), Some((body.clone(), 0)));
        // Field 99 of the root, length-delimited, not UTF-8: not a string the
        // schema knows, so left as it is.
        let unknown = [0x9a, 0x06, 0x01, 0xff];
        assert_eq!(mend(&unknown), Some((unknown.to_vec(), 0)));
    }

    /// A room_created("BAD") inside `levels` batches, its "A" made 0xff.
    fn nested(levels: usize) -> Vec<u8> {
        let mut message = room_created("BAD");
        for _ in 0..levels {
            message = ServerMessage {
                content: Some(Content::NotificationBatch(sm::NotificationBatch {
                    notifications: vec![message],
                })),
            };
        }
        let mut body = message.encode_to_vec();
        let at = body.windows(3).position(|w| w == b"BAD").unwrap();
        body[at + 1] = 0xff;
        body
    }

    #[test]
    fn a_body_broken_otherwise_or_nested_past_the_schema_is_not_walked() {
        // A length past the end.
        assert_eq!(mend(&[0x0a, 0x05, 0x0a]), None);
        assert_eq!(mend(&nested(10)).map(|(_, count)| count), Some(1));
        // Each batch is two levels (the batch, then its message).
        assert_eq!(mend(&nested(20)), None);
    }
}
