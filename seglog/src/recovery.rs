//! Start-up recovery: verify every frame, cut a torn tail, cut damage (with a new incarnation).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::frame::{FRAME_HEADER_SIZE_BYTES, FRAME_MAGIC, decode_frame, decode_header};
use crate::index::{Index, SegmentIndex};
use crate::writer::ActiveSegment;
use crate::{
    INCARNATION_FILE, LogConfig, LogError, RecoveryReason, RecoveryReport, TEMP_SUFFIX,
    metric_names, segment_path, sync_dir,
};

/// Read-ahead while verifying segments; recovery reads every byte once, sequentially.
const SCAN_BUFFER_BYTES: usize = 1 << 20;
/// Window for the byte-by-byte search for a valid frame after a bad one.
const SEARCH_CHUNK_BYTES: usize = 1 << 20;

pub(crate) struct Recovered {
    pub incarnation: [u8; 16],
    pub index: Index,
    pub active: ActiveSegment,
    pub report: RecoveryReport,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A verified segment (possibly only its prefix before a bad frame).
struct Scanned {
    base_offset: u64,
    path: PathBuf,
    file: File,
    positions: Vec<u32>,
    valid_len_bytes: u64,
    file_len_bytes: u64,
}

struct BadFrame {
    position: u64,
    /// The offset the bad frame should have carried.
    offset: u64,
    detail: String,
}

enum Cut {
    /// The log ends in a frame that was never acked (a crash mid-write).
    TornTail { seg: usize, bad: BadFrame },
    /// Acked data is damaged: everything from here on is dropped.
    Damage {
        /// Index into the sorted segment list of the first segment affected.
        seg: usize,
        bad: BadFrame,
        /// The segment does not belong at all (a gap in offsets): delete it rather than
        /// truncate it.
        whole_segment: bool,
    },
}

enum IncarnationFile {
    Present([u8; 16]),
    Missing,
    Malformed(String),
}

pub(crate) fn recover(cfg: &LogConfig) -> Result<Recovered, LogError> {
    let dir = cfg.dir.as_path();
    fs::create_dir_all(dir).map_err(io_err("create log directory", dir))?;
    let mut segments = list_dir(dir)?;
    segments.sort_by_key(|(base, _)| *base);
    let stored = read_incarnation(dir)?;

    let mut scanned: Vec<Scanned> = Vec::new();
    let mut cut: Option<Cut> = None;
    let mut expected = segments.first().map_or(0, |(base, _)| *base);
    for (i, (base, path)) in segments.iter().enumerate() {
        if *base != expected {
            cut = Some(Cut::Damage {
                seg: i,
                bad: BadFrame {
                    position: 0,
                    offset: expected,
                    detail: format!(
                        "segment {} starts at offset {base} but the previous segment ends at offset {expected}",
                        path.display()
                    ),
                },
                whole_segment: true,
            });
            break;
        }
        let (seg, bad) = scan_segment(path, *base)?;
        expected = seg.base_offset + seg.positions.len() as u64;
        let file_len_bytes = seg.file_len_bytes;
        scanned.push(seg);
        if let Some(bad) = bad {
            let is_last = i + 1 == segments.len();
            let later_valid = if is_last {
                find_valid_frame_after(
                    &scanned[i].file,
                    path,
                    file_len_bytes,
                    bad.position + 1,
                    expected,
                )?
            } else {
                None
            };
            cut = Some(match (is_last, later_valid) {
                (true, None) => Cut::TornTail { seg: i, bad },
                (true, Some((position, offset))) => Cut::Damage {
                    seg: i,
                    bad: BadFrame {
                        detail: format!(
                            "{}; yet a valid frame with offset {offset} follows at position {position}",
                            bad.detail
                        ),
                        ..bad
                    },
                    whole_segment: false,
                },
                (false, _) => Cut::Damage {
                    seg: i,
                    bad: BadFrame {
                        detail: format!(
                            "{}; in a sealed segment that later segments follow",
                            bad.detail
                        ),
                        ..bad
                    },
                    whole_segment: false,
                },
            });
            break;
        }
    }

    let mut incarnation_changed = false;
    let mut incarnation = match &stored {
        IncarnationFile::Present(inc) => *inc,
        _ => [0; 16],
    };
    let mut truncated_bytes = 0u64;
    let mut removed_segments = 0u32;
    let mut reason = RecoveryReason::Clean;
    let mut torn_reason = None;

    match cut {
        None => {}
        Some(Cut::TornTail { seg, bad }) => {
            let s = &scanned[seg];
            debug_assert_eq!(s.valid_len_bytes, bad.position);
            truncate(&s.path, bad.position)?;
            truncated_bytes = s.file_len_bytes - bad.position;
            tracing::warn!(
                segment = %s.path.display(),
                position = bad.position,
                truncated_bytes,
                detail = %bad.detail,
                "cut a torn tail (a frame that was being written when the node stopped; it was never acknowledged)"
            );
            torn_reason = Some(RecoveryReason::TornTail {
                segment: s.path.clone(),
                position: bad.position,
                detail: bad.detail,
            });
        }
        Some(Cut::Damage {
            seg,
            bad,
            whole_segment,
        }) => {
            metrics::counter!(metric_names::CORRUPTION_TOTAL).increment(1);
            // The new incarnation must be durable BEFORE the cut: a crash in between must not
            // leave a shorter log under the old incarnation, or consumers would take reused
            // offsets for entries they already read.
            incarnation = new_incarnation();
            write_incarnation(dir, &incarnation)?;
            incarnation_changed = true;
            let first_removed = if whole_segment {
                seg
            } else {
                let s = &scanned[seg];
                truncate(&s.path, bad.position)?;
                truncated_bytes += s.file_len_bytes - bad.position;
                seg + 1
            };
            for (_, path) in &segments[first_removed..] {
                let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                remove_if_exists(path, "delete segment after damage")?;
                truncated_bytes += len;
                removed_segments += 1;
            }
            scanned.truncate(first_removed);
            sync_dir(dir)?;
            let segment = segments[seg].1.clone();
            tracing::error!(
                segment = %segment.display(),
                offset = bad.offset,
                position = bad.position,
                truncated_bytes,
                removed_segments,
                detail = %bad.detail,
                incarnation = %hex(&incarnation),
                "acknowledged log data is damaged: cut the log there and started a new incarnation, so consumers re-read this node from scratch"
            );
            reason = RecoveryReason::Damaged {
                segment,
                offset: bad.offset,
                position: bad.position,
                detail: bad.detail,
            };
        }
    }

    if scanned.is_empty() {
        debug_assert!(segments.is_empty(), "a cut never removes the first segment");
        let path = segment_path(dir, expected);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        sync_dir(dir)?;
        scanned.push(Scanned {
            base_offset: expected,
            path,
            file,
            positions: Vec::new(),
            valid_len_bytes: 0,
            file_len_bytes: 0,
        });
        if !incarnation_changed {
            // Even if an incarnation file survived: with no segments, nothing says the offsets
            // before were not handed out, so the history must be declared new.
            incarnation = new_incarnation();
            write_incarnation(dir, &incarnation)?;
            incarnation_changed = true;
            reason = RecoveryReason::Fresh;
            tracing::info!(dir = %dir.display(), incarnation = %hex(&incarnation), "created a new, empty log");
        }
    } else if !incarnation_changed {
        let detail = match stored {
            IncarnationFile::Present(_) => None,
            IncarnationFile::Missing => Some("the incarnation file is missing".to_owned()),
            IncarnationFile::Malformed(d) => Some(d),
        };
        if let Some(detail) = detail {
            incarnation = new_incarnation();
            write_incarnation(dir, &incarnation)?;
            incarnation_changed = true;
            tracing::error!(
                dir = %dir.display(),
                detail = %detail,
                incarnation = %hex(&incarnation),
                "segments exist but the incarnation is unknown: kept the data under a new incarnation"
            );
            reason = RecoveryReason::IncarnationUnreadable { detail };
        }
    }
    if let (RecoveryReason::Clean, Some(torn)) = (&reason, torn_reason) {
        reason = torn;
    }

    // The last segment becomes the writer's active segment: reopen it writable.
    let last = scanned
        .last_mut()
        .expect("at least one segment exists here");
    last.file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last.path)
        .map_err(io_err("open active segment", &last.path))?;
    debug_assert_eq!(
        last.file.metadata().map(|m| m.len()).ok(),
        Some(last.valid_len_bytes),
        "the active segment ends at its last valid frame"
    );

