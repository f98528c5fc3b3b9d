//! Behaviour of the log through its public API: what a queue node relies on.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use homeport_seglog::{
    FRAME_HEADER_SIZE_BYTES, FsyncMode, Log, LogConfig, LogError, RecoveryReason, RecoveryReport,
    decode_frame, encode_frame, open,
};

const WAIT_DEADLINE: Duration = Duration::from_secs(30);

fn config(dir: &Path, segment_size_bytes: u64) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_size_bytes,
        max_entry_bytes: 4096,
        fsync: FsyncMode::Always,
        max_pending_appends: 1024,
        max_group_entries: 256,
    }
}

/// Distinct, varied-length payloads, so a misplaced or mixed-up entry is noticed.
fn entry(i: u64) -> Bytes {
    let len = (i * 37 % 120) as usize;
    let mut v = format!("e{i}:").into_bytes();
    v.extend((0..len).map(|j| (i as usize + j) as u8));
    Bytes::from(v)
}

fn reopen(dir: &Path, segment_size_bytes: u64) -> (Log, RecoveryReport) {
    open(config(dir, segment_size_bytes)).expect("reopen the log")
}

/// Reads everything from `from`, in small pieces to exercise the limits.
fn read_all(log: &Log, from: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = log.read(next, 300, 7).expect("read");
        if r.entries.is_empty() {
            assert_eq!(
                r.next_offset, r.durable_head,
                "an empty read happens only at the head"
            );
            return out;
        }
        for (o, _) in &r.entries {
            assert_eq!(*o, next, "entries are returned in order without gaps");
            next += 1;
        }
        assert_eq!(r.next_offset, next);
        out.extend(r.entries);
    }
}

fn expected(range: std::ops::Range<u64>) -> Vec<(u64, Bytes)> {
    range.map(|i| (i, entry(i))).collect()
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

/// (segment file, position, frame size) of every frame, by offset, decoded independently of
/// the log.
fn frame_map(dir: &Path) -> Vec<(PathBuf, u64, u64, u64)> {
    let mut out = Vec::new();
    for path in segment_files(dir) {
        let bytes = fs::read(&path).unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let f = decode_frame(&bytes[pos..]).expect("test reads only valid segments");
            out.push((
                path.clone(),
                f.offset,
                pos as u64,
                f.frame_size_bytes as u64,
            ));
            pos += f.frame_size_bytes;
        }
    }
    out
}

fn flip_byte(path: &Path, position: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, position).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, position).unwrap();
}

