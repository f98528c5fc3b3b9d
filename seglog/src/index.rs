//! State shared by the writer thread and every reader: the in-memory index of durable frames,
//! the durable head, and the sticky failure/corruption flags.
//!
//! Readers hold the index lock only to copy out positions and `Arc<File>`s; the disk reads
//! happen after the lock is released, and the writer takes the write lock only after its fsync
//! to publish what became durable. So reads never wait for an fsync.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::frame::{FRAME_HEADER_SIZE_BYTES, decode_frame};
use crate::{FsyncMode, LogError, ReadOutcome, metric_names};

/// One segment file as far as it is durable.
pub(crate) struct SegmentIndex {
    pub base_offset: u64,
    pub path: Arc<Path>,
    /// Shared with readers; positional reads (`read_at`) need no cursor, so no lock either.
    /// A reader keeps its clone alive, so a concurrent trim that unlinks the file is harmless.
    pub file: Arc<File>,
    /// Byte position of each frame; entry `base_offset + i` starts at `positions[i]`.
    /// u32 is enough because `segment_size_bytes` is capped at `u32::MAX`.
    pub positions: Vec<u32>,
    /// Bytes of the file covered by durable frames (the file may be longer while a group
    /// commit is in flight).
    pub durable_len_bytes: u64,
}

impl SegmentIndex {
    pub fn end_offset(&self) -> u64 {
        self.base_offset + self.positions.len() as u64
    }

    /// (position, frame size) of entry `i` of this segment.
    fn frame_extent(&self, i: usize) -> (u64, u64) {
        let pos = u64::from(self.positions[i]);
        let end = match self.positions.get(i + 1) {
            Some(next) => u64::from(*next),
            None => self.durable_len_bytes,
        };
        debug_assert!(
            end >= pos + FRAME_HEADER_SIZE_BYTES as u64,
            "index holds a frame shorter than its header"
        );
        (pos, end - pos)
    }
}

pub(crate) struct Index {
    /// Never empty: the last segment is the active one the writer appends to.
    pub segments: Vec<SegmentIndex>,
    pub durable_head: u64,
    pub disk_bytes: u64,
}

impl Index {
    pub fn start_offset(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.durable_head, |s| s.base_offset)
    }

    pub fn check_invariants(&self) {
        debug_assert!(
            !self.segments.is_empty(),
            "the index always has an active segment"
        );
        debug_assert!(
            self.segments
                .windows(2)
                .all(|w| w[0].end_offset() == w[1].base_offset),
            "segments are contiguous"
        );
        debug_assert_eq!(
            self.segments.last().map(|s| s.end_offset()),
            Some(self.durable_head),
            "the durable head is the end of the active segment"
        );
    }
}

/// Where the first detected corruption is; reads at or after `offset` fail from then on.
#[derive(Debug, Clone)]
pub(crate) struct Corruption {
    pub segment: PathBuf,
    pub offset: u64,
    pub position: u64,
    pub reason: String,
}