    let start_offset = scanned[0].base_offset;
    let durable_head = expected;
    let segment_count = scanned.len();
    let mut index_segments = Vec::with_capacity(segment_count);
    for s in scanned {
        index_segments.push(SegmentIndex {
            base_offset: s.base_offset,
            path: s.path.into(),
            file: Arc::new(s.file),
            positions: s.positions,
            durable_len_bytes: s.valid_len_bytes,
        });
    }
    let active_seg = index_segments
        .last()
        .expect("at least one segment exists here");
    let active = ActiveSegment {
        base_offset: active_seg.base_offset,
        path: active_seg.path.clone(),
        file: active_seg.file.clone(),
        len_bytes: active_seg.durable_len_bytes,
    };
    let index = Index {
        disk_bytes: index_segments.iter().map(|s| s.durable_len_bytes).sum(),
        segments: index_segments,
        durable_head,
    };
    index.check_invariants();

    let report = RecoveryReport {
        incarnation,
        incarnation_changed,
        reason,
        segments: segment_count,
        entries: durable_head - start_offset,
        start_offset,
        head_offset: durable_head,
        truncated_bytes,
        removed_segments,
    };
    tracing::info!(?report, "seglog recovered");
    Ok(Recovered {
        incarnation,
        index,
        active,
        report,
    })
}