fn append_to_file(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

async fn append_one_by_one(log: &Log, range: std::ops::Range<u64>) {
    for i in range {
        let out = log.append(vec![entry(i)]).await.unwrap();
        assert_eq!((out.first_offset, out.next_offset), (i, i + 1));
    }
}

#[tokio::test]
async fn round_trip_across_segment_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, report) = reopen(tmp.path(), 512);
    assert_eq!(report.head_offset, 0);
    let mut next = 0u64;
    for batch in 1..12u64 {
        let entries: Vec<Bytes> = (next..next + batch).map(entry).collect();
        let out = log.append(entries).await.unwrap();
        assert_eq!((out.first_offset, out.next_offset), (next, next + batch));
        next += batch;
    }
    // A frame larger than a segment goes alone into a fresh one.
    let big = Bytes::from(vec![7u8; 2000]);
    let out = log
        .append(vec![big.clone(), entry(next + 1)])
        .await
        .unwrap();
    assert_eq!(out.first_offset, next);
    let big_offset = next;
    next += 2;

    let mut all = read_all(&log, 0);
    assert_eq!(all.remove(big_offset as usize), (big_offset, big.clone()));
    let mut want = expected(0..big_offset);
    want.push((big_offset + 1, entry(big_offset + 1)));
    assert_eq!(all, want);

    let files = segment_files(tmp.path());
    assert!(files.len() > 3, "small segments must roll: {files:?}");
    let frames = frame_map(tmp.path());
    for path in &files {
        let len = fs::metadata(path).unwrap().len();
        let count = frames.iter().filter(|f| &f.0 == path).count();
        assert!(
            len <= 512 || count == 1,
            "{path:?} is {len} bytes with {count} frames"
        );
    }
    let st = log.status();
    assert_eq!((st.start_offset, st.durable_head), (0, next));
    assert_eq!(st.segment_count, files.len());
    assert_eq!(
        st.disk_bytes,
        files
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum::<u64>()
    );

    // Limits: max_entries, max_bytes, and always at least one entry.
    let r = log.read(0, usize::MAX, 3).unwrap();
    assert_eq!(r.entries, expected(0..3));
    assert_eq!(r.next_offset, 3);
    let r = log.read(5, 1, 100).unwrap();
    assert_eq!(r.entries, expected(5..6));
    let r = log.read(big_offset, 10, 100).unwrap();
    assert_eq!(r.entries, vec![(big_offset, big)]);
    let two = entry(1).len() + entry(2).len();
    let r = log.read(1, two, 100).unwrap();
    assert_eq!(r.entries, expected(1..3));
    // One read spans several segments.
    let r = log.read(0, usize::MAX, 1000).unwrap();
    assert_eq!(r.entries.len() as u64, next);
    assert_eq!(log.read(0, usize::MAX, 0).unwrap().entries, vec![]);
}

#[tokio::test]
async fn reopen_preserves_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, first) = reopen(tmp.path(), 700);
    assert!(first.incarnation_changed);
    assert_eq!(first.reason, RecoveryReason::Fresh);
    for chunk in (0..60u64).collect::<Vec<_>>().chunks(9) {
        log.append(chunk.iter().map(|i| entry(*i)).collect())
            .await
            .unwrap();
    }
    let inc = log.incarnation();
    log.close().await;

    let (log, report) = reopen(tmp.path(), 700);
    assert_eq!(report.reason, RecoveryReason::Clean);
    assert!(!report.incarnation_changed);
    assert_eq!(report.incarnation, inc);
    assert_eq!(log.incarnation(), inc);
    assert_eq!(
        (report.start_offset, report.head_offset, report.entries),
        (0, 60, 60)
    );
    assert_eq!(report.segments, segment_files(tmp.path()).len());
    assert_eq!((report.truncated_bytes, report.removed_segments), (0, 0));
    assert_eq!(read_all(&log, 0), expected(0..60));
    append_one_by_one(&log, 60..65).await;
    log.close().await;
    let (log, _) = reopen(tmp.path(), 700);
    assert_eq!(read_all(&log, 0), expected(0..65));
}

#[tokio::test]
async fn empty_dir_gets_a_fresh_log_and_leftover_temp_files_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not-yet-created");
    let (log, report) = reopen(&dir, 1024);
    assert_eq!(report.reason, RecoveryReason::Fresh);
    assert!(report.incarnation_changed);
    assert_eq!((report.head_offset, report.entries), (0, 0));
    let text = fs::read_to_string(dir.join("incarnation")).unwrap();
    let hex: String = log
        .incarnation()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(text, format!("{hex}\n"));
    log.append(vec![entry(0)]).await.unwrap();
    log.close().await;

    fs::write(dir.join("incarnation.tmp"), b"half-written").unwrap();
    let (log, report) = reopen(&dir, 1024);
    assert!(!dir.join("incarnation.tmp").exists());
    assert_eq!(report.reason, RecoveryReason::Clean);
    assert_eq!(read_all(&log, 0), expected(0..1));

    // Two fresh logs never share an incarnation.
    let other = tmp.path().join("other");
    let (other_log, _) = reopen(&other, 1024);
    assert_ne!(other_log.incarnation(), log.incarnation());
}

