//! The frame codec: one log entry on disk.
//!
//! Kept pure (no I/O, no allocation) so that recovery, reads and fuzz targets share exactly the
//! same validation, and so a fuzzer can throw arbitrary bytes at it.

/// Marks the start of every frame. Recovery scans for these bytes to tell a torn tail (no valid
/// frame follows) from damage in the middle of the log (valid frames follow). On disk it reads
/// as the ASCII text `hpq1`, which makes hex dumps easy to eyeball.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"hpq1");

/// Header layout: magic u32 | payload_len u32 | offset u64 | crc32c u32, all little-endian.
pub const FRAME_HEADER_SIZE_BYTES: usize = 20;

/// One decoded frame, borrowing its payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The node-local offset written into the frame (covered by the CRC).
    pub offset: u64,
    /// The opaque entry bytes.
    pub payload: &'a [u8],
    /// Header plus payload: where the next frame starts, relative to this one.
    pub frame_size_bytes: usize,
}

/// Why bytes are not a valid frame. Recovery treats every variant as "the log ends or is
/// damaged here"; it never tries to skip over a bad frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame is incomplete: {needed_bytes} bytes needed, only {available_bytes} present (a torn write, or a damaged length field)"
    )]
    Incomplete {
        needed_bytes: u64,
        available_bytes: usize,
    },
    #[error(
        "bad frame magic {found:#010x}, expected {FRAME_MAGIC:#010x} (not the start of a frame)"
    )]
    BadMagic { found: u32 },
    #[error(
        "crc32c mismatch: stored {stored:#010x}, computed {computed:#010x} (the offset or payload bytes changed on disk)"
    )]
    CrcMismatch { stored: u32, computed: u32 },
}

/// The fixed-size header, decoded without looking at the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub payload_len: u32,
    pub offset: u64,
    pub crc: u32,
}

impl FrameHeader {
    pub(crate) fn frame_size_bytes(&self) -> u64 {
        FRAME_HEADER_SIZE_BYTES as u64 + u64::from(self.payload_len)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Decodes the header at the start of `buf` and checks the magic (but not the CRC, which needs
/// the payload).
pub(crate) fn decode_header(buf: &[u8]) -> Result<FrameHeader, FrameError> {
    if buf.len() < FRAME_HEADER_SIZE_BYTES {
        return Err(FrameError::Incomplete {
            needed_bytes: FRAME_HEADER_SIZE_BYTES as u64,
            available_bytes: buf.len(),
        });
    }
    let magic = le_u32(&buf[0..4]);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    Ok(FrameHeader {
        payload_len: le_u32(&buf[4..8]),
        offset: le_u64(&buf[8..16]),
        crc: le_u32(&buf[16..20]),
    })
}

fn frame_crc(offset: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&offset.to_le_bytes()), payload)
}

/// Decodes and fully verifies (magic, length, CRC) the frame at the start of `buf`; bytes after
/// it are ignored. Checking that the offset is the expected one is the caller's job, because
/// only the caller knows which offset it expects.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let header = decode_header(buf)?;
    let needed_bytes = header.frame_size_bytes();
    if (buf.len() as u64) < needed_bytes {
        return Err(FrameError::Incomplete {
            needed_bytes,
            available_bytes: buf.len(),
        });
    }
    // `needed_bytes <= buf.len()`, so it fits in usize.
    let frame_size_bytes = needed_bytes as usize;
    let payload = &buf[FRAME_HEADER_SIZE_BYTES..frame_size_bytes];
    let computed = frame_crc(header.offset, payload);
    if computed != header.crc {
        return Err(FrameError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(Frame {
        offset: header.offset,
        payload,
        frame_size_bytes,
    })
}

/// Appends the encoded frame for (`offset`, `payload`) to `out`.
///
/// # Panics
/// If `payload` is 4 GiB or larger: the length field is a u32, and the log refuses such entries
/// long before they get here (`max_entry_bytes` is a u32).
pub fn encode_frame(offset: u64, payload: &[u8], out: &mut Vec<u8>) {
    let payload_len = u32::try_from(payload.len()).expect("frame payloads are shorter than 4 GiB");
    out.reserve(FRAME_HEADER_SIZE_BYTES + payload.len());
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&frame_crc(offset, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_layout() {
        let mut buf = Vec::new();
        encode_frame(7, b"hello", &mut buf);
        assert_eq!(buf.len(), FRAME_HEADER_SIZE_BYTES + 5);
        assert_eq!(&buf[0..4], b"hpq1");
        assert_eq!(&buf[4..8], &5u32.to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        let f = decode_frame(&buf).unwrap();
        assert_eq!(f.offset, 7);
        assert_eq!(f.payload, b"hello");
        assert_eq!(f.frame_size_bytes, buf.len());
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut buf = Vec::new();
        encode_frame(1, b"a", &mut buf);
        encode_frame(2, b"bb", &mut buf);
        let f = decode_frame(&buf).unwrap();
        assert_eq!((f.offset, f.payload), (1, &b"a"[..]));
        let g = decode_frame(&buf[f.frame_size_bytes..]).unwrap();
        assert_eq!((g.offset, g.payload), (2, &b"bb"[..]));
    }

    #[test]
    fn every_damage_is_detected() {
        let mut buf = Vec::new();
        encode_frame(42, b"payload bytes", &mut buf);
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_frame(&bad).is_err(),
                    "flip of bit {bit} in byte {i} not detected"
                );
            }
        }
        for cut in 0..buf.len() {
            assert!(matches!(
                decode_frame(&buf[..cut]),
                Err(FrameError::Incomplete { .. })
            ));
        }
    }

    #[test]
    fn offset_is_covered_by_the_crc() {
        let mut buf = Vec::new();
        encode_frame(42, b"x", &mut buf);
        buf[8..16].copy_from_slice(&43u64.to_le_bytes());
        assert!(matches!(
            decode_frame(&buf),
            Err(FrameError::CrcMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(offset in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = Vec::new();
            encode_frame(offset, &payload, &mut buf);
            let f = decode_frame(&buf).unwrap();
            prop_assert_eq!(f.offset, offset);
            prop_assert_eq!(f.payload, &payload[..]);
            prop_assert_eq!(f.frame_size_bytes, buf.len());
        }
    }
}