/// Segment files sorted later; leftover temp files (an interrupted incarnation write) are
/// removed here; anything else is left alone.
fn list_dir(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list log directory", dir))? {
        let entry = entry.map_err(io_err("list log directory", dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.ends_with(TEMP_SUFFIX) {
            remove_if_exists(&path, "remove leftover temp file")?;
            tracing::info!(path = %path.display(), "removed a leftover temp file");
        } else if let Some(base) = parse_segment_name(&name) {
            segments.push((base, path));
        } else if name != INCARNATION_FILE && name != "LOCK" {
            tracing::debug!(path = %path.display(), "ignoring a file that is not part of the log");
        }
    }
    Ok(segments)
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn remove_if_exists(path: &Path, op: &'static str) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn truncate(path: &Path, len_bytes: u64) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open segment to truncate", path))?;
    file.set_len(len_bytes)
        .map_err(io_err("truncate segment", path))?;
    // sync_all, not sync_data: the new length is metadata.
    file.sync_all()
        .map_err(io_err("fsync truncated segment", path))
}

/// Verifies frames from the start of the segment until the end of the file or the first bad
/// frame (returned separately).
fn scan_segment(path: &Path, base_offset: u64) -> Result<(Scanned, Option<BadFrame>), LogError> {
    let file = File::open(path).map_err(io_err("open segment", path))?;
    let file_len_bytes = file.metadata().map_err(io_err("stat segment", path))?.len();
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, &file);
    let mut positions = Vec::new();
    let mut position = 0u64;
    let mut frame = Vec::new();
    let bad = loop {
        let offset = base_offset + positions.len() as u64;
        let bad = move |detail: String| BadFrame {
            position,
            offset,
            detail,
        };
        let remaining = file_len_bytes - position;
        if remaining == 0 {
            break None;
        }
        if position > u64::from(u32::MAX) {
            break Some(bad(format!(
                "frame starts past 4 GiB (position {position}); segments are never that large"
            )));
        }
        if remaining < FRAME_HEADER_SIZE_BYTES as u64 {
            break Some(bad(format!(
                "only {remaining} bytes left, less than a frame header"
            )));
        }
        frame.resize(FRAME_HEADER_SIZE_BYTES, 0);
        reader
            .read_exact(&mut frame)
            .map_err(io_err("read segment", path))?;
        let header = match decode_header(&frame) {
            Ok(h) => h,
            Err(e) => break Some(bad(e.to_string())),
        };
        let frame_size_bytes = header.frame_size_bytes();
        if frame_size_bytes > remaining {
            break Some(bad(format!(
                "frame of {frame_size_bytes} bytes runs past the end of the file ({remaining} bytes left)"
            )));
        }
        // frame_size_bytes <= remaining <= file length, which fits in memory address space
        // on the 64-bit targets this runs on.
        frame.resize(frame_size_bytes as usize, 0);
        reader
            .read_exact(&mut frame[FRAME_HEADER_SIZE_BYTES..])
            .map_err(io_err("read segment", path))?;
        let decoded = match decode_frame(&frame) {
            Ok(f) => f,
            Err(e) => break Some(bad(e.to_string())),
        };
        if decoded.offset != offset {
            break Some(bad(format!(
                "frame carries offset {}, expected {offset}",
                decoded.offset
            )));
        }
        positions.push(position as u32);
        position += frame_size_bytes;
    };
    drop(reader);
    Ok((
        Scanned {
            base_offset,
            path: path.to_path_buf(),
            file,
            positions,
            valid_len_bytes: position,
            file_len_bytes,
        },
        bad,
    ))
}

/// Searches byte by byte from `from` for a frame with a valid CRC and an offset of at least
/// `min_offset`. Finding one means the bad frame before it is not a torn tail but damage in
/// the middle of acked data. Returns (position, offset).
fn find_valid_frame_after(
    file: &File,
    path: &Path,
    file_len_bytes: u64,
    from: u64,
    min_offset: u64,
) -> Result<Option<(u64, u64)>, LogError> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut chunk = vec![0u8; SEARCH_CHUNK_BYTES + magic.len() - 1];
    let mut header = [0u8; FRAME_HEADER_SIZE_BYTES];
    let mut frame = Vec::new();
    let mut chunk_start = from;
    while chunk_start + magic.len() as u64 <= file_len_bytes {
        let n = (file_len_bytes - chunk_start).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], chunk_start)
            .map_err(io_err("read segment", path))?;
        // Candidates start in the first SEARCH_CHUNK_BYTES; the overlap catches a magic split
        // across two chunks.
        let candidates = n.saturating_sub(magic.len() - 1).min(SEARCH_CHUNK_BYTES);
        for i in 0..candidates {
            if chunk[i..i + magic.len()] != magic {
                continue;
            }
            let position = chunk_start + i as u64;
            if position + FRAME_HEADER_SIZE_BYTES as u64 > file_len_bytes {
                continue;
            }
            file.read_exact_at(&mut header, position)
                .map_err(io_err("read segment", path))?;
            let Ok(h) = decode_header(&header) else {
                continue;
            };
            if h.offset < min_offset || position + h.frame_size_bytes() > file_len_bytes {
                continue;
            }
            frame.resize(h.frame_size_bytes() as usize, 0);
            file.read_exact_at(&mut frame, position)
                .map_err(io_err("read segment", path))?;
            if let Ok(f) = decode_frame(&frame) {
                return Ok(Some((position, f.offset)));
            }
        }
        chunk_start += SEARCH_CHUNK_BYTES as u64;
    }
    Ok(None)
}