#[tokio::test]
async fn segments_without_incarnation_keep_data_under_a_new_incarnation() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 1024);
    append_one_by_one(&log, 0..5).await;
    let old = log.incarnation();
    log.close().await;
    fs::remove_file(tmp.path().join("incarnation")).unwrap();
    let (log, report) = reopen(tmp.path(), 1024);
    assert!(report.incarnation_changed);
    assert!(matches!(
        report.reason,
        RecoveryReason::IncarnationUnreadable { .. }
    ));
    assert_ne!(log.incarnation(), old);
    assert_eq!(read_all(&log, 0), expected(0..5));
}

#[tokio::test]
async fn reads_stop_at_the_durable_head() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 4096);
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for chunk in (0..400u64).collect::<Vec<_>>().chunks(4) {
                let out = log
                    .append(chunk.iter().map(|i| entry(*i)).collect())
                    .await
                    .unwrap();
                // Acked means readable at once.
                let r = log.read(out.first_offset, usize::MAX, 4).unwrap();
                assert_eq!(r.entries.len(), 4);
                assert!(r.durable_head >= out.next_offset);
            }
        })
    };
    let mut seen = 0u64;
    while seen < 400 {
        let r = log.read(seen, usize::MAX, usize::MAX).unwrap();
        assert!(r.next_offset <= r.durable_head);
        for (o, bytes) in &r.entries {
            assert!(
                *o < r.durable_head,
                "served offset {o} at or past the durable head {}",
                r.durable_head
            );
            assert_eq!(bytes, &entry(*o));
        }
        seen = r.next_offset;
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();

    let head = log.status().durable_head;
    let r = log.read(head, usize::MAX, 100).unwrap();
    assert!(r.entries.is_empty());
    assert_eq!(r.next_offset, head);
    assert!(matches!(
        log.read(head + 1, usize::MAX, 100),
        Err(LogError::OffsetBeyondHead { requested, durable_head }) if requested == head + 1 && durable_head == head
    ));
}

#[tokio::test]
async fn subscribers_see_the_durable_head_advance() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 4096);
    let mut head = log.subscribe();
    assert_eq!(*head.borrow(), 0);
    let waiter = tokio::spawn(async move { *head.wait_for(|h| *h >= 3).await.unwrap() });
    log.append((0..3).map(entry).collect()).await.unwrap();
    let seen = tokio::time::timeout(WAIT_DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    const APPENDERS: u64 = 64;
    const APPENDS_EACH: u64 = 16;
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 1 << 20);
    let mut tasks = Vec::new();
    for _ in 0..APPENDERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for _ in 0..APPENDS_EACH {
                offsets.push(
                    log.append(vec![Bytes::from(vec![1u8; 256])])
                        .await
                        .unwrap()
                        .first_offset,
                );
            }
            offsets
        }));
    }
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.extend(t.await.unwrap());
    }
    offsets.sort_unstable();
    let total = APPENDERS * APPENDS_EACH;
    assert_eq!(
        offsets,
        (0..total).collect::<Vec<_>>(),
        "every append got its own offset"
    );
    let st = log.status();
    assert!(st.fsync_count > 0);
    // Without group commit there would be one fsync per append.
    assert!(
        st.fsync_count * 4 <= total,
        "{} fsyncs and {} group commits for {total} appends",
        st.fsync_count,
        st.group_commit_count
    );
    assert!(st.group_commit_count < total);
}

