//! FastReject admission: at most `max_in_flight` requests are worked on, at most `max_queued`
//! wait for a slot, and none waits longer than its deadline. Past capacity a request is refused
//! at once (503 + Retry-After) instead of joining a queue where everyone times out; a request
//! whose deadline passed while it waited is dropped before any work is done for it.
//!
//! [`Core`] is the decision logic, sans-IO (times are plain milliseconds handed in); [`Admission`]
//! is the tokio shell with one oneshot per waiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// What [`Core::offer`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer<W> {
    /// A slot was free: work on it now (release it with [`Core::release`]).
    Admit,
    /// Waiting as `id` until [`Core::release`] grants it or `deadline_ms` passes.
    Queued { id: u64, deadline_ms: u64 },
    /// Full: answer 503 now. The waiter is handed back.
    Reject(W),
}

/// What [`Core::release`] did with the freed slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Released<W> {
    /// The waiter now holding the slot, if one was waiting within its deadline.
    pub granted: Option<W>,
    /// Waiters dropped because their deadline passed while they waited.
    pub expired: Vec<W>,
}

struct Waiting<W> {
    id: u64,
    deadline_ms: u64,
    waiter: W,
}

/// The admission decisions; `W` is whatever wakes a waiter (a oneshot in the shell).
pub(crate) struct Core<W> {
    max_in_flight: usize,
    max_queued: usize,
    deadline_ms: u64,
    in_flight: usize,
    queue: VecDeque<Waiting<W>>,
    next_id: u64,
}

impl<W> Core<W> {
    pub fn new(max_in_flight: usize, max_queued: usize, deadline_ms: u64) -> Self {
        assert!(max_in_flight > 0, "admission needs at least one slot");
        Core {
            max_in_flight,
            max_queued,
            deadline_ms,
            in_flight: 0,
            queue: VecDeque::new(),
            next_id: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Takes a slot if one is free and nobody waits: the common case, decided without a clock
    /// or a waiter. `false`: call [`Core::offer`].
    pub fn try_admit(&mut self) -> bool {
        if self.in_flight < self.max_in_flight && self.queue.is_empty() {
            self.in_flight += 1;
            return true;
        }
        false
    }

    /// Frees a slot if nobody waits (nothing to grant or expire, so no clock is needed).
    /// `false`: call [`Core::release`].
    pub fn try_release_unqueued(&mut self) -> bool {
        if self.queue.is_empty() {
            assert!(self.in_flight > 0, "released a slot that was never taken");
            self.in_flight -= 1;
            return true;
        }
        false
    }

    pub fn offer(&mut self, now_ms: u64, waiter: W) -> Offer<W> {
        self.expire(now_ms);
        if self.in_flight < self.max_in_flight && self.queue.is_empty() {
            self.in_flight += 1;
            return Offer::Admit;
        }
        if self.queue.len() >= self.max_queued {
            return Offer::Reject(waiter);
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline_ms = now_ms.saturating_add(self.deadline_ms);
        self.queue.push_back(Waiting {
            id,
            deadline_ms,
            waiter,
        });
        Offer::Queued { id, deadline_ms }
    }

    /// A request finished: its slot goes to the oldest waiter still within its deadline.
    pub fn release(&mut self, now_ms: u64) -> Released<W> {
        assert!(self.in_flight > 0, "released a slot that was never taken");
        let expired = self.expire(now_ms);
        match self.queue.pop_front() {
            // The slot passes on: in_flight stays the same.
            Some(w) => Released {
                granted: Some(w.waiter),
                expired,
            },
            None => {
                self.in_flight -= 1;
                Released {
                    granted: None,
                    expired,
                }
            }
        }
    }

    /// Takes `id` out of the queue (its deadline passed or its client left). `None` when it is
    /// no longer queued: it was granted a slot, which the caller now holds and must release.
    pub fn cancel(&mut self, id: u64) -> Option<W> {
        let i = self.queue.iter().position(|w| w.id == id)?;
        self.queue.remove(i).map(|w| w.waiter)
    }

    /// Waiters are queued in deadline order (one deadline for all), so expired ones are in front.
    fn expire(&mut self, now_ms: u64) -> Vec<W> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|w| w.deadline_ms <= now_ms) {
            if let Some(w) = self.queue.pop_front() {
                out.push(w.waiter);
            }
        }
        out
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Every slot busy and the queue full.
    Full,
    /// It waited its whole deadline without getting a slot.
    Deadline,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Full => "full",
            Rejected::Deadline => "deadline",
        }
    }
}

