//! The consumer core driven by hand and by a seeded simulation of 3 node logs: no sockets, no sleeps.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_queue::core::consumer::{
    Consumer, ConsumerConfig, ConsumerConfigError, ConsumerEvent, Cursor, Delivery, IdKey,
    NodeCursor, ReadBatch, ReadFailure, ReadRequestOut,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const RETRY_BACKOFF_MS: u64 = 100;
const MAX_RETRY_BACKOFF_MS: u64 = 1_000;

fn cfg() -> ConsumerConfig {
    ConsumerConfig {
        nodes: ["a".into(), "b".into(), "c".into()],
        read_max_bytes: 1 << 20,
        read_max_entries: 100,
        wait_ms: 500,
        retry_backoff_ms: RETRY_BACKOFF_MS,
        max_retry_backoff_ms: MAX_RETRY_BACKOFF_MS,
        dedup_window_entries: 10_000,
        max_buffered_entries: 1_000,
    }
}

/// Test entries are `E` + an 8-byte id; anything else is undecodable.
fn entry(id: u64) -> Bytes {
    let mut b = vec![b'E'];
    b.extend_from_slice(&id.to_be_bytes());
    Bytes::from(b)
}

fn id_of(bytes: &[u8]) -> Option<IdKey> {
    (bytes.len() == 9 && bytes[0] == b'E').then(|| Bytes::copy_from_slice(&bytes[1..]))
}

fn id_num(bytes: &[u8]) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[1..9]);
    u64::from_be_bytes(b)
}

const INC_A: [u8; 16] = [0xa; 16];
const INC_B: [u8; 16] = [0xb; 16];
const INC_C: [u8; 16] = [0xc; 16];
const INCS: [[u8; 16]; 3] = [INC_A, INC_B, INC_C];

/// A node's log as a consumer sees it: entries at consecutive offsets from `start_offset`.
#[derive(Debug, Clone)]
struct Log {
    incarnation: [u8; 16],
    start_offset: u64,
    entries: Vec<Bytes>,
    /// How a real node answers a read beyond its head: `true` as an empty answer naming its
    /// incarnation, `false` as an error (which hides a new incarnation).
    answers_beyond_head: bool,
}

impl Log {
    fn new(incarnation: [u8; 16], ids: &[u64]) -> Self {
        Self {
            incarnation,
            start_offset: 0,
            entries: ids.iter().map(|i| entry(*i)).collect(),
            answers_beyond_head: true,
        }
    }

    fn head(&self) -> u64 {
        self.start_offset + self.entries.len() as u64
    }

    fn read(&self, from: u64, max_entries: u32) -> Result<ReadBatch, ReadFailure> {
        if from < self.start_offset {
            return Err(ReadFailure::Trimmed {
                start_offset: self.start_offset,
            });
        }
        if from > self.head() {
            if !self.answers_beyond_head {
                return Err(ReadFailure::Other(format!(
                    "offset {from} is beyond the durable head {}",
                    self.head()
                )));
            }
            return Ok(ReadBatch {
                incarnation: self.incarnation,
                start_offset: self.start_offset,
                durable_head: self.head(),
                next_offset: self.head(),
                entries: Vec::new(),
            });
        }
        let first = (from - self.start_offset) as usize;
        let last = (first + max_entries as usize).min(self.entries.len());
        Ok(ReadBatch {
            incarnation: self.incarnation,
            start_offset: self.start_offset,
            durable_head: self.head(),
            next_offset: self.start_offset + last as u64,
            entries: (first..last)
                .map(|i| (self.start_offset + i as u64, self.entries[i].clone()))
                .collect(),
        })
    }
}

fn events(c: &mut Consumer) -> Vec<ConsumerEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn deliveries(c: &mut Consumer) -> Vec<Delivery> {
    std::iter::from_fn(|| c.poll_delivery()).collect()
}

fn reads(c: &mut Consumer, now: Instant) -> Vec<ReadRequestOut> {
    std::iter::from_fn(|| c.poll_read(now)).collect()
}

