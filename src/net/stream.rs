//! Frames and payloads on one QUIC stream, and the deadlines they keep.
//!
//! A request stream carries one frame, then (for chunk data, manifests and
//! pins) the raw payload bytes the frame declares. [`FrameReader`] reads no
//! further than it must: the decoder refuses an oversize length before the
//! frame is buffered, and a payload is read only after its declared length
//! has passed the frame's limit. Every read waits only so long: a frame
//! within [`FRAME_TIMEOUT`], a payload at [`Pace`] (no silence longer than
//! [`STALL_TIMEOUT`], and the whole at [`MIN_RATE`] or better).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::time::Instant;

use crate::wire::{self, DecodeError, Frame};

/// How long a frame (a request, or the start of a reply once the request
/// is sent) may take to arrive whole.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence in the middle of a payload.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowest a payload may arrive or leave, on average, in bytes per second:
/// slow enough for one of 16 streams sharing a 10 Mbit/s uplink.
pub const MIN_RATE: u64 = 64 * 1024;
/// Time a payload gets on top of what [`MIN_RATE`] allows.
pub const PAYLOAD_GRACE: Duration = Duration::from_secs(5);

/// How long a payload of `len` bytes may take: [`PAYLOAD_GRACE`] plus `len` at [`MIN_RATE`].
pub fn payload_time(len: u64) -> Duration {
    PAYLOAD_GRACE + Duration::from_millis(len.saturating_mul(1000) / MIN_RATE)
}

/// The pace a payload must keep: never silent for longer than `stall`, and
/// done by `deadline`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// When the whole payload must be there.
    pub deadline: Instant,
    /// Longest silence allowed between two pieces.
    pub stall: Duration,
}

impl Pace {
    /// The pace for a payload of `len` bytes starting now.
    pub fn for_payload(len: u64) -> Self {
        Self { deadline: Instant::now() + payload_time(len), stall: STALL_TIMEOUT }
    }

    /// How long the next read may wait.
    fn next_wait(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now()).min(self.stall)
    }
}

/// Reading or writing a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame or payload, or before any frame.
    #[error("the stream ended before a whole frame and its payload arrived")]
    Ended,
    /// The connection is gone.
    #[error(transparent)]
    Connection(ConnectionError),
    /// A frame or payload did not arrive, or leave, in time.
    #[error("{0} timed out")]
    TimedOut(&'static str),
    /// The stream was reset or stopped.
    #[error("{0}")]
    Other(String),
}

impl From<ReadError> for StreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::ConnectionLost(c) => StreamError::Connection(c),
            other => StreamError::Other(other.to_string()),
        }
    }
}

impl From<WriteError> for StreamError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::ConnectionLost(c) => StreamError::Connection(c),
            other => StreamError::Other(other.to_string()),
        }
    }
}

/// Reads frames and payloads off a stream, buffering only what the decoder needs.
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
}

/// Bytes asked of quinn per read while a frame is incomplete.
const READ_STEP: usize = 64 * 1024;

impl FrameReader {
    /// A reader of `recv`.
    pub fn new(recv: RecvStream) -> Self {
        Self { recv, buf: BytesMut::new() }
    }

    /// The next frame; `Ok(None)` if the stream ends cleanly first. Waits
    /// at most [`FRAME_TIMEOUT`].
    pub async fn next_or_end(&mut self) -> Result<Option<Frame>, StreamError> {
        self.next_or_end_within(FRAME_TIMEOUT).await
    }

    /// The next frame, waiting at most `limit` for all of it (a reply may
    /// come only after the node has done its work).
    pub async fn next_frame_within(&mut self, limit: Duration) -> Result<Frame, StreamError> {
        self.next_or_end_within(limit).await?.ok_or(StreamError::Ended)
    }

    async fn next_or_end_within(&mut self, limit: Duration) -> Result<Option<Frame>, StreamError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(frame) = wire::decode_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            // Never buffer past one frame's limit, even if the peer sends more.
            let room = (wire::MAX_FRAME_LEN + wire::HEADER_LEN).saturating_sub(self.buf.len()).clamp(1, READ_STEP);
            let read = tokio::time::timeout_at(deadline, self.recv.read_chunk(room, true));
            match read.await.map_err(|_| StreamError::TimedOut("a frame"))?? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(StreamError::Ended),
            }
        }
    }

    /// The next frame; the stream ending first is an error.
    pub async fn next_frame(&mut self) -> Result<Frame, StreamError> {
        self.next_or_end().await?.ok_or(StreamError::Ended)
    }

    /// Exactly `len` payload bytes into `out` (replacing its contents), at `pace`.
    /// `len` must already be within the frame's limit.
    pub async fn payload(&mut self, len: usize, out: &mut Vec<u8>, pace: Pace) -> Result<(), StreamError> {
        out.clear();
        out.reserve(len);
        for part in self.payload_parts(len, pace).await? {
            out.extend_from_slice(&part);
        }
        Ok(())
    }

    /// Exactly `len` payload bytes, as the pieces quinn received them in
    /// (no copy), at `pace`. `len` must already be within the frame's limit.
    pub async fn payload_parts(&mut self, len: usize, pace: Pace) -> Result<Vec<Bytes>, StreamError> {
        let buffered = self.buf.len().min(len);
        let mut parts = Vec::with_capacity(len / (16 << 10) + 2);
        if buffered > 0 {
            parts.push(self.buf.split_to(buffered).freeze());
        }
        let mut missing = len - buffered;
        while missing > 0 {
            let read = tokio::time::timeout(pace.next_wait(), self.recv.read_chunk(missing, true));
            match read.await.map_err(|_| StreamError::TimedOut("the payload"))?? {
                Some(chunk) => {
                    missing -= chunk.bytes.len();
                    parts.push(chunk.bytes);
                }
                None => return Err(StreamError::Ended),
            }
        }
        Ok(parts)
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: VarInt) {
        let _ = self.recv.stop(code);
    }
}

/// Writes `frame` and then `payload`, handing quinn the payload's buffer
/// instead of copying it, within the time `payload_time` allows.
pub async fn write_frame(send: &mut SendStream, frame: &Frame, payload: Bytes) -> Result<(), StreamError> {
    let mut header = Vec::with_capacity(128);
    // Frames built here are within the limits; a failure is a bug worth reporting, not a panic.
    frame.encode(&mut header).map_err(|e| StreamError::Other(e.to_string()))?;
    let deadline = payload_time(payload.len() as u64);
    let mut pieces = [Bytes::from(header), payload];
    let write = send.write_all_chunks(&mut pieces);
    tokio::time::timeout(deadline, write).await.map_err(|_| StreamError::TimedOut("sending"))??;
    Ok(())
}

/// Finishes `send` and waits, until `deadline`, for the peer to acknowledge
/// every byte of it, so that the caller knows quinn holds none of it any
/// more. A peer that does not read in time gets the stream reset.
pub async fn finish_and_wait(send: &mut SendStream, deadline: Instant) -> Result<(), StreamError> {
    send.finish().map_err(|e| StreamError::Other(e.to_string()))?;
    match tokio::time::timeout_at(deadline, send.stopped()).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(code))) => Err(StreamError::Other(format!("the peer stopped the stream (code {code})"))),
        Ok(Err(e)) => Err(StreamError::Other(e.to_string())),
        Err(_) => {
            let _ = send.reset(VarInt::from(wire::ErrorCode::TIMEOUT.0));
            Err(StreamError::TimedOut("the reply"))
        }
    }
}