fn read_incarnation(dir: &Path) -> Result<IncarnationFile, LogError> {
    let path = dir.join(INCARNATION_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IncarnationFile::Missing),
        Err(source) => {
            return Err(LogError::Io {
                op: "read incarnation file",
                path,
                source,
            });
        }
    };
    Ok(match parse_incarnation(&bytes) {
        Some(inc) => IncarnationFile::Present(inc),
        None => IncarnationFile::Malformed(format!(
            "the incarnation file {} does not hold 32 hex digits and a newline ({} bytes)",
            path.display(),
            bytes.len()
        )),
    })
}

fn parse_incarnation(bytes: &[u8]) -> Option<[u8; 16]> {
    let hex_digits = bytes.strip_suffix(b"\n")?;
    if hex_digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex_digits.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_incarnation() -> [u8; 16] {
    rand::random()
}

/// tmp file + fsync + rename + fsync dir: the incarnation is either the old one or the new
/// one, never a torn mix.
fn write_incarnation(dir: &Path, incarnation: &[u8; 16]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{INCARNATION_FILE}{TEMP_SUFFIX}"));
    let path = dir.join(INCARNATION_FILE);
    let mut text = hex(incarnation);
    text.push('\n');
    {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create incarnation temp file", &tmp))?;
        file.write_all_at(text.as_bytes(), 0)
            .map_err(io_err("write incarnation temp file", &tmp))?;
        file.sync_all()
            .map_err(io_err("fsync incarnation temp file", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err("rename incarnation temp file", &path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_text_round_trip() {
        let inc = [0xab; 16];
        let mut text = hex(&inc).into_bytes();
        text.push(b'\n');
        assert_eq!(text.len(), 33);
        assert_eq!(parse_incarnation(&text), Some(inc));
        assert_eq!(parse_incarnation(&text[..32]), None);
        assert_eq!(parse_incarnation(b"zz"), None);
        let mut bad = text.clone();
        bad[3] = b'g';
        assert_eq!(parse_incarnation(&bad), None);
    }

    #[test]
    fn segment_names() {
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(
            parse_segment_name("18446744073709551615.seg"),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_name("99999999999999999999.seg"), None);
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
    }
}