/// Answers every read at once from `logs` until no node has more, returning the delivered ids.
fn run_to_end(c: &mut Consumer, now: Instant, logs: &[Log; 3]) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let rs = reads(c, now);
        let mut progressed = false;
        for r in rs {
            let result = logs[r.node].read(r.from_offset, r.max_entries);
            if let Ok(b) = &result {
                progressed |= !b.entries.is_empty() || b.next_offset != r.from_offset;
            }
            c.on_read_result(now, r.node, result);
        }
        let ds = deliveries(c);
        progressed |= !ds.is_empty();
        out.extend(ds.iter().map(|d| id_num(&d.entry)));
        if !progressed {
            return out;
        }
    }
    panic!("consumer did not reach the end of the logs");
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

#[test]
fn config_limits_that_would_stall_or_spin_are_refused() {
    assert_eq!(cfg().validate(), Ok(()));
    let mut c = cfg();
    c.max_buffered_entries = 0;
    assert_eq!(
        c.validate(),
        Err(ConsumerConfigError::Zero {
            setting: "max_buffered_entries"
        })
    );
    let mut c = cfg();
    c.max_retry_backoff_ms = 10;
    assert!(matches!(
        c.validate(),
        Err(ConsumerConfigError::BackoffCapBelowStart { .. })
    ));
    let mut c = cfg();
    c.nodes[2] = "a".into();
    assert_eq!(
        c.validate(),
        Err(ConsumerConfigError::DuplicateNode("a".into()))
    );
    // A zero limit is raised to 1 rather than stalling the consumer forever.
    let mut c = cfg();
    c.read_max_entries = 0;
    let mut consumer = Consumer::new(c, None, id_of);
    assert_eq!(consumer.poll_read(Instant::now()).unwrap().max_entries, 1);
}

#[test]
fn three_nodes_with_the_same_entries_in_different_orders_deliver_each_once() {
    let now = Instant::now();
    let logs = [
        Log::new(INC_A, &[1, 2, 3, 4, 5]),
        Log::new(INC_B, &[2, 1, 3, 5, 4]),
        Log::new(INC_C, &[5, 4, 3, 2, 1]),
    ];
    let mut c = Consumer::new(cfg(), None, id_of);
    let rs = reads(&mut c, now);
    assert_eq!(
        rs.iter()
            .map(|r| (r.node, r.from_offset))
            .collect::<Vec<_>>(),
        vec![(0, 0), (1, 0), (2, 0)],
        "every node is read, each from its own offset"
    );
    assert!(reads(&mut c, now).is_empty(), "one read per node at a time");
    for r in rs {
        c.on_read_result(now, r.node, logs[r.node].read(r.from_offset, r.max_entries));
    }
    let got: Vec<u64> = deliveries(&mut c)
        .iter()
        .map(|d| id_num(&d.entry))
        .collect();
    assert_eq!(sorted(got), vec![1, 2, 3, 4, 5]);
    let cur = c.cursor();
    assert!(cur.nodes.iter().all(|n| n.next_offset == 5));
    assert_eq!(
        cur.nodes.iter().map(|n| n.incarnation).collect::<Vec<_>>(),
        INCS.map(Some).to_vec()
    );
    assert!(events(&mut c).is_empty());
}

#[test]
fn an_entry_on_only_two_nodes_is_delivered() {
    let now = Instant::now();
    let logs = [
        Log::new(INC_A, &[1, 2]),
        Log::new(INC_B, &[1, 3, 2]),
        Log::new(INC_C, &[3, 1]),
    ];
    let mut c = Consumer::new(cfg(), None, id_of);
    assert_eq!(sorted(run_to_end(&mut c, now, &logs)), vec![1, 2, 3]);
}

