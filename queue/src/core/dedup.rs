//! A bounded memory of recently delivered entry ids.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

/// The last `capacity_entries` distinct ids inserted, oldest evicted first.
///
/// Bounded on purpose: a consumer runs for months, and remembering every id would grow without
/// limit. The cost is that a copy of an entry read more than `capacity_entries` deliveries after
/// the first copy is delivered again; delivery is at least once anyway (apply-if-newer and the id
/// as idempotency key absorb it).
#[derive(Debug, Clone)]
pub(crate) struct DedupWindow {
    capacity_entries: usize,
    ids: HashSet<Bytes>,
    order: VecDeque<Bytes>,
}

impl DedupWindow {
    pub(crate) fn new(capacity_entries: usize) -> Self {
        Self {
            capacity_entries,
            ids: HashSet::with_capacity(capacity_entries.min(1 << 16)),
            order: VecDeque::with_capacity(capacity_entries.min(1 << 16)),
        }
    }

    pub(crate) fn contains(&self, id: &[u8]) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`; false if it was already remembered (its age is then left as it was, so an
    /// id seen on all 3 nodes still leaves the window `capacity_entries` insertions after the first).
    pub(crate) fn insert(&mut self, id: Bytes) -> bool {
        if self.capacity_entries == 0 || self.ids.contains(&id) {
            return false;
        }
        let full = self.order.len() == self.capacity_entries;
        if let Some(oldest) = full.then(|| self.order.pop_front()).flatten() {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
        debug_assert_eq!(self.ids.len(), self.order.len());
        debug_assert!(self.order.len() <= self.capacity_entries);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> Bytes {
        Bytes::copy_from_slice(&n.to_be_bytes())
    }

    #[test]
    fn remembers_exactly_the_last_capacity_ids() {
        let mut w = DedupWindow::new(3);
        for n in 0..5 {
            assert!(w.insert(id(n)));
        }
        assert_eq!(w.len(), 3);
        assert!(!w.contains(&id(0)) && !w.contains(&id(1)));
        assert!(w.contains(&id(2)) && w.contains(&id(3)) && w.contains(&id(4)));
        // A repeat neither counts as new nor refreshes the id's age.
        assert!(!w.insert(id(2)));
        assert!(w.insert(id(5)));
        assert!(!w.contains(&id(2)));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut w = DedupWindow::new(0);
        assert!(!w.insert(id(1)));
        assert!(!w.contains(&id(1)));
        assert_eq!(w.len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn matches_a_naive_model(cap in 0usize..8, ids in proptest::collection::vec(0u32..16, 0..200)) {
            let mut w = DedupWindow::new(cap);
            let mut model: Vec<u32> = Vec::new();
            for n in ids {
                let fresh = w.insert(id(n));
                let model_fresh = cap > 0 && !model.contains(&n);
                proptest::prop_assert_eq!(fresh, model_fresh);
                if model_fresh {
                    model.push(n);
                    if model.len() > cap {
                        model.remove(0);
                    }
                }
                for m in 0..16 {
                    proptest::prop_assert_eq!(w.contains(&id(m)), model.contains(&m));
                }
            }
        }
    }
}
