use std::collections::BTreeMap;

use super::{AcceptorStorage, KeyState, StorageError};

/// Acceptor state in a map, for tests and the model checker. Writes are "durable" the moment
/// `store` returns, so a simulated crash of its acceptor loses nothing that was answered; keep
/// the `MemStorage` and build a new acceptor on it to restart.
///
/// Faults: [`MemStorage::fail_next_writes`] makes the next writes fail without changing
/// anything, as a full or broken disk would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MemStorage {
    keys: BTreeMap<String, KeyState>,
    failing_writes: u32,
    writes_done: u64,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` calls of `store` fail and write nothing.
    pub fn fail_next_writes(&mut self, n: u32) {
        self.failing_writes = n;
    }

    /// How many `store` calls succeeded.
    pub fn writes_done(&self) -> u64 {
        self.writes_done
    }

    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.keys.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &KeyState)> {
        self.keys.iter()
    }

    /// Overwrites a key's state, bypassing the acceptor: for tests that build a broken or
    /// pre-existing state.
    pub fn put(&mut self, key: &str, state: KeyState) {
        self.keys.insert(key.to_owned(), state);
    }
}

impl AcceptorStorage for MemStorage {
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StorageError> {
        Ok(self.keys.get(key).cloned())
    }

    fn store(&mut self, writes: &[(String, KeyState)]) -> Result<(), StorageError> {
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err(StorageError::Injected {
                what: "write failure",
            });
        }
        for (key, state) in writes {
            self.keys.insert(key.clone(), state.clone());
        }
        self.writes_done += 1;
        Ok(())
    }
}
