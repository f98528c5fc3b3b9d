//! Entries as producers create them: ids that are unique forever, and their protobuf encoding.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use homeport_wire::pb;
use prost::Message;

/// Length of a producer incarnation and of a node incarnation, in bytes.
pub const INCARNATION_BYTES: usize = 16;

/// Hands out entry ids `(origin region, producer incarnation, sequence)`.
///
/// The incarnation is 16 random bytes drawn at start-up, so two producers (or one producer before
/// and after a restart) never hand out the same id without coordinating or persisting anything.
#[derive(Debug)]
pub struct EntryIdGen {
    origin_region: String,
    incarnation: [u8; INCARNATION_BYTES],
    next_sequence: u64,
}

impl EntryIdGen {
    pub fn new(origin_region: &str) -> Self {
        Self {
            origin_region: origin_region.to_owned(),
            incarnation: rand::random(),
            next_sequence: 0,
        }
    }

    pub fn incarnation(&self) -> [u8; INCARNATION_BYTES] {
        self.incarnation
    }

    pub fn next_id(&mut self) -> pb::EntryId {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        pb::EntryId {
            origin_region: self.origin_region.clone(),
            producer_incarnation: Bytes::copy_from_slice(&self.incarnation),
            sequence,
        }
    }

    /// A new entry with the next id, stamped with the origin's wall clock.
    pub fn entry(&mut self, kind: pb::EntryKind, payload: Bytes) -> pb::Entry {
        pb::Entry {
            id: Some(self.next_id()),
            kind: kind as i32,
            origin_unix_ms: now_unix_ms(),
            payload,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn encode(entry: &pb::Entry) -> Bytes {
    Bytes::from(entry.encode_to_vec())
}

/// Why bytes are not a usable entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry bytes are not a protobuf Entry: {0}")]
    Decode(String),
    #[error("entry has no id; every entry needs (origin_region, producer_incarnation, sequence)")]
    MissingId,
    #[error(
        "entry id has a producer incarnation of {0} bytes; it must be exactly {INCARNATION_BYTES}"
    )]
    BadIncarnation(usize),
    #[error("entry id has an empty origin region")]
    EmptyOrigin,
}

/// Decodes and checks an entry that came from the network or the disk.
pub fn decode(bytes: &[u8]) -> Result<pb::Entry, EntryError> {
    let entry = pb::Entry::decode(bytes).map_err(|e| EntryError::Decode(e.to_string()))?;
    let id = entry.id.as_ref().ok_or(EntryError::MissingId)?;
    if id.producer_incarnation.len() != INCARNATION_BYTES {
        return Err(EntryError::BadIncarnation(id.producer_incarnation.len()));
    }
    if id.origin_region.is_empty() {
        return Err(EntryError::EmptyOrigin);
    }
    Ok(entry)
}

/// The id of an encoded entry as one byte string (origin, incarnation, sequence), for merging the
/// same entry read from several nodes. `None` when the bytes are not a valid entry.
pub fn id_key(bytes: &[u8]) -> Option<Bytes> {
    let entry = decode(bytes).ok()?;
    let id = entry.id?;
    let mut key = Vec::with_capacity(id.origin_region.len() + 1 + INCARNATION_BYTES + 8);
    key.extend_from_slice(id.origin_region.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.producer_incarnation);
    key.extend_from_slice(&id.sequence.to_be_bytes());
    Some(Bytes::from(key))
}

/// Renders an entry id for logs and the CLI: `sh/1a2b3c4d/42`.
pub fn display_id(id: &pb::EntryId) -> String {
    let inc = &id.producer_incarnation;
    let short: String = inc.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}/{}/{}", id.origin_region, short, id.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sequential() {
        let mut g = EntryIdGen::new("sh");
        let a = g.next_id();
        let b = g.next_id();
        assert_eq!(a.sequence + 1, b.sequence);
        assert_eq!(a.producer_incarnation, b.producer_incarnation);
        let other = EntryIdGen::new("sh").next_id();
        assert_ne!(a.producer_incarnation, other.producer_incarnation);
    }

    #[test]
    fn round_trip_and_id_key() {
        let mut g = EntryIdGen::new("hk");
        let e = g.entry(pb::EntryKind::Test, Bytes::from_static(b"hello"));
        let bytes = encode(&e);
        assert_eq!(decode(&bytes).unwrap(), e);
        let k1 = id_key(&bytes).unwrap();
        let e2 = pb::Entry {
            payload: Bytes::from_static(b"other payload, same id"),
            ..e.clone()
        };
        assert_eq!(id_key(&encode(&e2)).unwrap(), k1);
        let e3 = g.entry(pb::EntryKind::Test, Bytes::new());
        assert_ne!(id_key(&encode(&e3)).unwrap(), k1);
    }

    #[test]
    fn garbage_and_incomplete_entries_are_refused() {
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(EntryError::Decode(_))
        ));
        let no_id = pb::Entry::default();
        assert_eq!(decode(&encode(&no_id)), Err(EntryError::MissingId));
        let bad_inc = pb::Entry {
            id: Some(pb::EntryId {
                origin_region: "sh".into(),
                producer_incarnation: Bytes::from_static(b"short"),
                sequence: 1,
            }),
            ..Default::default()
        };
        assert_eq!(
            decode(&encode(&bad_inc)),
            Err(EntryError::BadIncarnation(5))
        );
        assert!(id_key(b"\x08").is_none());
    }
}
