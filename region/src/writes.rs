//! The write path at a user's home: one store transaction (record + outbox entry), then the queue.
//!
//! The client hears `Committed` only once the change is on 2 of 3 nodes of a queue group. If no
//! group takes it in time, the change is still durable at home and in the outbox, and the shipper
//! will ship it (same entry id): the client hears `DurableNotShipped` and may retry with the same
//! idempotency key, which never writes twice.

use std::time::Duration;

use bytes::Bytes;
use homeport_store::{StoreError, WriteOp, WriteOutcome, WriteRequest};

use crate::Shared;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    Committed { version: u64 },
    DurableNotShipped { version: u64, reason: String },
    Conflict { current: u64 },
    NotHome { home: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("region {0} is shutting down; retry at another moment")]
    ShuttingDown(String),
}

pub(crate) async fn write(
    shared: &Shared,
    uid: &str,
    key: &str,
    op: WriteOp,
    expected_version: Option<u64>,
    idempotency_key: Option<String>,
) -> Result<WriteResult, WriteError> {
    if shared.is_shutting_down() {
        return Err(WriteError::ShuttingDown(shared.region.clone()));
    }
    let home = shared.homes.home_of(uid);
    if home.as_deref() != Some(shared.region.as_str()) {
        return Ok(WriteResult::NotHome { home });
    }
    let req = WriteRequest {
        uid: uid.to_owned(),
        key: key.to_owned(),
        op,
        expected_version,
        idempotency_key,
        entry_id: shared.producer.next_id(),
        now_unix_ms: homeport_queue::entry::now_unix_ms(),
    };
    match shared.store.write(req).await? {
        WriteOutcome::Written {
            version,
            outbox_seq,
            entry,
        } => Ok(ship(shared, version, outbox_seq, entry).await),
        WriteOutcome::Replayed {
            version,
            outbox_seq: None,
        } => Ok(WriteResult::Committed { version }),
        WriteOutcome::Replayed {
            version,
            outbox_seq: Some(seq),
        } if shared.recently_shipped.contains(seq) => Ok(WriteResult::Committed { version }),
        WriteOutcome::Replayed {
            version,
            outbox_seq: Some(_),
        } => Ok(WriteResult::DurableNotShipped {
            version,
            reason: "the first attempt with this idempotency key is durable at home and still \
                     waiting for a queue group; the outbox shipper will ship it"
                .to_owned(),
        }),
        WriteOutcome::VersionMismatch { current } => Ok(WriteResult::Conflict { current }),
    }
}

/// Appends the outbox entry to the queue; on commit, hands its outbox slot to the remover.
async fn ship(shared: &Shared, version: u64, outbox_seq: u64, entry: Bytes) -> WriteResult {
    let deadline = Duration::from_millis(shared.deployment.queue.append_timeout_ms);
    match tokio::time::timeout(deadline, shared.producer.append_encoded(vec![entry])).await {
        Ok(Ok(_)) => {
            shared.recently_shipped.insert(outbox_seq);
            // A full remover queue only delays the removal: the shipper would re-ship the entry
            // (same id; apply-if-newer makes that harmless), so never block the client on it.
            let _ = shared.outbox_done.try_send(outbox_seq);
            metrics::counter!("homeport_region_writes_committed_total").increment(1);
            WriteResult::Committed { version }
        }
        Ok(Err(e)) => {
            metrics::counter!("homeport_region_writes_unshipped_total").increment(1);
            WriteResult::DurableNotShipped {
                version,
                reason: e.to_string(),
            }
        }
        Err(_) => {
            metrics::counter!("homeport_region_writes_unshipped_total").increment(1);
            WriteResult::DurableNotShipped {
                version,
                reason: format!(
                    "no queue group committed the change within append_timeout_ms = {}",
                    deadline.as_millis()
                ),
            }
        }
    }
}

/// Outbox slots whose entries committed lately. A retry with the same idempotency key may arrive
/// before the remover has deleted the first attempt's slot; this lets it hear "committed" rather
/// than a false "not yet shipped". Bounded: the oldest are forgotten first.
pub(crate) struct RecentlyShipped {
    inner: std::sync::Mutex<(
        std::collections::VecDeque<u64>,
        std::collections::HashSet<u64>,
    )>,
    capacity: usize,
}

impl RecentlyShipped {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        Self {
            inner: std::sync::Mutex::new(Default::default()),
            capacity,
        }
    }

    pub(crate) fn insert(&self, seq: u64) {
        let mut g = self.inner.lock().expect("recently shipped lock poisoned");
        let (order, set) = &mut *g;
        if set.insert(seq) {
            order.push_back(seq);
            if order.len() > self.capacity
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
        debug_assert_eq!(order.len(), set.len());
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.inner
            .lock()
            .expect("recently shipped lock poisoned")
            .1
            .contains(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::RecentlyShipped;

    #[test]
    fn remembers_the_most_recent_slots_only() {
        let r = RecentlyShipped::new(2);
        r.insert(1);
        r.insert(2);
        r.insert(2);
        assert!(r.contains(1) && r.contains(2));
        r.insert(3);
        assert!(!r.contains(1), "the oldest is forgotten past the capacity");
        assert!(r.contains(2) && r.contains(3));
    }
}
