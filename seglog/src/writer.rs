//! The writer thread: the only code that writes segment files or changes the segment list.
//!
//! A dedicated OS thread rather than a tokio task because it spends its life in blocking
//! `write`/`fsync` calls; one thread also gives a total order of appends without a lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{FRAME_HEADER_SIZE_BYTES, encode_frame};
use crate::index::{SegmentIndex, Shared};
use crate::{
    AppendOutcome, FsyncMode, LogError, TrimOutcome, metric_names, segment_path, sync_dir,
};

pub(crate) enum Command {
    Append(AppendRequest),
    Trim(TrimRequest),
}

pub(crate) struct AppendRequest {
    pub entries: Vec<Bytes>,
    pub reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum TrimRule {
    Below(u64),
    OlderThan(Duration),
}

pub(crate) struct TrimRequest {
    pub rule: TrimRule,
    pub reply: oneshot::Sender<Result<TrimOutcome, LogError>>,
}

/// The segment the writer appends to, including bytes written but not yet durable.
pub(crate) struct ActiveSegment {
    pub base_offset: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    pub len_bytes: u64,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: mpsc::Receiver<Command>,
    pub segment_size_bytes: u64,
    pub max_group_entries: usize,
    pub active: ActiveSegment,
    pub next_offset: u64,
}

/// A segment file a group commit created (path, read/write handle).
type CreatedSegment = (Arc<Path>, Arc<File>);

/// The bytes one group commit writes into one segment.
struct SegmentWrite {
    base_offset: u64,
    /// Where `buf` goes in the file (the segment's length before this commit).
    start_len_bytes: u64,
    buf: Vec<u8>,
    positions: Vec<u32>,
    /// The segment file does not exist yet: this commit rolls to it.
    new: bool,
}

impl Writer {
    /// Runs until every `Log` handle is gone (the channel closes).
    pub fn run(mut self) {
        let mut carry: Option<Command> = None;
        loop {
            let first = match carry.take() {
                Some(c) => c,
                None => match self.rx.blocking_recv() {
                    Some(c) => c,
                    None => break,
                },
            };
            match first {
                Command::Trim(t) => {
                    let result = self.trim(t.rule);
                    let _ = t.reply.send(result);
                }
                Command::Append(a) => {
                    let mut entries = a.entries.len();
                    let mut batch = vec![a];
                    // Group commit: take whatever is already queued, without waiting for more.
                    while entries < self.max_group_entries {
                        match self.rx.try_recv() {
                            Ok(Command::Append(a))
                                if entries + a.entries.len() <= self.max_group_entries =>
                            {
                                entries += a.entries.len();
                                batch.push(a);
                            }
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
            }
        }
        tracing::debug!(dir = %self.shared.dir.display(), "seglog writer thread stopped: every log handle was dropped");
    }

    fn commit(&mut self, batch: Vec<AppendRequest>) {
        if let Some(reason) = self.shared.failed_reason() {
            for req in batch {
                let _ = req.reply.send(Err(LogError::Failed {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let first_offset = self.next_offset;
        let (writes, firsts) = self.encode(&batch);
        let entry_count: usize = batch.iter().map(|r| r.entries.len()).sum();
        let payload_bytes: usize = batch
            .iter()
            .flat_map(|r| r.entries.iter())
            .map(|e| e.len())
            .sum();
        let next_offset = first_offset + entry_count as u64;

        let created = match self.persist(&writes) {
            Ok(created) => created,
            Err(e) => {
                // Never ack anything after a failed write or fsync, and never retry the fsync:
                // Linux may already have dropped the dirty pages and cleared the error, so a
                // second fsync can "succeed" with the data lost. PostgreSQL lost data exactly
                // this way ("fsyncgate", 2018) and now PANICs instead. The only safe state
                // after this is "restart and let recovery read what is really on disk".
                let reason = e.to_string();
                tracing::error!(error = %e, "seglog write or fsync failed: the log refuses every further append; restart the node");
                self.shared.mark_failed(reason.clone());
                for req in batch {
                    let _ = req.reply.send(Err(LogError::Failed {
                        reason: reason.clone(),
                    }));
                }
                return;
            }
        };

        self.publish(writes, created, next_offset);
        self.shared
            .group_commit_count
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric_names::APPENDED_ENTRIES_TOTAL).increment(entry_count as u64);
        metrics::counter!(metric_names::APPENDED_BYTES_TOTAL).increment(payload_bytes as u64);
        metrics::histogram!(metric_names::GROUP_COMMIT_ENTRIES).record(entry_count as f64);
        for (req, first) in batch.into_iter().zip(firsts) {
            let outcome = AppendOutcome {
                first_offset: first,
                next_offset: first + req.entries.len() as u64,
            };
            let _ = req.reply.send(Ok(outcome));
        }
    }

    /// Lays the batch out into frames, rolling to a new segment whenever the next frame would
    /// pass `segment_size_bytes` (a frame bigger than that goes alone into a fresh segment).
    fn encode(&self, batch: &[AppendRequest]) -> (Vec<SegmentWrite>, Vec<u64>) {
        let mut writes = Vec::new();
        let mut cur = SegmentWrite {
            base_offset: self.active.base_offset,
            start_len_bytes: self.active.len_bytes,
            buf: Vec::new(),
            positions: Vec::new(),
            new: false,
        };
        let mut offset = self.next_offset;
        let mut firsts = Vec::with_capacity(batch.len());
        for req in batch {
            firsts.push(offset);
            for entry in &req.entries {
                let frame_size_bytes = (FRAME_HEADER_SIZE_BYTES + entry.len()) as u64;
                let len_bytes = cur.start_len_bytes + cur.buf.len() as u64;
                if len_bytes > 0 && len_bytes + frame_size_bytes > self.segment_size_bytes {
                    let next = SegmentWrite {
                        base_offset: offset,
                        start_len_bytes: 0,
                        buf: Vec::new(),
                        positions: Vec::new(),
                        new: true,
                    };
                    writes.push(std::mem::replace(&mut cur, next));
                }
                let position = cur.start_len_bytes + cur.buf.len() as u64;
                let position = u32::try_from(position)
                    .expect("frames start below segment_size_bytes, which is capped at u32::MAX");
                cur.positions.push(position);
                encode_frame(offset, entry, &mut cur.buf);
                offset += 1;
            }
        }
        writes.push(cur);
        (writes, firsts)
    }

    /// Writes (one `write` per segment touched) and makes durable. Returns the segments it
    /// created, in order.
    fn persist(&self, writes: &[SegmentWrite]) -> Result<Vec<CreatedSegment>, LogError> {
        let mut created = Vec::new();
        for w in writes {
            let (path, file) = if w.new {
                let path: Arc<Path> = segment_path(&self.shared.dir, w.base_offset).into();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|source| LogError::Io {
                        op: "create segment",
                        path: path.to_path_buf(),
                        source,
                    })?;
                let file = Arc::new(file);
                created.push((path.clone(), file.clone()));
                (path, file)
            } else {
                (self.active.path.clone(), self.active.file.clone())
            };
            if w.buf.is_empty() {
                continue;
            }
            file.write_all_at(&w.buf, w.start_len_bytes)
                .map_err(|source| LogError::Io {
                    op: "write to segment",
                    path: path.to_path_buf(),
                    source,
                })?;
            self.sync_data(&file, &path)?;
        }
        if !created.is_empty() && self.shared.fsync == FsyncMode::Always {
            // A new file's directory entry is only durable after the directory is fsynced.
            let start = Instant::now();
            sync_dir(&self.shared.dir)?;
            self.count_fsync(start);
        }
        Ok(created)
    }

    fn sync_data(&self, file: &File, path: &Path) -> Result<(), LogError> {
        #[cfg(test)]
        if self.shared.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(LogError::Io {
                op: "fsync segment",
                path: path.to_path_buf(),
                source: std::io::Error::other("injected fsync failure"),
            });
        }
        if self.shared.fsync == FsyncMode::Never {
            return Ok(());
        }
        let start = Instant::now();
        file.sync_data().map_err(|source| LogError::Io {
            op: "fsync segment",
            path: path.to_path_buf(),
            source,
        })?;
        self.count_fsync(start);
        Ok(())
    }

    fn count_fsync(&self, start: Instant) {
        metrics::histogram!(metric_names::FSYNC_SECONDS).record(start.elapsed().as_secs_f64());
        self.shared.fsync_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes the durable frames visible to readers and wakes long-polls.
    fn publish(
        &mut self,
        writes: Vec<SegmentWrite>,
        created: Vec<CreatedSegment>,
        next_offset: u64,
    ) {
        let mut created = created.into_iter();
        let (segments, disk_bytes) = {
            let mut index = self.shared.write_index();
            for w in writes {
                let written = w.buf.len() as u64;
                index.disk_bytes += written;
                if w.new {
                    let (path, file) = created
                        .next()
                        .expect("persist created one file per new segment");
                    self.active = ActiveSegment {
                        base_offset: w.base_offset,
                        path: path.clone(),
                        file: file.clone(),
                        len_bytes: written,
                    };
                    index.segments.push(SegmentIndex {
                        base_offset: w.base_offset,
                        path,
                        file,
                        positions: w.positions,
                        durable_len_bytes: written,
                    });
                } else {
                    self.active.len_bytes += written;
                    let seg = index
                        .segments
                        .last_mut()
                        .expect("the index always has an active segment");
                    assert_eq!(
                        seg.base_offset, w.base_offset,
                        "the writer appends to the last indexed segment"
                    );
                    seg.positions.extend_from_slice(&w.positions);
                    seg.durable_len_bytes = self.active.len_bytes;
                }
            }
            index.durable_head = next_offset;
            index.check_invariants();
            (index.segments.len(), index.disk_bytes)
        };
        self.next_offset = next_offset;
        self.shared.head_tx.send_replace(next_offset);
        metrics::gauge!(metric_names::SEGMENTS).set(segments as f64);
        metrics::gauge!(metric_names::DISK_BYTES).set(disk_bytes as f64);
    }

    /// Deletes a prefix of whole sealed segments. Never the active one, and never a segment in
    /// the middle (that would leave a hole readers would have to know about).
    fn trim(&mut self, rule: TrimRule) -> Result<TrimOutcome, LogError> {
        let now = SystemTime::now();
        // Only this thread changes the segment list, so what we decide under the read lock
        // still holds when we take the write lock.
        let count = {
            let index = self.shared.read_index();
            let mut count = 0;
            while count + 1 < index.segments.len() {
                let seg = &index.segments[count];
                let deletable =
                    match rule {
                        TrimRule::Below(offset) => index.segments[count + 1].base_offset <= offset,
                        TrimRule::OlderThan(max_age) => {
                            let modified = seg.file.metadata().and_then(|m| m.modified()).map_err(
                                |source| LogError::Io {
                                    op: "read modification time of segment",
                                    path: seg.path.to_path_buf(),
                                    source,
                                },
                            )?;
                            // A modification time in the future (clock step) is "not old".
                            now.duration_since(modified).is_ok_and(|age| age > max_age)
                        }
                    };
                if !deletable {
                    break;
                }
                count += 1;
            }
            if count == 0 {
                return Ok(TrimOutcome {
                    start_offset: index.start_offset(),
                    segments_deleted: 0,
                });
            }
            count
        };
        let (removed, start_offset, segments, disk_bytes) = {
            let mut index = self.shared.write_index();
            let removed: Vec<SegmentIndex> = index.segments.drain(..count).collect();
            index.disk_bytes -= removed.iter().map(|s| s.durable_len_bytes).sum::<u64>();
            index.check_invariants();
            (
                removed,
                index.start_offset(),
                index.segments.len(),
                index.disk_bytes,
            )
        };
        metrics::gauge!(metric_names::SEGMENTS).set(segments as f64);
        metrics::gauge!(metric_names::DISK_BYTES).set(disk_bytes as f64);
        for seg in &removed {
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    // Already gone from the index; a file left behind comes back at the next
                    // start-up as valid, older data, which is harmless.
                    return Err(LogError::Io {
                        op: "delete trimmed segment",
                        path: seg.path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        if self.shared.fsync == FsyncMode::Always {
            sync_dir(&self.shared.dir)?;
        }
        tracing::info!(
            deleted = removed.len(),
            start_offset,
            ?rule,
            "trimmed log segments"
        );
        Ok(TrimOutcome {
            start_offset,
            segments_deleted: removed.len() as u32,
        })
    }
}