impl Corruption {
    pub fn to_error(&self) -> LogError {
        LogError::Corrupt {
            segment: self.segment.clone(),
            offset: self.offset,
            position: self.position,
            reason: self.reason.clone(),
        }
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub incarnation: [u8; 16],
    pub fsync: FsyncMode,
    pub index: RwLock<Index>,
    pub head_tx: watch::Sender<u64>,
    /// `u64::MAX` when no corruption was seen; a cheap check on every read.
    corrupt_offset: AtomicU64,
    corruption: Mutex<Option<Corruption>>,
    failed_flag: AtomicBool,
    failed_reason: Mutex<Option<String>>,
    pub fsync_count: AtomicU64,
    pub group_commit_count: AtomicU64,
    /// Test hook: the next data fsync of the writer fails as if the disk had returned EIO.
    #[cfg(test)]
    pub fail_next_sync: AtomicBool,
}

/// A panic while holding a lock is a bug elsewhere; the index stays consistent because every
/// update is a plain push/drain, so keep serving instead of cascading panics.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(dir: PathBuf, incarnation: [u8; 16], fsync: FsyncMode, index: Index) -> Shared {
        index.check_invariants();
        let head = index.durable_head;
        Shared {
            dir,
            incarnation,
            fsync,
            index: RwLock::new(index),
            head_tx: watch::Sender::new(head),
            corrupt_offset: AtomicU64::new(u64::MAX),
            corruption: Mutex::new(None),
            failed_flag: AtomicBool::new(false),
            failed_reason: Mutex::new(None),
            fsync_count: AtomicU64::new(0),
            group_commit_count: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
        }
    }

    pub fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn corruption(&self) -> Option<Corruption> {
        if self.corrupt_offset.load(Ordering::Acquire) == u64::MAX {
            return None;
        }
        lock(&self.corruption).clone()
    }

    /// Remembers the lowest corrupt offset seen, so every later read at or after it fails too.
    pub fn record_corruption(&self, c: Corruption) {
        metrics::counter!(metric_names::CORRUPTION_TOTAL).increment(1);
        tracing::error!(
            segment = %c.segment.display(),
            offset = c.offset,
            position = c.position,
            reason = %c.reason,
            "corrupt frame in the log: refusing to serve it or anything after it; restart the node so recovery cuts the log and starts a new incarnation"
        );
        let mut slot = lock(&self.corruption);
        if slot.as_ref().is_none_or(|old| c.offset < old.offset) {
            self.corrupt_offset.store(c.offset, Ordering::Release);
            *slot = Some(c);
        }
    }

    pub fn failed_reason(&self) -> Option<String> {
        if !self.failed_flag.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failed_reason).clone()
    }

    pub fn mark_failed(&self, reason: String) {
        let mut slot = lock(&self.failed_reason);
        if slot.is_none() {
            *slot = Some(reason);
            self.failed_flag.store(true, Ordering::Release);
        }
    }

    pub fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<ReadOutcome, LogError> {
        let corruption = self.corruption();
        if let Some(c) = corruption.as_ref().filter(|c| from_offset >= c.offset) {
            return Err(c.to_error());
        }
        let (plan, start_offset, durable_head) = {
            let index = self.read_index();
            let start_offset = index.start_offset();
            let durable_head = index.durable_head;
            if from_offset < start_offset {
                return Err(LogError::Trimmed {
                    requested: from_offset,
                    start_offset,
                });
            }
            if from_offset > durable_head {
                return Err(LogError::OffsetBeyondHead {
                    requested: from_offset,
                    durable_head,
                });
            }
            // Never hand out what follows a known corruption, even if it is durable.
            let limit = corruption
                .as_ref()
                .map_or(durable_head, |c| c.offset.min(durable_head));
            (
                plan_read(&index, from_offset, limit, max_bytes, max_entries),
                start_offset,
                durable_head,
            )
        };

        let mut entries = Vec::with_capacity(plan.iter().map(|c| c.frames.len()).sum());
        for chunk in &plan {
            self.execute_chunk(chunk, &mut entries)?;
        }
        let next_offset = entries.last().map_or(from_offset, |(o, _)| o + 1);
        debug_assert!(
            next_offset <= durable_head,
            "a read never passes the durable head"
        );
        Ok(ReadOutcome {
            entries,
            next_offset,
            start_offset,
            durable_head,
        })
    }

    fn execute_chunk(
        &self,
        chunk: &ReadChunk,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<(), LogError> {
        let corrupt = |offset: u64, position: u64, reason: String| {
            let c = Corruption {
                segment: chunk.path.to_path_buf(),
                offset,
                position,
                reason,
            };
            self.record_corruption(c.clone());
            c.to_error()
        };
        let Some(&(first_offset, first_pos, _)) = chunk.frames.first() else {
            return Ok(());
        };
        let len = usize::try_from(chunk.end_position - first_pos).map_err(|_| {
            corrupt(
                first_offset,
                first_pos,
                "read range does not fit in memory".to_owned(),
            )
        })?;
        let mut buf = vec![0u8; len];
        if let Err(e) = chunk.file.read_exact_at(&mut buf, first_pos) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(corrupt(
                    first_offset,
                    first_pos,
                    "segment file is shorter than its durable length (truncated behind the log's back)".to_owned(),
                ));
            }
            return Err(LogError::Io {
                op: "read from segment",
                path: chunk.path.to_path_buf(),
                source: e,
            });
        }
        let buf = Bytes::from(buf);
        for &(offset, pos, size) in &chunk.frames {
            let rel = (pos - first_pos) as usize;
            let size = size as usize;
            let frame = decode_frame(&buf[rel..rel + size])
                .map_err(|e| corrupt(offset, pos, e.to_string()))?;
            if frame.offset != offset {
                return Err(corrupt(
                    offset,
                    pos,
                    format!(
                        "frame carries offset {} where the index expects {offset}",
                        frame.offset
                    ),
                ));
            }
            if frame.frame_size_bytes != size {
                return Err(corrupt(
                    offset,
                    pos,
                    format!(
                        "frame length {} differs from the {size} bytes recorded when it was written",
                        frame.frame_size_bytes
                    ),
                ));
            }
            out.push((offset, buf.slice(rel + FRAME_HEADER_SIZE_BYTES..rel + size)));
        }
        Ok(())
    }
}

/// Frames to read from one segment: one contiguous byte range, one `read_at`.
struct ReadChunk {
    file: Arc<File>,
    path: Arc<Path>,
    /// (offset, position, frame size)
    frames: Vec<(u64, u64, u64)>,
    end_position: u64,
}

fn plan_read(
    index: &Index,
    from_offset: u64,
    limit: u64,
    max_bytes: usize,
    max_entries: usize,
) -> Vec<ReadChunk> {
    let mut plan = Vec::new();
    let mut offset = from_offset;
    let mut entries = 0usize;
    let mut payload_bytes = 0u64;
    // The last segment whose base is <= from_offset holds it (empty segments share a base with
    // their successor and are skipped by the end_offset check below).
    let mut seg_i = index
        .segments
        .partition_point(|s| s.base_offset <= from_offset)
        .saturating_sub(1);
    let mut full = false;
    while !full && offset < limit && entries < max_entries && seg_i < index.segments.len() {
        let seg = &index.segments[seg_i];
        seg_i += 1;
        if offset >= seg.end_offset() {
            continue;
        }
        debug_assert!(offset >= seg.base_offset);
        let mut chunk = ReadChunk {
            file: seg.file.clone(),
            path: seg.path.clone(),
            frames: Vec::new(),
            end_position: 0,
        };
        while offset < limit && offset < seg.end_offset() && entries < max_entries {
            let (pos, size) = seg.frame_extent((offset - seg.base_offset) as usize);
            let payload = size - FRAME_HEADER_SIZE_BYTES as u64;
            // Always return at least one entry, even one bigger than max_bytes, or a consumer
            // could never get past it.
            if entries > 0 && payload_bytes + payload > max_bytes as u64 {
                full = true;
                break;
            }
            chunk.frames.push((offset, pos, size));
            chunk.end_position = pos + size;
            payload_bytes += payload;
            entries += 1;
            offset += 1;
        }
        if !chunk.frames.is_empty() {
            plan.push(chunk);
        }
    }
    plan
}