#[test]
fn a_node_down_backs_off_exponentially_then_is_caught_up() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    // Entry 4 is on nodes a and c; a answers, c is down until later.
    let logs = [
        Log::new(INC_A, &[1, 2]),
        Log::new(INC_B, &[1, 2, 3]),
        Log::new(INC_C, &[3, 4]),
    ];
    let mut c = Consumer::new(cfg(), None, id_of);
    let mut got = Vec::new();
    for r in reads(&mut c, t0) {
        let result = if r.node == 2 {
            Err(ReadFailure::Unreachable("connection refused".into()))
        } else {
            logs[r.node].read(r.from_offset, r.max_entries)
        };
        c.on_read_result(t0, r.node, result);
    }
    got.extend(deliveries(&mut c).iter().map(|d| id_num(&d.entry)));
    assert_eq!(
        events(&mut c),
        vec![ConsumerEvent::NodeDown {
            node: 2,
            reason: "node unreachable: connection refused".into()
        }]
    );
    let states = c.node_states();
    assert!(!states[2].reachable && states[0].reachable);
    assert_eq!(states[2].consecutive_failures, 1);
    // Backoff: 100, 200, 400, 800, then capped at 1000 ms.
    let mut now_ms = 0;
    for expected_ms in [100, 200, 400, 800, 1_000, 1_000] {
        assert_eq!(c.poll_timeout(), Some(at(now_ms + expected_ms)));
        assert!(
            reads(&mut c, at(now_ms + expected_ms - 1))
                .iter()
                .all(|r| r.node != 2),
            "no read of a node before its retry time"
        );
        // Nodes 0 and 1 are at their end: their reads stay outstanding (long poll).
        now_ms += expected_ms;
        c.on_timeout(at(now_ms));
        let rs = reads(&mut c, at(now_ms));
        assert_eq!(rs.iter().map(|r| r.node).collect::<Vec<_>>(), vec![2]);
        c.on_read_result(
            at(now_ms),
            2,
            Err(ReadFailure::Unreachable("connection refused".into())),
        );
    }
    assert_eq!(events(&mut c).len(), 0, "NodeDown once per outage");
    now_ms += 1_000;
    c.on_timeout(at(now_ms));
    let r = reads(&mut c, at(now_ms));
    assert_eq!(r.len(), 1);
    c.on_read_result(at(now_ms), 2, logs[2].read(r[0].from_offset, 100));
    assert_eq!(events(&mut c), vec![ConsumerEvent::NodeUp { node: 2 }]);
    got.extend(deliveries(&mut c).iter().map(|d| id_num(&d.entry)));
    assert_eq!(sorted(got), vec![1, 2, 3, 4]);
    assert_eq!(c.node_states()[2].consecutive_failures, 0);
}

#[test]
fn a_wiped_node_is_read_from_its_new_start_and_nothing_the_others_hold_is_missed() {
    let now = Instant::now();
    let before = [
        Log::new(INC_A, &[1, 2, 3, 4]),
        Log::new(INC_B, &[1, 2, 3, 4]),
        Log::new(INC_C, &[1, 3]),
    ];
    let mut c = Consumer::new(cfg(), None, id_of);
    // Only node a is read before it is wiped.
    let rs = reads(&mut c, now);
    c.on_read_result(now, 0, before[0].read(0, rs[0].max_entries));
    let mut got: Vec<u64> = deliveries(&mut c)
        .iter()
        .map(|d| id_num(&d.entry))
        .collect();
    assert_eq!(c.cursor().nodes[0].next_offset, 4);
    // Node a comes back wiped, then gets entries 5 and 6 (committed with b and c).
    let new_a = [0xee; 16];
    let after = [
        Log::new(new_a, &[5, 6]),
        Log::new(INC_B, &[1, 2, 3, 4, 5]),
        Log::new(INC_C, &[1, 3, 6]),
    ];
    // The outstanding reads of b and c are answered from the new state.
    c.on_read_result(now, 1, after[1].read(0, 100));
    c.on_read_result(now, 2, after[2].read(0, 100));
    got.extend(run_to_end(&mut c, now, &after));
    let ev = events(&mut c);
    assert!(
        ev.contains(&ConsumerEvent::IncarnationChanged {
            node: 0,
            old: INC_A,
            new: new_a
        }),
        "{ev:?}"
    );
    assert_eq!(sorted(got), vec![1, 2, 3, 4, 5, 6]);
    let cur = c.cursor();
    assert_eq!(cur.nodes[0].incarnation, Some(new_a));
    assert_eq!(cur.nodes[0].next_offset, 2);
}