#[tokio::test]
async fn torn_tail_is_cut_and_the_incarnation_kept() {
    // Three kinds of torn tail: a partly written frame, garbage, and a frame cut short.
    for kind in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = reopen(tmp.path(), 300);
        append_one_by_one(&log, 0..20).await;
        let inc = log.incarnation();
        log.close().await;
        let last = segment_files(tmp.path()).pop().unwrap();
        let len_before = fs::metadata(&last).unwrap().len();
        let (head, cut_bytes) = match kind {
            0 => {
                let mut frame = Vec::new();
                encode_frame(20, &entry(20), &mut frame);
                append_to_file(&last, &frame[..frame.len() - 3]);
                (20, frame.len() as u64 - 3)
            }
            1 => {
                append_to_file(&last, &[0xA5; 77]);
                (20, 77)
            }
            _ => {
                // Only possible for the frame of a group commit whose fsync never returned:
                // simulate it by cutting the last frame short.
                let (_, offset, _, size) = frame_map_prefix(&last).last().cloned().unwrap();
                assert_eq!(offset, 19);
                let file = OpenOptions::new().write(true).open(&last).unwrap();
                file.set_len(len_before - 5).unwrap();
                (19, size - 5)
            }
        };
        let (log, report) = reopen(tmp.path(), 300);
        assert!(
            matches!(report.reason, RecoveryReason::TornTail { .. }),
            "kind {kind}: {report:?}"
        );
        assert!(!report.incarnation_changed);
        assert_eq!(log.incarnation(), inc);
        assert_eq!(report.truncated_bytes, cut_bytes, "kind {kind}");
        assert_eq!(report.head_offset, head);
        assert_eq!(read_all(&log, 0), expected(0..head));
        append_one_by_one(&log, head..head + 5).await;
        log.close().await;
        let (log, report) = reopen(tmp.path(), 300);
        assert_eq!(report.reason, RecoveryReason::Clean);
        assert_eq!(read_all(&log, 0), expected(0..head + 5));
    }
}

/// Like `frame_map` for one file whose tail may be torn: only the frames that decode.
fn frame_map_prefix(path: &Path) -> Vec<(PathBuf, u64, u64, u64)> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(f) = decode_frame(&bytes[pos..]) {
        out.push((
            path.to_path_buf(),
            f.offset,
            pos as u64,
            f.frame_size_bytes as u64,
        ));
        pos += f.frame_size_bytes;
    }
    out
}

async fn damaged_frame_cuts_with_new_incarnation(
    pick: impl Fn(&[PathBuf], &[(PathBuf, u64, u64, u64)]) -> u64,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 300);
    append_one_by_one(&log, 0..40).await;
    let inc = log.incarnation();
    log.close().await;
    let files = segment_files(tmp.path());
    let frames = frame_map(tmp.path());
    let victim = pick(&files, &frames);
    let (path, _, pos, size) = frames[victim as usize].clone();
    flip_byte(
        &path,
        pos + FRAME_HEADER_SIZE_BYTES as u64 + (size - FRAME_HEADER_SIZE_BYTES as u64) / 2,
    );
    let later_files = files.iter().filter(|f| **f > path).count() as u32;

    let (log, report) = reopen(tmp.path(), 300);
    assert!(
        matches!(&report.reason, RecoveryReason::Damaged { offset, .. } if *offset == victim),
        "{report:?}"
    );
    assert!(report.incarnation_changed);
    assert_ne!(log.incarnation(), inc);
    assert_eq!(report.head_offset, victim);
    assert_eq!(report.removed_segments, later_files);
    // Everything before the damage is intact; the damaged entry is never served.
    assert_eq!(read_all(&log, 0), expected(0..victim));
    assert_eq!(
        segment_files(tmp.path()).len(),
        files.len() - later_files as usize
    );
    // Offsets continue from the cut point under the new incarnation.
    append_one_by_one(&log, victim..victim + 3).await;
    let new_inc = log.incarnation();
    log.close().await;
    let (log, report) = reopen(tmp.path(), 300);
    assert_eq!(report.reason, RecoveryReason::Clean);
    assert_eq!(log.incarnation(), new_inc);
    assert_eq!(read_all(&log, 0), expected(0..victim + 3));
}

