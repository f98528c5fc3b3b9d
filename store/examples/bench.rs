//! Store benchmark: group-commit throughput with concurrent writers, and space used on disk.
//!
//! `cargo run --release -p homeport-store --example bench -- [--writers 64] [--seconds 10]
//!  [--records 100000] [--value-bytes 100] [--dir PATH]`
//!
//! The directory must be on the disk you care about (tmpfs makes fsync free and the numbers
//! meaningless). Prints one line per measurement.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use homeport_store::{ApplyBatch, Store, StoreConfig, WriteOp, WriteOutcome, WriteRequest};
use homeport_wire::pb;

struct Args {
    writers: usize,
    seconds: u64,
    records: u64,
    value_bytes: usize,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        writers: 64,
        seconds: 10,
        records: 100_000,
        value_bytes: 100,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--writers" => a.writers = num()? as usize,
            "--seconds" => a.seconds = num()?,
            "--records" => a.records = num()?,
            "--value-bytes" => a.value_bytes = num()? as usize,
            "--dir" => a.dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn open(dir: &std::path::Path, name: &str) -> Store {
    homeport_store::open(StoreConfig {
        path: dir.join(name),
        region: "sh".into(),
        max_uid_bytes: 128,
        max_key_bytes: 256,
        max_value_bytes: 1 << 20,
        max_batch_requests: 1024,
        max_queued_requests: 16_384,
    })
    .expect("open the store")
}

fn entry_id(sequence: u64) -> pb::EntryId {
    pb::EntryId {
        origin_region: "sh".into(),
        producer_incarnation: Bytes::from_static(&[9; 16]),
        sequence,
    }
}

/// `writers` tasks writing distinct records as fast as the store answers, for `seconds`.
async fn throughput(store: &Store, writers: usize, seconds: u64, value: Bytes) {
    let before = store.stats();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut shipped = Vec::new();
            while Instant::now() < deadline {
                let req = WriteRequest {
                    uid: format!("sh-{w}"),
                    key: format!("k{n}"),
                    op: WriteOp::Put(value.clone()),
                    expected_version: None,
                    idempotency_key: None,
                    entry_id: entry_id(n),
                    now_unix_ms: 0,
                };
                match store.write(req).await.expect("write") {
                    WriteOutcome::Written { outbox_seq, .. } => shipped.push(outbox_seq),
                    other => panic!("unexpected {other:?}"),
                }
                n += 1;
            }
            (n, shipped)
        }));
    }
    let mut writes = 0;
    let mut shipped = Vec::new();
    for t in tasks {
        let (n, s) = t.await.expect("writer task");
        writes += n;
        shipped.extend(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = store.stats();
    let commits = after.commits - before.commits;
    println!(
        "group commit: {writers} writers, {writes} writes in {elapsed:.1} s: {:.0} writes/s, \
         {:.0} commits/s, {:.1} writes per commit (largest {}), value {} B",
        writes as f64 / elapsed,
        commits as f64 / elapsed,
        writes as f64 / commits.max(1) as f64,
        after.largest_batch_requests,
        value.len(),
    );
    // Ship everything, as the region does once a queue group committed it.
    for chunk in shipped.chunks(4096) {
        store.remove_outbox(chunk.to_vec()).await.expect("remove");
    }
}

/// Loads `records` records as a replica does (apply batches), then compares the file size with
/// the raw bytes of uid + key + value.
async fn space(dir: &std::path::Path, records: u64, value: Bytes) {
    let store = open(dir, "space.redb");
    let mut raw_bytes = 0u64;
    let batch_records = 1000;
    let mut i = 0;
    while i < records {
        let mut changes = Vec::new();
        for j in i..(i + batch_records).min(records) {
            let c = pb::Change {
                uid: format!("hk-{}", j % 10_000),
                key: format!("profile/{j}"),
                version: 1,
                value: value.clone(),
                deleted: false,
                commit_unix_ms: 1_700_000_000_000 + j,
                home_region: "hk".into(),
            };
            raw_bytes += (c.uid.len() + c.key.len() + c.value.len()) as u64;
            changes.push(c);
        }
        i += changes.len() as u64;
        store
            .apply(ApplyBatch {
                source_region: "hk".into(),
                group: "g1".into(),
                applied_entries: changes.len() as u64,
                changes,
                cursor: pb::ConsumerCursor::default(),
                heartbeat_unix_ms: None,
            })
            .await
            .expect("apply");
    }
    let file = store.stats().file_size_bytes;
    println!(
        "space: {records} records, value {} B: raw uid+key+value {:.1} MB, file {:.1} MB = {:.2}x \
         ({:.0} B/record on disk, {:.0} B/record raw)",
        value.len(),
        raw_bytes as f64 / 1e6,
        file as f64 / 1e6,
        file as f64 / raw_bytes as f64,
        file as f64 / records as f64,
        raw_bytes as f64 / records as f64,
    );
    drop(store);
    let started = Instant::now();
    let store = open(dir, "space.redb");
    println!(
        "reopen of that file: {:.1} ms ({} records)",
        started.elapsed().as_secs_f64() * 1e3,
        store.stats().records
    );
    drop(store);
    redb_breakdown(&dir.join("space.redb"), raw_bytes);
}

/// Where the bytes go, as redb counts them, and what an offline compaction would give back.
fn redb_breakdown(path: &std::path::Path, raw_bytes: u64) {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
    let mut db = redb::Database::open(path).expect("open for stats");
    {
        let txn = db.begin_read().expect("read");
        let t = txn.open_table(RECORDS).expect("records table");
        let s = t.stats().expect("stats");
        println!(
            "records table: stored {:.1} MB, metadata {:.1} MB, fragmented {:.1} MB, {} leaf pages, \
             height {}",
            s.stored_bytes() as f64 / 1e6,
            s.metadata_bytes() as f64 / 1e6,
            s.fragmented_bytes() as f64 / 1e6,
            s.leaf_pages(),
            s.tree_height()
        );
    }
    db.compact().expect("compact");
    drop(db);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "after an offline compaction: file {:.1} MB = {:.2}x raw",
        size as f64 / 1e6,
        size as f64 / raw_bytes as f64
    );
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("create a temp dir");
    let value = Bytes::from(vec![b'x'; args.value_bytes]);
    {
        let store = open(tmp.path(), "throughput.redb");
        throughput(&store, 1, args.seconds.min(3), value.clone()).await;
        throughput(&store, args.writers, args.seconds, value.clone()).await;
        let s = store.stats();
        println!(
            "after the runs: {} records, file {:.1} MB",
            s.records,
            s.file_size_bytes as f64 / 1e6
        );
    }
    space(tmp.path(), args.records, value).await;
}
