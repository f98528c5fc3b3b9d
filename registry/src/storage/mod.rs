//! Where an acceptor keeps its per-key state, durably.
//!
//! The [`Acceptor`](crate::paxos::acceptor::Acceptor) owns a storage and writes through it before
//! it produces any reply, so a shell cannot answer before the state is durable: there is no reply
//! to send until [`AcceptorStorage::store`] has returned `Ok`. Two implementations:
//! [`RedbStorage`] (a redb file, every commit fsynced) for real nodes and [`MemStorage`] (a map
//! that can be told to fail writes) for tests and the model checker.
//!
//! On disk a key's state is a protobuf `AcceptorRecord` (`proto/.../registry.proto`), so files
//! written by one release are read by the next.

mod mem;
mod redb_storage;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

pub use mem::MemStorage;
pub use redb_storage::RedbStorage;

use crate::paxos::{AcceptedValue, Ballot, ProposerId, Register};
use crate::pb;

/// What one acceptor knows about one key. A key never seen is `KeyState::default()`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyState {
    /// The highest ballot promised; nothing below it is accepted any more.
    pub promised: Ballot,
    /// The last proposal accepted. Its ballot is never above `promised`.
    pub accepted: Option<AcceptedValue>,
}

/// Durable per-key acceptor state.
pub trait AcceptorStorage {
    /// The state of `key` (`None`: never written).
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StorageError>;

    /// Writes every `(key, state)` all or nothing, and returns only once they are durable
    /// (would survive a power cut). On `Err` nothing may have been written.
    fn store(&mut self, writes: &[(String, KeyState)]) -> Result<(), StorageError>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error(
        "the registry acceptor file {} could not {action}: {source}; check the disk (space, \
         permissions, errors in the kernel log)",
        path.display()
    )]
    Redb {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Arc<redb::Error>,
    },
    #[error(
        "the registry acceptor file {} is already open by another acceptor in this or another \
         process; stop the other one, or give each registry node its own data directory",
        path.display()
    )]
    AlreadyOpen { path: PathBuf },
    #[error(
        "the registry acceptor file {} has format version {found}, this build reads up to \
         {supported}; run a homeport release that knows format {found}",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// Stored bytes do not decode, or decode to a state no acceptor writes.
    #[error(
        "the registry acceptor state of key {key:?} in {where_} is damaged: {problem}; this \
         acceptor must not answer for the key: wipe its file and let it rejoin empty (the other \
         acceptors hold every chosen value), or restore it from a backup"
    )]
    Corrupt {
        where_: String,
        key: String,
        problem: String,
    },
    /// A fault injected by a test ([`MemStorage::fail_next_writes`]).
    #[error("injected storage fault: {what}")]
    Injected { what: &'static str },
}

impl StorageError {
    pub(crate) fn redb(
        path: &std::path::Path,
        action: &'static str,
        e: impl Into<redb::Error>,
    ) -> Self {
        StorageError::Redb {
            path: path.to_path_buf(),
            action,
            source: Arc::new(e.into()),
        }
    }
}

fn ballot_to_pb(b: Ballot) -> pb::Ballot {
    pb::Ballot {
        counter: b.counter,
        proposer: b.proposer.0,
    }
}

fn ballot_from_pb(b: &pb::Ballot) -> Ballot {
    Ballot {
        counter: b.counter,
        proposer: ProposerId(b.proposer),
    }
}

/// The on-disk bytes of a key's state.
pub fn encode_key_state(state: &KeyState) -> Vec<u8> {
    let record = pb::AcceptorRecord {
        promised: Some(ballot_to_pb(state.promised)),
        accepted: state.accepted.as_ref().map(|a| pb::AcceptedProposal {
            ballot: Some(ballot_to_pb(a.ballot)),
            version: a.register.version,
            value: a.register.value.clone(),
        }),
    };
    record.encode_to_vec()
}

/// Decodes and checks what [`encode_key_state`] wrote; the error says what is wrong.
pub fn decode_key_state(bytes: &[u8]) -> Result<KeyState, String> {
    let record = pb::AcceptorRecord::decode(bytes)
        .map_err(|e| format!("not a valid AcceptorRecord: {e}"))?;
    let promised = record
        .promised
        .as_ref()
        .map(ballot_from_pb)
        .unwrap_or_default();
    let accepted = match record.accepted {
        None => None,
        Some(a) => {
            let ballot = a
                .ballot
                .as_ref()
                .map(ballot_from_pb)
                .ok_or("an accepted proposal without its ballot")?;
            if ballot > promised {
                return Err(format!(
                    "accepted ballot {ballot} is above the promised ballot {promised}, which no \
                     acceptor writes"
                ));
            }
            let value: Option<Bytes> = a.value;
            Some(AcceptedValue {
                ballot,
                register: Register {
                    version: a.version,
                    value,
                },
            })
        }
    };
    Ok(KeyState { promised, accepted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(counter: u64, p: u64) -> Ballot {
        Ballot {
            counter,
            proposer: ProposerId(p),
        }
    }

    #[test]
    fn key_state_round_trips() {
        let states = [
            KeyState::default(),
            KeyState {
                promised: b(3, 1),
                accepted: None,
            },
            KeyState {
                promised: b(7, 2),
                accepted: Some(AcceptedValue {
                    ballot: b(6, 2),
                    register: Register {
                        version: 4,
                        value: Some(Bytes::from_static(b"owner")),
                    },
                }),
            },
            // An accepted "no value" (a cleared key) differs from an accepted empty value.
            KeyState {
                promised: b(7, 2),
                accepted: Some(AcceptedValue {
                    ballot: b(7, 2),
                    register: Register {
                        version: 5,
                        value: None,
                    },
                }),
            },
            KeyState {
                promised: b(7, 2),
                accepted: Some(AcceptedValue {
                    ballot: b(7, 2),
                    register: Register {
                        version: 5,
                        value: Some(Bytes::new()),
                    },
                }),
            },
        ];
        for s in states {
            assert_eq!(decode_key_state(&encode_key_state(&s)).unwrap(), s);
        }
    }

    #[test]
    fn damaged_state_is_refused_not_guessed() {
        assert!(decode_key_state(&[0xff, 0xff, 0xff]).is_err());
        let bad = pb::AcceptorRecord {
            promised: Some(ballot_to_pb(b(1, 1))),
            accepted: Some(pb::AcceptedProposal {
                ballot: Some(ballot_to_pb(b(2, 1))),
                version: 1,
                value: None,
            }),
        };
        let err = decode_key_state(&bad.encode_to_vec()).unwrap_err();
        assert!(err.contains("above the promised"), "{err}");
        let no_ballot = pb::AcceptorRecord {
            promised: None,
            accepted: Some(pb::AcceptedProposal {
                ballot: None,
                version: 1,
                value: None,
            }),
        };
        assert!(decode_key_state(&no_ballot.encode_to_vec()).is_err());
    }
}