#[tokio::test]
async fn flipped_byte_in_an_older_segment_cuts_the_log() {
    damaged_frame_cuts_with_new_incarnation(|files, frames| {
        assert!(files.len() >= 4);
        // The last frame of the second segment: even the end of a sealed segment is damage.
        frames.iter().rposition(|f| f.0 == files[1]).unwrap() as u64
    })
    .await;
}

#[tokio::test]
async fn flipped_byte_in_the_last_segment_followed_by_valid_frames_cuts_the_log() {
    damaged_frame_cuts_with_new_incarnation(|files, frames| {
        let last = files.last().unwrap();
        let first = frames.iter().position(|f| &f.0 == last).unwrap();
        assert!(
            frames.len() > first + 1,
            "the last segment needs a frame after the victim"
        );
        first as u64
    })
    .await;
}

#[tokio::test]
async fn corruption_seen_while_open_is_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 1 << 20);
    append_one_by_one(&log, 0..10).await;
    let frames = frame_map(tmp.path());
    let (path, _, pos, _) = frames[6].clone();
    flip_byte(&path, pos + FRAME_HEADER_SIZE_BYTES as u64 + 1);

    let err = log.read(0, usize::MAX, 100).unwrap_err();
    match &err {
        LogError::Corrupt {
            segment,
            offset,
            position,
            ..
        } => {
            assert_eq!((segment, *offset, *position), (&path, 6, pos));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(log.status().corruption_detected);
    // Sticky for the corrupt offset and everything after it...
    assert!(matches!(
        log.read(6, usize::MAX, 1),
        Err(LogError::Corrupt { offset: 6, .. })
    ));
    assert!(matches!(
        log.read(8, usize::MAX, 1),
        Err(LogError::Corrupt { offset: 6, .. })
    ));
    // ...while what comes before stays readable, up to the corruption and no further.
    let r = log.read(0, usize::MAX, 100).unwrap();
    assert_eq!(r.entries, expected(0..6));
    assert_eq!(r.next_offset, 6);
    // Nothing more is acked: it could not be read back.
    assert!(matches!(
        log.append(vec![entry(10)]).await,
        Err(LogError::Corrupt { .. })
    ));
    log.close().await;

    let (log, report) = reopen(tmp.path(), 1 << 20);
    assert!(report.incarnation_changed);
    assert_eq!(report.head_offset, 6);
    assert_eq!(read_all(&log, 0), expected(0..6));
}

#[tokio::test]
async fn trim_below_deletes_whole_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 400);
    append_one_by_one(&log, 0..60).await;
    let frames = frame_map(tmp.path());
    let files_before = segment_files(tmp.path());
    // The first offset of the segment holding offset 30.
    let holder = &frames[30].0;
    let holder_base = frames.iter().find(|f| &f.0 == holder).unwrap().1;

    let t = log.trim_below(30).await.unwrap();
    assert_eq!(t.start_offset, holder_base);
    let deleted = files_before.iter().filter(|f| *f < holder).count();
    assert!(deleted > 0);
    assert_eq!(t.segments_deleted as usize, deleted);
    assert_eq!(
        segment_files(tmp.path()).len(),
        files_before.len() - deleted
    );
    assert_eq!(log.status().start_offset, holder_base);
    assert!(matches!(
        log.read(0, usize::MAX, 10),
        Err(LogError::Trimmed { requested: 0, start_offset }) if start_offset == holder_base
    ));
    assert_eq!(read_all(&log, holder_base), expected(holder_base..60));

    // Never the active segment, even when asked to trim everything.
    let t = log.trim_below(u64::MAX).await.unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 1);
    assert_eq!(log.status().segment_count, 1);
    let start = t.start_offset;
    assert!(start < 60);
    assert_eq!(read_all(&log, start), expected(start..60));
    append_one_by_one(&log, 60..62).await;
    log.close().await;

    let (log, report) = reopen(tmp.path(), 400);
    assert_eq!(report.reason, RecoveryReason::Clean);
    assert_eq!((report.start_offset, report.head_offset), (start, 62));
    assert_eq!(read_all(&log, start), expected(start..62));
}

