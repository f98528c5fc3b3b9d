use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{AcceptorStorage, KeyState, StorageError, decode_key_state, encode_key_state};

/// key → encoded `AcceptorRecord`.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("acceptor_keys");
/// The format version, so a later layout change is recognized instead of misread.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT_VERSION_KEY: &str = "format_version";
/// The file layout this build writes; a file with a higher number is refused at open.
const FORMAT_VERSION: u64 = 1;

/// Acceptor state in a redb file. Every [`AcceptorStorage::store`] is one write transaction
/// committed with `Durability::Immediate` (fsync), so a batch of requests costs one fsync: a
/// shell that gathers the requests arriving during a commit and hands them to
/// [`Acceptor::handle_batch`](crate::paxos::acceptor::Acceptor::handle_batch) gets group commit.
///
/// Blocking: run it on a thread of its own (or `spawn_blocking`).
#[derive(Debug)]
pub struct RedbStorage {
    db: Database,
    path: PathBuf,
}

impl RedbStorage {
    /// Opens (or creates) the file and checks its format version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::builder().create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StorageError::AlreadyOpen { path: path.clone() }
            }
            e => StorageError::redb(&path, "open the file", e),
        })?;
        let mut txn = db
            .begin_write()
            .map_err(|e| StorageError::redb(&path, "begin a write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StorageError::redb(&path, "set durability", e))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| StorageError::redb(&path, "open its meta table", e))?;
            let found = meta
                .get(FORMAT_VERSION_KEY)
                .map_err(|e| StorageError::redb(&path, "read its format version", e))?
                .map(|g| g.value());
            match found {
                Some(v) if v > FORMAT_VERSION => {
                    return Err(StorageError::UnsupportedFormat {
                        path,
                        found: v,
                        supported: FORMAT_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)
                        .map_err(|e| StorageError::redb(&path, "write its format version", e))?;
                }
            }
            txn.open_table(KEYS)
                .map_err(|e| StorageError::redb(&path, "create its key table", e))?;
        }
        txn.commit()
            .map_err(|e| StorageError::redb(&path, "commit", e))?;
        Ok(Self { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `max_keys` keys that start with `prefix`, from `start_after` on (exclusive), in key
    /// order with their states: for a sweeper that looks for unfinished work (e.g. `user/` keys
    /// with a pending transition), one page at a time.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<(String, KeyState)>, StorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StorageError::redb(&self.path, "begin a read", e))?;
        let table = txn
            .open_table(KEYS)
            .map_err(|e| StorageError::redb(&self.path, "open its key table", e))?;
        let from = start_after.unwrap_or(prefix);
        let range = table
            .range(from..)
            .map_err(|e| StorageError::redb(&self.path, "scan its keys", e))?;
        let mut out = Vec::new();
        for item in range {
            if out.len() >= max_keys {
                break;
            }
            let (k, v) = item.map_err(|e| StorageError::redb(&self.path, "scan its keys", e))?;
            let key = k.value();
            if Some(key) == start_after {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_owned(), self.decode(key, v.value())?));
        }
        Ok(out)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<KeyState, StorageError> {
        decode_key_state(bytes).map_err(|problem| StorageError::Corrupt {
            where_: self.path.display().to_string(),
            key: key.to_owned(),
            problem,
        })
    }
}

impl AcceptorStorage for RedbStorage {
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StorageError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StorageError::redb(&self.path, "begin a read", e))?;
        let table = txn
            .open_table(KEYS)
            .map_err(|e| StorageError::redb(&self.path, "open its key table", e))?;
        let found = table
            .get(key)
            .map_err(|e| StorageError::redb(&self.path, "read a key", e))?;
        match found {
            None => Ok(None),
            Some(v) => self.decode(key, v.value()).map(Some),
        }
    }

    fn store(&mut self, writes: &[(String, KeyState)]) -> Result<(), StorageError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| StorageError::redb(&self.path, "begin a write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StorageError::redb(&self.path, "set durability", e))?;
        {
            let mut table = txn
                .open_table(KEYS)
                .map_err(|e| StorageError::redb(&self.path, "open its key table", e))?;
            for (key, state) in writes {
                table
                    .insert(key.as_str(), encode_key_state(state).as_slice())
                    .map_err(|e| StorageError::redb(&self.path, "write a key", e))?;
            }
        }
        txn.commit()
            .map_err(|e| StorageError::redb(&self.path, "commit (fsync)", e))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::paxos::{AcceptedValue, Ballot, ProposerId, Register};

    fn state(c: u64, v: &'static [u8]) -> KeyState {
        let ballot = Ballot {
            counter: c,
            proposer: ProposerId(2),
        };
        KeyState {
            promised: ballot.next(),
            accepted: Some(AcceptedValue {
                ballot,
                register: Register {
                    version: c,
                    value: Some(Bytes::from_static(v)),
                },
            }),
        }
    }

    #[test]
    fn reopen_keeps_every_stored_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.redb");
        {
            let mut s = RedbStorage::open(&path).unwrap();
            assert_eq!(s.load("wxid/a").unwrap(), None);
            s.store(&[
                ("wxid/a".into(), state(1, b"x")),
                ("user/u".into(), state(2, b"y")),
            ])
            .unwrap();
            s.store(&[("wxid/a".into(), state(3, b"z"))]).unwrap();
        }
        let mut s = RedbStorage::open(&path).unwrap();
        assert_eq!(s.load("wxid/a").unwrap(), Some(state(3, b"z")));
        assert_eq!(s.load("user/u").unwrap(), Some(state(2, b"y")));
        assert_eq!(s.load("home/u").unwrap(), None);
    }

    #[test]
    fn second_open_of_one_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.redb");
        let _first = RedbStorage::open(&path).unwrap();
        let err = RedbStorage::open(&path).unwrap_err();
        assert!(matches!(err, StorageError::AlreadyOpen { .. }), "{err}");
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.redb");
        drop(RedbStorage::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_VERSION_KEY, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStorage::open(&path).unwrap_err();
        assert!(
            matches!(err, StorageError::UnsupportedFormat { found: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("format version 2"), "{err}");
    }

    #[test]
    fn damaged_bytes_are_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acceptor.redb");
        drop(RedbStorage::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(KEYS)
                .unwrap()
                .insert("wxid/bad", [0xffu8, 0xff, 0xff].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let mut s = RedbStorage::open(&path).unwrap();
        let err = s.load("wxid/bad").unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { ref key, .. } if key == "wxid/bad"),
            "{err}"
        );
    }

    #[test]
    fn scan_pages_through_one_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStorage::open(dir.path().join("a.redb")).unwrap();
        let writes: Vec<_> = ["home/a", "user/a", "user/b", "user/c", "wxid/a"]
            .iter()
            .map(|k| (k.to_string(), state(1, b"v")))
            .collect();
        s.store(&writes).unwrap();
        let page = s.scan("user/", None, 2).unwrap();
        let keys: Vec<_> = page.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["user/a", "user/b"]);
        let page = s.scan("user/", Some("user/b"), 2).unwrap();
        let keys: Vec<_> = page.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["user/c"]);
    }
}