#[test]
fn a_wiped_node_answering_from_a_stale_offset_is_reread_from_its_start() {
    let now = Instant::now();
    let restored = Cursor {
        nodes: vec![NodeCursor {
            node_id: "a".into(),
            incarnation: Some(INC_A),
            next_offset: 2,
        }],
    };
    let mut c = Consumer::new(cfg(), Some(restored), id_of);
    let new_a = Log::new([0xee; 16], &[7, 8, 9, 10]);
    let r = reads(&mut c, now);
    assert_eq!((r[0].node, r[0].from_offset), (0, 2));
    // The new log is long enough that offset 2 exists in it: entries 7 and 8 would be skipped.
    c.on_read_result(now, 0, new_a.read(2, 100));
    assert!(
        deliveries(&mut c).is_empty(),
        "a read from a stale offset is discarded"
    );
    let r: Vec<_> = reads(&mut c, now)
        .into_iter()
        .filter(|r| r.node == 0)
        .collect();
    assert_eq!(r[0].from_offset, 0, "re-read from the new log's start");
    c.on_read_result(now, 0, new_a.read(0, 100));
    let got: Vec<u64> = deliveries(&mut c)
        .iter()
        .map(|d| id_num(&d.entry))
        .collect();
    assert_eq!(got, vec![7, 8, 9, 10]);
}

#[test]
fn cursor_save_and_restore_resumes_without_loss() {
    let now = Instant::now();
    let logs = [
        Log::new(INC_A, &(0..50).collect::<Vec<_>>()),
        Log::new(INC_B, &(0..50).map(|i| i ^ 1).collect::<Vec<_>>()),
        Log::new(INC_C, &(25..75).collect::<Vec<_>>()),
    ];
    let mut config = cfg();
    config.read_max_entries = 7;
    let mut c = Consumer::new(config.clone(), None, id_of);
    // Read 3 rounds (63 entries), but hand out only 30 of them before the "crash".
    for _ in 0..3 {
        for r in reads(&mut c, now) {
            c.on_read_result(now, r.node, logs[r.node].read(r.from_offset, r.max_entries));
        }
    }
    assert_eq!(
        c.node_states().iter().map(|s| s.read_offset).sum::<u64>(),
        63
    );
    let mut processed = BTreeSet::new();
    for _ in 0..30 {
        let d = c.poll_delivery().expect("63 entries were read");
        assert!(
            c.cursor().nodes[d.node].next_offset > d.offset,
            "the cursor covers what was handed out"
        );
        processed.insert(id_num(&d.entry));
    }
    let saved = c.cursor();
    drop(c);
    let mut resumed = Consumer::new(config, Some(saved.clone()), id_of);
    let first = reads(&mut resumed, now);
    for r in &first {
        assert_eq!(r.from_offset, saved.nodes[r.node].next_offset);
    }
    for r in first {
        resumed.on_read_result(now, r.node, logs[r.node].read(r.from_offset, r.max_entries));
    }
    let mut after: Vec<u64> = deliveries(&mut resumed)
        .iter()
        .map(|d| id_num(&d.entry))
        .collect();
    after.extend(run_to_end(&mut resumed, now, &logs));
    processed.extend(after.iter().copied());
    assert_eq!(processed, (0..75).collect::<BTreeSet<_>>());
    // Re-delivery is bounded by what the 30 handed-out entries left on other nodes: at most 60.
    let again = after.iter().filter(|i| **i < 75).count() - (75 - 30);
    assert!(again <= 60, "{again} re-deliveries");
}