#[tokio::test]
async fn trim_older_than_deletes_only_an_old_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 300);
    append_one_by_one(&log, 0..40).await;
    let files = segment_files(tmp.path());
    assert!(files.len() >= 5);
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for i in [0, 1, 3] {
        let f = OpenOptions::new().write(true).open(&files[i]).unwrap();
        f.set_modified(hour_ago).unwrap();
    }
    let t = log.trim_older_than(Duration::from_secs(600)).await.unwrap();
    assert_eq!(
        t.segments_deleted, 2,
        "segment 3 is old but segment 2 before it is not"
    );
    assert_eq!(segment_files(tmp.path()), files[2..].to_vec());
    let t2 = log.trim_older_than(Duration::from_secs(600)).await.unwrap();
    assert_eq!((t2.segments_deleted, t2.start_offset), (0, t.start_offset));
    assert_eq!(read_all(&log, t.start_offset), expected(t.start_offset..40));
}

#[tokio::test]
async fn oversize_entries_are_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(LogConfig {
        max_entry_bytes: 100,
        ..config(tmp.path(), 4096)
    })
    .unwrap();
    let err = log
        .append(vec![
            Bytes::from(vec![0u8; 10]),
            Bytes::from(vec![0u8; 101]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::EntryTooLarge {
                size_bytes: 101,
                max_bytes: 100
            }
        ),
        "{err}"
    );
    assert_eq!(
        log.status().durable_head,
        0,
        "no part of a refused append is written"
    );
    let out = log.append(vec![Bytes::from(vec![0u8; 100])]).await.unwrap();
    assert_eq!(out.first_offset, 0);
    let out = log.append(vec![]).await.unwrap();
    assert_eq!((out.first_offset, out.next_offset), (1, 1));
}

#[tokio::test]
async fn the_writer_stops_only_with_the_last_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), 4096);
    let other = log.clone();
    log.close().await;
    append_one_by_one(&other, 0..3).await;
    drop(other);
    // Every acked entry is durable no matter when the writer thread notices it is alone.
    let (log, report) = reopen(tmp.path(), 4096);
    assert_eq!(report.head_offset, 3);
    assert_eq!(read_all(&log, 0), expected(0..3));
}

#[tokio::test]
async fn a_full_queue_refuses_appends_at_once_and_writes_none_of_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = open(LogConfig {
        max_pending_appends: 1,
        ..config(tmp.path(), 1 << 20)
    })
    .unwrap();
    // All of these try to enqueue within microseconds while the writer is busy with an
    // fsync lasting far longer, so the one-slot queue must refuse some.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(vec![entry(i)]).await.map(|o| (o, i))
        }));
    }
    let mut acked = Vec::new();
    let mut busy = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok((out, i)) => acked.push((out.first_offset, entry(i))),
            Err(LogError::Busy {
                max_pending_appends: 1,
            }) => busy += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(busy > 0, "a one-slot queue accepted 200 appends at once");
    acked.sort();
    assert_eq!(
        read_all(&log, 0),
        acked,
        "exactly the accepted appends were written"
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = homeport_seglog::LogConfig {
        dir: dir.path().to_owned(),
        segment_size_bytes: 1 << 20,
        max_entry_bytes: 1 << 16,
        fsync: homeport_seglog::FsyncMode::Never,
        max_pending_appends: 16,
        max_group_entries: 16,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (log, _) = homeport_seglog::open(cfg.clone()).unwrap();
    match homeport_seglog::open(cfg.clone()) {
        Err(homeport_seglog::LogError::Locked { dir: d }) => assert_eq!(d, dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of a locked directory succeeded"),
    }
    rt.block_on(log.close());
    assert!(
        homeport_seglog::open(cfg).is_ok(),
        "the lock is released when the log closes"
    );
}
