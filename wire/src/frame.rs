//! Framing: a frame is a u32 big-endian length followed by that many bytes of protobuf. The
//! length is checked against the receiver's limit before any buffer is sized from it, so a peer
//! cannot make us allocate by announcing a huge frame.

use bytes::{BufMut, Bytes, BytesMut};

use crate::WireError;

/// Protocol ceiling for one frame; per-endpoint limits may only be lower. Bounded so that a
/// batch of entries stays well within what one stream should carry in one round trip.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Bytes of the length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Reads the body length from a frame prefix, refusing lengths over `max_frame_bytes`.
pub fn decode_frame_len(
    prefix: [u8; FRAME_PREFIX_BYTES],
    max_frame_bytes: usize,
) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_bytes {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len)
}

/// Encodes `msg` as one frame (prefix + body). Refuses messages over [`MAX_FRAME_BYTES`] here,
/// where the caller can still split them, rather than letting every receiver reject them.
pub fn encode_frame<M: prost::Message>(msg: &M) -> Result<Bytes, WireError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut buf = BytesMut::with_capacity(FRAME_PREFIX_BYTES + len);
    let prefix = u32::try_from(len).map_err(|_| WireError::FrameTooLarge {
        len,
        max: MAX_FRAME_BYTES,
    })?;
    buf.put_u32(prefix);
    msg.encode(&mut buf).map_err(|e| WireError::Frame {
        detail: format!("encoding needed more room than encoded_len() reported: {e}"),
    })?;
    debug_assert_eq!(buf.len(), FRAME_PREFIX_BYTES + len);
    Ok(buf.freeze())
}

/// Decodes exactly one whole frame from `frame` (prefix + body, nothing after it). Pure, for
/// fuzzing and for tests; streams use [`crate::read_frame`].
pub fn decode_frame<M: prost::Message + Default>(
    frame: &[u8],
    max_frame_bytes: usize,
) -> Result<M, WireError> {
    let Some((prefix, body)) = frame.split_first_chunk::<FRAME_PREFIX_BYTES>() else {
        return Err(WireError::Frame {
            detail: format!(
                "{} bytes is shorter than the {FRAME_PREFIX_BYTES}-byte length prefix",
                frame.len()
            ),
        });
    };
    let len = decode_frame_len(*prefix, max_frame_bytes)?;
    if body.len() != len {
        return Err(WireError::Frame {
            detail: format!("prefix announces {len} bytes but {} follow", body.len()),
        });
    }
    decode_body(Bytes::copy_from_slice(body))
}

/// Decodes a frame body. Taking `Bytes` lets prost slice `bytes` fields (entries, payloads) out
/// of the receive buffer without copying them.
pub(crate) fn decode_body<M: prost::Message + Default>(body: Bytes) -> Result<M, WireError> {
    M::decode(body).map_err(|source| WireError::Decode {
        what: std::any::type_name::<M>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn frame_round_trips() {
        let msg = pb::TrimRequest { below_offset: 300 };
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(&frame[..], &[0, 0, 0, 3, 0x08, 0xac, 0x02]);
        let back: pb::TrimRequest = decode_frame(&frame, MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn empty_message_is_a_zero_length_frame() {
        let frame = encode_frame(&pb::StatusRequest {}).unwrap();
        assert_eq!(&frame[..], &[0, 0, 0, 0]);
        let _: pb::StatusRequest = decode_frame(&frame, 0).unwrap();
    }

    #[test]
    fn length_over_limit_is_rejected() {
        assert_eq!(decode_frame_len([0, 0, 4, 0], 1024).unwrap(), 1024);
        assert!(matches!(
            decode_frame_len([0, 0, 4, 1], 1024),
            Err(WireError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert!(matches!(
            decode_frame_len([0xff; 4], MAX_FRAME_BYTES),
            Err(WireError::FrameTooLarge { len, .. }) if len == u32::MAX as usize
        ));
    }

    #[test]
    fn truncated_or_padded_frames_are_rejected() {
        let frame = encode_frame(&pb::TrimRequest { below_offset: 300 }).unwrap();
        for bad in [&frame[..2], &frame[..frame.len() - 1]] {
            assert!(matches!(
                decode_frame::<pb::TrimRequest>(bad, MAX_FRAME_BYTES),
                Err(WireError::Frame { .. })
            ));
        }
        let mut padded = frame.to_vec();
        padded.push(0);
        assert!(matches!(
            decode_frame::<pb::TrimRequest>(&padded, MAX_FRAME_BYTES),
            Err(WireError::Frame { .. })
        ));
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        // Field 1 as a length-delimited value that runs past the end.
        let frame = [0, 0, 0, 2, 0x0a, 0x05];
        assert!(matches!(
            decode_frame::<pb::Request>(&frame, MAX_FRAME_BYTES),
            Err(WireError::Decode { .. })
        ));
    }
}
