//! Property: across random appends, restarts, torn tails and flipped bytes, every acked entry
//! that is not at or past a detected corruption reads back identical at its offset, and
//! recovery keeps the incarnation exactly when no acked entry was dropped behind the
//! consumers' back.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use homeport_seglog::{
    FsyncMode, Log, LogConfig, RecoveryReason, decode_frame, encode_frame, open,
};
use proptest::prelude::*;

const SEGMENT_SIZE_BYTES: u64 = 512;

#[derive(Debug, Clone)]
enum Op {
    /// Entries of these sizes in one append; some are larger than a segment.
    Append(Vec<usize>),
    Reopen,
    /// Crash during a group commit: part of a frame that was never acked.
    TornFrame {
        keep_fraction: u8,
    },
    /// Crash leaving junk after the last frame.
    Garbage(Vec<u8>),
    /// A bit flip in acked data on disk, found at the next start-up.
    Flip {
        entry_pick: usize,
        byte_pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(prop_oneof![9 => 0usize..200, 1 => 500usize..700], 1..6).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(|keep_fraction| Op::TornFrame { keep_fraction }),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Op::Garbage),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(entry_pick, byte_pick)| Op::Flip { entry_pick, byte_pick }),
    ]
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_size_bytes: SEGMENT_SIZE_BYTES,
        max_entry_bytes: 1000,
        // The property is about the bytes the log writes and reads, not power loss; skipping
        // the fsync keeps hundreds of cases fast.
        fsync: FsyncMode::Never,
        max_pending_appends: 16,
        max_group_entries: 16,
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// (file, offset, position, size) of every frame on disk.
fn frame_map(dir: &Path) -> Vec<(PathBuf, u64, u64, usize)> {
    let mut out = Vec::new();
    for path in segment_files(dir) {
        let bytes = fs::read(&path).unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let f = decode_frame(&bytes[pos..])
                .expect("between ops the segments hold only valid frames");
            out.push((path.clone(), f.offset, pos as u64, f.frame_size_bytes));
            pos += f.frame_size_bytes;
        }
    }
    out
}

fn read_all(log: &Log) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut next = log.status().start_offset;
    loop {
        let r = log.read(next, 400, 5).unwrap();
        if r.entries.is_empty() {
            return out;
        }
        next = r.next_offset;
        out.extend(r.entries);
    }
}

fn payload(seq: u64, size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| (seq as usize * 31 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut log, _) = open(config(dir)).unwrap();
    let mut incarnation = log.incarnation();
    // model[i] is the entry acked at offset i.
    let mut model: Vec<Bytes> = Vec::new();
    let mut seq = 0u64;

    let restart = |log: Log| {
        rt.block_on(log.close());
        open(config(dir)).unwrap()
    };

    for op in ops {
        match op {
            Op::Append(sizes) => {
                let entries: Vec<Bytes> = sizes
                    .iter()
                    .map(|s| {
                        seq += 1;
                        payload(seq, *s)
                    })
                    .collect();
                let out = rt.block_on(log.append(entries.clone())).unwrap();
                prop_assert_eq!(out.first_offset, model.len() as u64);
                model.extend(entries);
                prop_assert_eq!(out.next_offset, model.len() as u64);
            }
            Op::Reopen => {
                let (l, report) = restart(log);
                log = l;
                prop_assert_eq!(report.reason, RecoveryReason::Clean);
                prop_assert_eq!(report.incarnation, incarnation);
            }
            Op::TornFrame { keep_fraction } => {
                let last = segment_files(dir).pop().unwrap();
                let mut frame = Vec::new();
                encode_frame(model.len() as u64, &payload(seq + 1, 40), &mut frame);
                let keep = (frame.len() - 1) * usize::from(keep_fraction) / 255;
                OpenOptions::new()
                    .append(true)
                    .open(&last)
                    .unwrap()
                    .write_all(&frame[..keep])
                    .unwrap();
                let (l, report) = restart(log);
                log = l;
                prop_assert!(!report.incarnation_changed);
                prop_assert_eq!(report.truncated_bytes, keep as u64);
                prop_assert_eq!(report.head_offset, model.len() as u64);
            }
            Op::Garbage(junk) => {
                let last = segment_files(dir).pop().unwrap();
                OpenOptions::new()
                    .append(true)
                    .open(&last)
                    .unwrap()
                    .write_all(&junk)
                    .unwrap();
                let (l, report) = restart(log);
                log = l;
                prop_assert!(!report.incarnation_changed);
                prop_assert_eq!(report.truncated_bytes, junk.len() as u64);
                prop_assert_eq!(report.head_offset, model.len() as u64);
            }
            Op::Flip {
                entry_pick,
                byte_pick,
            } => {
                if model.is_empty() {
                    continue;
                }
                rt.block_on(log.close());
                let frames = frame_map(dir);
                let k = entry_pick % model.len();
                let (path, offset, pos, size) = frames[k].clone();
                prop_assert_eq!(offset, k as u64);
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let at = pos + (byte_pick % size) as u64;
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at).unwrap();
                b[0] ^= 1 << (byte_pick % 8);
                f.write_all_at(&b, at).unwrap();
                // Only the very last frame, in the last file, looks like a torn tail.
                let looks_torn = k + 1 == model.len() && Some(&path) == segment_files(dir).last();
                let (l, report) = open(config(dir)).unwrap();
                log = l;
                prop_assert_eq!(report.head_offset, k as u64);
                prop_assert_eq!(report.incarnation_changed, !looks_torn, "{:?}", report);
                model.truncate(k);
                incarnation = report.incarnation;
            }
        }
        let st = log.status();
        prop_assert_eq!(st.incarnation, incarnation);
        prop_assert_eq!(st.durable_head, model.len() as u64);
        prop_assert_eq!(st.start_offset, 0);
        let got = read_all(&log);
        prop_assert_eq!(got.len(), model.len());
        for (i, (offset, bytes)) in got.iter().enumerate() {
            prop_assert_eq!(*offset, i as u64);
            prop_assert_eq!(bytes, &model[i], "entry {} differs", i);
        }
    }
    rt.block_on(log.close());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn acked_entries_survive_restarts_and_torn_tails(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