/// The tokio shell around [`Core`].
pub(crate) struct Admission {
    core: Mutex<Core<oneshot::Sender<()>>>,
    started: Instant,
    /// Registered once: a lookup per request showed in profiles.
    admitted: metrics::Counter,
    rejected_full: metrics::Counter,
    rejected_deadline: metrics::Counter,
    queue_seconds: metrics::Histogram,
}

/// A held slot; dropping it passes the slot on.
pub(crate) struct Permit {
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release();
    }
}

impl Admission {
    pub fn new(max_in_flight: usize, max_queued: usize, deadline_ms: u64) -> Arc<Self> {
        let rejected = |reason: &'static str| metrics::counter!("homeport_gateway_rejected_total", "reason" => reason);
        Arc::new(Admission {
            core: Mutex::new(Core::new(max_in_flight, max_queued, deadline_ms)),
            started: Instant::now(),
            admitted: metrics::counter!("homeport_gateway_admitted_total"),
            rejected_full: rejected(Rejected::Full.as_str()),
            rejected_deadline: rejected(Rejected::Deadline.as_str()),
            queue_seconds: metrics::histogram!("homeport_gateway_queue_seconds"),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core<oneshot::Sender<()>>> {
        // A panic while holding the lock leaves plain counters behind; keep serving.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot if one is free and nobody waits: no channel, no clock, no future (each showed in
    /// profiles at 40k requests/s). `None`: wait with [`Admission::acquire`].
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        if !self.lock().try_admit() {
            return None;
        }
        self.admitted.increment(1);
        self.queue_seconds.record(0.0);
        Some(Permit {
            admission: self.clone(),
        })
    }

    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Rejected> {
        if let Some(p) = self.try_acquire() {
            return Ok(p);
        }
        let start = Instant::now();
        let (tx, rx) = oneshot::channel();
        let offer = self.lock().offer(self.now_ms(), tx);
        let outcome = match offer {
            Offer::Admit => Ok(()),
            Offer::Reject(_) => Err(Rejected::Full),
            Offer::Queued { id, deadline_ms } => {
                let wait = Duration::from_millis(deadline_ms.saturating_sub(self.now_ms()));
                match tokio::time::timeout(wait, rx).await {
                    Ok(Ok(())) => Ok(()),
                    // Dropped by `release`: it expired in the queue.
                    Ok(Err(_)) => Err(Rejected::Deadline),
                    Err(_) => {
                        if self.lock().cancel(id).is_none() {
                            // Granted just as the deadline passed: it is too late to start
                            // work, so hand the slot on.
                            self.release();
                        }
                        Err(Rejected::Deadline)
                    }
                }
            }
        };
        match outcome {
            Ok(()) => {
                self.admitted.increment(1);
                self.queue_seconds.record(start.elapsed().as_secs_f64());
                Ok(Permit {
                    admission: self.clone(),
                })
            }
            Err(reason) => {
                match reason {
                    Rejected::Full => self.rejected_full.increment(1),
                    Rejected::Deadline => self.rejected_deadline.increment(1),
                }
                Err(reason)
            }
        }
    }

    fn release(&self) {
        if self.lock().try_release_unqueued() {
            return;
        }
        loop {
            let released = self.lock().release(self.now_ms());
            drop(released.expired);
            let Some(tx) = released.granted else { return };
            if tx.send(()).is_ok() {
                return;
            }
            // The waiter left (client gone, or its own timer fired): pass the slot on.
        }
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight()
    }

    pub fn queued(&self) -> usize {
        self.lock().queued()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_paths_only_decide_when_nobody_waits() {
        let mut c: Core<char> = Core::new(1, 1, 100);
        assert!(c.try_admit());
        assert!(!c.try_admit(), "full: the caller must queue");
        assert!(matches!(c.offer(0, 'b'), Offer::Queued { .. }));
        assert!(
            !c.try_release_unqueued(),
            "a waiter must be granted the slot"
        );
        assert_eq!(c.release(1).granted, Some('b'));
        assert!(!c.try_admit(), "still taken, by b");
        assert!(c.try_release_unqueued());
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn admits_up_to_capacity_then_queues_then_rejects() {
        let mut c = Core::new(2, 1, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        assert_eq!(c.offer(0, 'b'), Offer::Admit);
        assert_eq!(
            c.offer(0, 'c'),
            Offer::Queued {
                id: 0,
                deadline_ms: 100
            }
        );
        assert_eq!(c.offer(0, 'd'), Offer::Reject('d'));
        assert_eq!((c.in_flight(), c.queued()), (2, 1));
    }

    #[test]
    fn a_released_slot_goes_to_the_oldest_waiter() {
        let mut c = Core::new(1, 3, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        assert!(matches!(c.offer(1, 'b'), Offer::Queued { .. }));
        assert!(matches!(c.offer(2, 'c'), Offer::Queued { .. }));
        let r = c.release(10);
        assert_eq!(r.granted, Some('b'));
        assert_eq!(c.in_flight(), 1, "the slot passed on");
        let r = c.release(20);
        assert_eq!(r.granted, Some('c'));
        let r = c.release(30);
        assert_eq!(r.granted, None);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn waiters_past_their_deadline_are_dropped_not_granted() {
        let mut c = Core::new(1, 3, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        assert!(matches!(c.offer(0, 'b'), Offer::Queued { .. }));
        assert!(matches!(c.offer(50, 'c'), Offer::Queued { .. }));
        let r = c.release(120);
        assert_eq!(r.expired, vec!['b']);
        assert_eq!(r.granted, Some('c'));
        let r = c.release(500);
        assert_eq!((r.granted, r.expired), (None, vec![]));
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn expired_waiters_free_queue_room_for_new_offers() {
        let mut c = Core::new(1, 1, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        assert!(matches!(c.offer(0, 'b'), Offer::Queued { .. }));
        assert_eq!(c.offer(10, 'c'), Offer::Reject('c'));
        assert!(matches!(c.offer(100, 'd'), Offer::Queued { .. }));
    }

    #[test]
    fn a_new_request_does_not_overtake_waiters() {
        let mut c = Core::new(1, 2, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        assert!(matches!(c.offer(0, 'b'), Offer::Queued { .. }));
        // 'b' is granted the slot 'a' frees; a newcomer queues behind.
        assert_eq!(c.release(1).granted, Some('b'));
        assert!(matches!(c.offer(1, 'c'), Offer::Queued { .. }));
    }

    #[test]
    fn cancel_removes_a_waiter_or_says_it_was_granted() {
        let mut c = Core::new(1, 2, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        let Offer::Queued { id: b, .. } = c.offer(0, 'b') else {
            panic!("b must queue")
        };
        let Offer::Queued { id: d, .. } = c.offer(0, 'd') else {
            panic!("d must queue")
        };
        assert_eq!(c.cancel(d), Some('d'));
        assert_eq!(c.release(1).granted, Some('b'));
        assert_eq!(c.cancel(b), None, "b already holds the slot");
    }

    #[test]
    fn zero_queue_rejects_at_once_when_busy() {
        let mut c = Core::new(1, 0, 100);
        assert_eq!(c.offer(0, 'a'), Offer::Admit);
        assert_eq!(c.offer(0, 'b'), Offer::Reject('b'));
    }

    #[tokio::test]
    async fn the_shell_hands_slots_over_and_times_out_waiters() {
        let a = Admission::new(1, 4, 10_000);
        let first = a.acquire().await.expect("free slot");
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.acquire().await.map(|_p| ()) })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(a.in_flight(), 0);

        let short = Admission::new(1, 4, 1);
        let _held = short.acquire().await.expect("free slot");
        assert_eq!(short.acquire().await.err(), Some(Rejected::Deadline));
        assert_eq!(short.queued(), 0);
        assert_eq!(short.in_flight(), 1);
    }
}