#[test]
fn a_cursor_for_other_nodes_is_ignored_and_missing_nodes_start_at_zero() {
    let restored = Cursor {
        nodes: vec![
            NodeCursor {
                node_id: "old-node".into(),
                incarnation: Some(INC_A),
                next_offset: 99,
            },
            NodeCursor {
                node_id: "c".into(),
                incarnation: Some(INC_C),
                next_offset: 12,
            },
        ],
    };
    let mut c = Consumer::new(cfg(), Some(restored), id_of);
    let offsets: Vec<_> = reads(&mut c, Instant::now())
        .iter()
        .map(|r| (r.node, r.from_offset))
        .collect();
    assert_eq!(offsets, vec![(0, 0), (1, 0), (2, 12)]);
    let cur = c.cursor();
    assert_eq!(
        cur.nodes
            .iter()
            .map(|n| n.node_id.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b", "c"]
    );
    assert_eq!(cur.nodes[0].incarnation, None);
}

#[test]
fn trimmed_offsets_are_skipped_and_reported() {
    let now = Instant::now();
    let restored = Cursor {
        nodes: vec![NodeCursor {
            node_id: "a".into(),
            incarnation: Some(INC_A),
            next_offset: 3,
        }],
    };
    let mut log = Log::new(
        INC_A,
        &[100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110],
    );
    log.start_offset = 10;
    log.entries.drain(..1);
    let mut c = Consumer::new(cfg(), Some(restored.clone()), id_of);
    let r = reads(&mut c, now);
    c.on_read_result(now, 0, log.read(r[0].from_offset, 100));
    assert_eq!(
        events(&mut c),
        vec![ConsumerEvent::SkippedTrimmed {
            node: 0,
            from: 3,
            to: 10
        }]
    );
    assert!(
        c.node_states()[0].reachable,
        "a trimmed offset is not a node failure"
    );
    let r: Vec<_> = reads(&mut c, now)
        .into_iter()
        .filter(|r| r.node == 0)
        .collect();
    assert_eq!(r[0].from_offset, 10);
    c.on_read_result(now, 0, log.read(10, 100));
    assert_eq!(deliveries(&mut c).len(), 10);

    // A node that answers with entries from its start (instead of `Trimmed`) is reported too.
    let mut c = Consumer::new(cfg(), Some(restored), id_of);
    let r = reads(&mut c, now);
    let mut answer = log.read(10, 100).unwrap();
    answer.start_offset = 10;
    c.on_read_result(now, r[0].node, Ok(answer));
    assert_eq!(
        events(&mut c),
        vec![ConsumerEvent::SkippedTrimmed {
            node: 0,
            from: 3,
            to: 10
        }]
    );
    assert_eq!(deliveries(&mut c).len(), 10);
}

#[test]
fn reads_stop_while_a_node_has_max_buffered_entries() {
    let now = Instant::now();
    let mut config = cfg();
    config.max_buffered_entries = 4;
    config.read_max_entries = 3;
    let log = Log::new(INC_A, &(0..20).collect::<Vec<_>>());
    let mut c = Consumer::new(config, None, id_of);
    let r = reads(&mut c, now);
    assert_eq!(r[0].max_entries, 3);
    c.on_read_result(now, 0, log.read(0, 3));
    let r: Vec<_> = reads(&mut c, now)
        .into_iter()
        .filter(|r| r.node == 0)
        .collect();
    assert_eq!(
        r[0].max_entries, 1,
        "a read never asks for more than the room left"
    );
    c.on_read_result(now, 0, log.read(3, 1));
    assert!(
        reads(&mut c, now).iter().all(|r| r.node != 0),
        "node 0 has 4 buffered entries: no read"
    );
    assert_eq!(c.node_states()[0].buffered_entries, 4);
    c.poll_delivery().unwrap();
    let r: Vec<_> = reads(&mut c, now)
        .into_iter()
        .filter(|r| r.node == 0)
        .collect();
    assert_eq!((r[0].from_offset, r[0].max_entries), (4, 1));
}

#[test]
fn undecodable_entries_are_reported_and_never_delivered() {
    let now = Instant::now();
    let mut log = Log::new(INC_A, &[1]);
    log.entries.push(Bytes::from_static(b"garbage"));
    log.entries.push(entry(2));
    let mut c = Consumer::new(cfg(), None, id_of);
    let _ = reads(&mut c, now);
    c.on_read_result(now, 0, log.read(0, 100));
    let got: Vec<u64> = deliveries(&mut c)
        .iter()
        .map(|d| id_num(&d.entry))
        .collect();
    assert_eq!(got, vec![1, 2]);
    assert_eq!(
        events(&mut c),
        vec![ConsumerEvent::Undecodable { node: 0, offset: 1 }]
    );
    assert_eq!(c.node_states()[0].undecodable_entries, 1);
    assert_eq!(c.cursor().nodes[0].next_offset, 3);
}

#[test]
fn delivery_alternates_between_nodes_per_read() {
    let now = Instant::now();
    let logs = [
        Log::new(INC_A, &(0..10).collect::<Vec<_>>()),
        Log::new(INC_B, &[100, 101]),
        Log::new(INC_C, &[200, 201]),
    ];
    let mut c = Consumer::new(cfg(), None, id_of);
    for r in reads(&mut c, now) {
        let max = if r.node == 0 { 4 } else { 100 };
        c.on_read_result(now, r.node, logs[r.node].read(r.from_offset, max));
    }
    for r in reads(&mut c, now) {
        c.on_read_result(now, r.node, logs[r.node].read(r.from_offset, 4));
    }
    let nodes: Vec<usize> = deliveries(&mut c).iter().map(|d| d.node).collect();
    // Node a's second read waits behind b's and c's first, not the other way round.
    assert_eq!(nodes, vec![0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 0]);
}

#[test]
fn malformed_answers_are_failures_and_deliver_nothing() {
    let now = Instant::now();
    let mut c = Consumer::new(cfg(), None, id_of);
    let _ = reads(&mut c, now);
    c.on_read_result(
        now,
        0,
        Ok(ReadBatch {
            incarnation: INC_A,
            start_offset: 0,
            durable_head: 10,
            next_offset: 10,
            entries: vec![(5, entry(1)), (4, entry(2))],
        }),
    );
    assert!(deliveries(&mut c).is_empty());
    let ev = events(&mut c);
    assert!(
        matches!(&ev[..], [ConsumerEvent::NodeDown { node: 0, reason }] if reason.contains("malformed")),
        "{ev:?}"
    );
    assert_eq!(c.cursor().nodes[0].next_offset, 0);
}

#[test]
fn a_head_below_the_read_offset_rewinds_to_it() {
    let now = Instant::now();
    let restored = Cursor {
        nodes: vec![NodeCursor {
            node_id: "b".into(),
            incarnation: Some(INC_B),
            next_offset: 8,
        }],
    };
    let mut c = Consumer::new(cfg(), Some(restored), id_of);
    let log = Log::new(INC_B, &[1, 2, 3, 4, 5]);
    let r: Vec<_> = reads(&mut c, now)
        .into_iter()
        .filter(|r| r.node == 1)
        .collect();
    assert_eq!(r[0].from_offset, 8);
    c.on_read_result(now, 1, log.read(8, 100));
    assert_eq!(
        events(&mut c),
        vec![ConsumerEvent::HeadRegressed {
            node: 1,
            read_offset: 8,
            durable_head: 5
        }]
    );
    let r: Vec<_> = reads(&mut c, now)
        .into_iter()
        .filter(|r| r.node == 1)
        .collect();
    assert_eq!(r[0].from_offset, 5);
}

#[test]
fn the_dedup_window_is_bounded() {
    let now = Instant::now();
    let mut config = cfg();
    config.dedup_window_entries = 2;
    let logs = [
        Log::new(INC_A, &[1, 2, 3]),
        Log::new(INC_B, &[]),
        Log::new(INC_C, &[]),
    ];
    let mut c = Consumer::new(config, None, id_of);
    assert_eq!(run_to_end(&mut c, now, &logs), vec![1, 2, 3]);
    // Node b now holds 3 (still in the window: skipped) and 1 (evicted: delivered again).
    let logs = [
        Log::new(INC_A, &[1, 2, 3]),
        Log::new(INC_B, &[3, 1]),
        Log::new(INC_C, &[]),
    ];
    assert_eq!(run_to_end(&mut c, now, &logs), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Simulation.

/// Runs `f` for many seeds; a failure names its seed, and `HOMEPORT_SIM_SEED=n` reruns just it.
fn for_seeds(count: u64, mut f: impl FnMut(u64)) {
    let seeds: Vec<u64> = match std::env::var("HOMEPORT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("HOMEPORT_SIM_SEED must be an integer")],
        Err(_) => (0..count).collect(),
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!("simulation failed for seed {seed}; rerun it with HOMEPORT_SIM_SEED={seed}");
            resume_unwind(panic);
        }
    }
}

#[derive(Debug)]
enum NetEv {
    /// The request reaches the node, which answers from its log as it is then.
    Serve {
        generation: u64,
        req: ReadRequestOut,
    },
    Answer {
        generation: u64,
        node: usize,
        result: Result<ReadBatch, ReadFailure>,
    },
}

#[derive(Debug, Default)]
struct SimStats {
    restarts: u32,
    incarnation_changes: u32,
    redeliveries: u64,
}

/// 3 node logs filled by a simulated producer (each entry on 1, 2 or 3 nodes, in a different order
/// per node, one node possibly wiped midway), read by a consumer that fails, checkpoints and
/// restarts from its cursor. Every entry that was ever on 2 nodes must be processed.
fn simulate(seed: u64) -> SimStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let entries_total: u64 = rng.random_range(20..150);
    let fail_p = rng.random_range(0.0..0.3);
    let crash_p = rng.random_range(0.0..0.01);
    let wipe = rng.random_bool(0.6).then(|| rng.random_range(0..3usize));
    let answers_beyond_head = rng.random_bool(0.5);
    let mut config = cfg();
    config.read_max_entries = rng.random_range(1..20);
    config.max_buffered_entries = rng.random_range(1..40);
    config.dedup_window_entries = if rng.random_bool(0.7) {
        10_000
    } else {
        rng.random_range(0..10)
    };

    // Where each entry goes; per node, a locally shuffled order (concurrent appends reorder).
    let mut per_node: [Vec<u64>; 3] = Default::default();
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    for id in 0..entries_total {
        let n = match rng.random_range(0..100) {
            0..15 => 1,
            15..60 => 2,
            _ => 3,
        };
        let mut nodes = [0usize, 1, 2];
        nodes.shuffle(&mut rng);
        for &node in &nodes[..n] {
            per_node[node].push(id);
        }
    }
    for list in &mut per_node {
        for i in 1..list.len() {
            if rng.random_bool(0.3) {
                list.swap(i - 1, i);
            }
        }
    }
    let wipe_after = wipe.map(|node| rng.random_range(0..=per_node[node].len()));
    let mut logs: [Log; 3] = std::array::from_fn(|i| {
        let mut l = Log::new(INCS[i], &[]);
        l.answers_beyond_head = answers_beyond_head;
        l
    });
    let mut pushed = [0usize; 3];
    let garbage: HashSet<Bytes> = HashSet::from([Bytes::from_static(b"not an entry")]);

    let t0 = Instant::now();
    let mut now_ms: u64 = 0;
    let mut generation = 0u64;
    let mut consumer = Consumer::new(config.clone(), None, id_of);
    let mut saved: Option<Cursor> = None;
    let mut durable_processed: BTreeSet<u64> = BTreeSet::new();
    let mut since_checkpoint: Vec<u64> = Vec::new();
    let mut delivered_count: BTreeMap<u64, u64> = BTreeMap::new();
    let mut net: BTreeMap<(u64, u64), NetEv> = BTreeMap::new();
    let mut seq = 0u64;
    let mut stats = SimStats::default();
    let mut wiped = false;

    for tick in 0..200_000u64 {
        now_ms = tick;
        let now = t0 + Duration::from_millis(now_ms);
        let producing = pushed.iter().zip(&per_node).any(|(p, l)| *p < l.len());
        // The producer appends the next entry of a random node.
        if producing && rng.random_bool(0.5) {
            let node = rng.random_range(0..3);
            if pushed[node] < per_node[node].len() {
                if wipe == Some(node) && wipe_after == Some(pushed[node]) && !wiped {
                    logs[node] = Log {
                        incarnation: [0xee; 16],
                        start_offset: 0,
                        entries: Vec::new(),
                        answers_beyond_head,
                    };
                    wiped = true;
                }
                let id = per_node[node][pushed[node]];
                logs[node].entries.push(entry(id));
                *copies.entry(id).or_default() += 1;
                pushed[node] += 1;
                if rng.random_bool(0.02) {
                    logs[node].entries.push(Bytes::from_static(b"not an entry"));
                }
            }
        }
        let faults = producing;
        // The network.
        while let Some(e) = net.first_entry() {
            if e.key().0 > now_ms {
                break;
            }
            match e.remove() {
                NetEv::Serve { generation: g, req } => {
                    let result = if faults && rng.random_bool(fail_p) {
                        Err(ReadFailure::Unreachable("simulated partition".into()))
                    } else {
                        logs[req.node].read(req.from_offset, req.max_entries)
                    };
                    seq += 1;
                    let at = now_ms + rng.random_range(0..5);
                    net.insert(
                        (at, seq),
                        NetEv::Answer {
                            generation: g,
                            node: req.node,
                            result,
                        },
                    );
                }
                NetEv::Answer {
                    generation: g,
                    node,
                    result,
                } => {
                    if g == generation {
                        consumer.on_read_result(now, node, result);
                    }
                }
            }
        }
        consumer.on_timeout(now);
        while let Some(req) = consumer.poll_read(now) {
            seq += 1;
            let at = now_ms + rng.random_range(0..5);
            net.insert((at, seq), NetEv::Serve { generation, req });
        }
        // The application, sometimes slower than the reads (entries stay buffered in the core).
        for _ in 0..rng.random_range(0..8) {
            let Some(d) = consumer.poll_delivery() else {
                break;
            };
            assert!(
                !garbage.contains(&d.entry),
                "an undecodable entry was delivered"
            );
            let cur = consumer.cursor();
            assert!(
                cur.nodes[d.node].next_offset > d.offset,
                "cursor {cur:?} does not cover delivery {d:?}"
            );
            let id = id_num(&d.entry);
            let n = delivered_count.entry(id).or_default();
            *n += 1;
            if *n > 1 {
                stats.redeliveries += 1;
            }
            since_checkpoint.push(id);
        }
        while let Some(ev) = consumer.poll_event() {
            if let ConsumerEvent::IncarnationChanged { .. } = ev {
                stats.incarnation_changes += 1;
            }
        }
        if rng.random_bool(0.05) {
            durable_processed.extend(since_checkpoint.drain(..));
            saved = Some(consumer.cursor());
        }
        if faults && rng.random_bool(crash_p) {
            // Crash: what was processed since the checkpoint is lost with the process.
            since_checkpoint.clear();
            generation += 1;
            stats.restarts += 1;
            consumer = Consumer::new(config.clone(), saved.clone(), id_of);
        }
        if !producing && caught_up(&consumer, &logs, wipe, answers_beyond_head) {
            break;
        }
    }
    assert!(
        caught_up(&consumer, &logs, wipe, answers_beyond_head),
        "consumer did not catch up by {now_ms} ms: {:?}",
        consumer.node_states()
    );
    durable_processed.extend(since_checkpoint.drain(..));
    let committed: BTreeSet<u64> = copies
        .iter()
        .filter(|(_, n)| **n >= 2)
        .map(|(id, _)| *id)
        .collect();
    let missing: Vec<u64> = committed.difference(&durable_processed).copied().collect();
    assert!(
        missing.is_empty(),
        "committed entries never processed: {missing:?} (wipe {wipe:?} after {wipe_after:?}, \
         logs {logs:?})"
    );
    if config.dedup_window_entries >= 10_000 && stats.restarts == 0 {
        assert_eq!(
            stats.redeliveries, 0,
            "with a window larger than the stream and no restart, each entry is delivered once"
        );
    }
    stats
}

/// Every node the consumer can still read is read to its head and fully handed out.
fn caught_up(
    c: &Consumer,
    logs: &[Log; 3],
    wipe: Option<usize>,
    answers_beyond_head: bool,
) -> bool {
    c.node_states().iter().enumerate().all(|(i, s)| {
        let done = s.incarnation == Some(logs[i].incarnation)
            && s.read_offset == logs[i].head()
            && s.buffered_entries == 0;
        // A wiped node whose old offset lies beyond its new head is refused forever by a node that
        // answers such reads with an error: the other two nodes carry everything committed.
        done || (wipe == Some(i) && !answers_beyond_head && !s.reachable)
    })
}

#[test]
fn simulation_every_entry_on_two_nodes_is_processed_despite_failures_restarts_and_a_wipe() {
    let mut totals = SimStats::default();
    for_seeds(300, |seed| {
        let s = simulate(seed);
        totals.restarts += s.restarts;
        totals.incarnation_changes += s.incarnation_changes;
        totals.redeliveries += s.redeliveries;
    });
    // The harness must actually exercise restarts and wiped nodes.
    eprintln!("{totals:?}");
    assert!(
        totals.restarts > 0 && totals.incarnation_changes > 0,
        "{totals:?}"
    );
}
