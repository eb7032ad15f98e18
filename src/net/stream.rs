//! Frames and payloads on one QUIC stream, and the deadlines they keep.
//!
//! A request stream carries one frame, then (for chunk data, manifests and
//! pins) the raw payload bytes the frame declares. [`FrameReader`] reads no
//! further than it must: the decoder refuses an oversize length before the
//! frame is buffered, and a payload is read only after its declared length
//! has passed the frame's limit. Every read waits only so long: a frame
//! within [`FRAME_TIMEOUT`], a payload at [`Pace`] (no silence longer than
//! [`STALL_TIMEOUT`], and never behind [`MIN_RATE`] after a short grace).

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

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

/// How long a payload of `len` bytes may take at [`MIN_RATE`]: [`PAYLOAD_GRACE`] plus `len` at that rate.
pub fn payload_time(len: u64) -> Duration {
    payload_time_at(len, MIN_RATE)
}

/// How long a payload of `len` bytes may take at `rate` bytes per second:
/// [`PAYLOAD_GRACE`] plus `len` at that rate.
pub fn payload_time_at(len: u64, rate: u64) -> Duration {
    PAYLOAD_GRACE + Duration::from_millis(len.saturating_mul(1000) / rate.max(1))
}

/// The rate a sender allows one of its payloads: a quarter of [`MIN_RATE`],
/// since it has several on their way to one peer at once.
pub const SENDER_RATE: u64 = MIN_RATE / 4;

/// The pace a payload must keep: never silent for longer than
/// [`STALL_TIMEOUT`], and never behind its schedule: by [`PAYLOAD_GRACE`]
/// plus n bytes at its rate after it started, n bytes must have moved. A
/// payload cannot hold its reservation by trickling; it must keep up all
/// along, not just finish in time.
///
/// A payload that shares a connection with others gets its part of the
/// connection's rate, in proportion to its length among all the bytes the
/// connection has reserved (the most it has had at once while this one
/// moved), so many payloads over one slow link are not cut, and together
/// they must still keep up the whole rate.
#[derive(Debug)]
pub struct Pace<'a> {
    start: Instant,
    len: u64,
    rate: u64,
    shared: Option<&'a AtomicU64>,
    peak: u64,
}

impl Pace<'static> {
    /// The pace for a payload starting now at `rate` bytes per second.
    pub fn at_rate(rate: u64) -> Self {
        Pace { start: Instant::now(), len: 0, rate: rate.max(1), shared: None, peak: 0 }
    }
}

impl<'a> Pace<'a> {
    /// The pace for a payload of `len` bytes starting now, which shares
    /// `rate` with the other payloads of a connection that has `reserved`
    /// bytes reserved (this one's included).
    pub fn shared(len: u64, rate: u64, reserved: &'a AtomicU64) -> Self {
        Pace { start: Instant::now(), len: len.max(1), rate: rate.max(1), shared: Some(reserved), peak: 0 }
    }

    /// How long the next wait may last, with `moved` bytes through so far;
    /// `None` once the payload has fallen behind.
    fn next_wait(&mut self, moved: u64) -> Option<Duration> {
        let rate = match self.shared {
            None => self.rate,
            Some(reserved) => {
                self.peak = self.peak.max(reserved.load(Ordering::Relaxed)).max(self.len);
                let part = u128::from(self.rate) * u128::from(self.len) / u128::from(self.peak);
                u64::try_from(part).unwrap_or(self.rate).max(1)
            }
        };
        let due = self.start + PAYLOAD_GRACE + Duration::from_millis(moved.saturating_mul(1000) / rate);
        let wait = due.saturating_duration_since(Instant::now()).min(STALL_TIMEOUT);
        (!wait.is_zero()).then_some(wait)
    }
}

/// Received pieces this short are copied, not kept. quinn hands out each
/// piece as a slice of the buffer its datagram (or GRO batch of datagrams,
/// at most 64 KiB) arrived in, and a kept piece keeps that whole buffer: a
/// peer sending one payload byte per packet would otherwise make the node
/// hold a hundred times what the payload budget counts. A piece kept is at
/// least half its buffer.
const KEEP_PIECE_MIN: usize = 32 * 1024;
/// How much a buffer of copied pieces holds before a new one starts.
const COALESCE_STEP: usize = 256 * 1024;

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
    pub async fn payload(&mut self, len: usize, out: &mut Vec<u8>, pace: Pace<'_>) -> Result<(), StreamError> {
        out.clear();
        out.reserve(len);
        self.read_payload(len, pace, |piece| out.extend_from_slice(&piece)).await
    }

    /// Exactly `len` payload bytes, at `pace`, as the large pieces quinn
    /// received them in (no copy) and the small ones copied together (see
    /// [`KEEP_PIECE_MIN`]). `len` must already be within the frame's limit.
    pub async fn payload_parts(&mut self, len: usize, pace: Pace<'_>) -> Result<Vec<Bytes>, StreamError> {
        let mut parts = Vec::with_capacity(len / KEEP_PIECE_MIN + len / COALESCE_STEP + 2);
        let mut copied = BytesMut::new();
        let mut left = len;
        self.read_payload(len, pace, |piece| {
            left -= piece.len();
            if piece.len() >= KEEP_PIECE_MIN {
                if !copied.is_empty() {
                    parts.push(copied.split().freeze());
                }
                parts.push(piece);
                return;
            }
            if copied.capacity() - copied.len() < piece.len() {
                if !copied.is_empty() {
                    parts.push(copied.split().freeze());
                }
                copied.reserve((left + piece.len()).min(COALESCE_STEP).max(piece.len()));
            }
            copied.extend_from_slice(&piece);
        })
        .await?;
        if !copied.is_empty() {
            parts.push(copied.freeze());
        }
        Ok(parts)
    }

    /// Reads `len` payload bytes at `pace`, handing each piece to `take` as
    /// it arrives (what the frame reader buffered first, then quinn's).
    async fn read_payload(
        &mut self,
        len: usize,
        mut pace: Pace<'_>,
        mut take: impl FnMut(Bytes),
    ) -> Result<(), StreamError> {
        let buffered = self.buf.len().min(len);
        if buffered > 0 {
            take(self.buf.split_to(buffered).freeze());
        }
        let mut received = buffered;
        while received < len {
            let wait = pace.next_wait(received as u64).ok_or(StreamError::TimedOut("the payload"))?;
            let read = tokio::time::timeout(wait, self.recv.read_chunk(len - received, true));
            match read.await.map_err(|_| StreamError::TimedOut("the payload"))?? {
                Some(chunk) => {
                    received += chunk.bytes.len();
                    take(chunk.bytes);
                }
                None => return Err(StreamError::Ended),
            }
        }
        Ok(())
    }

    /// Tells the peer to stop sending on this stream.
    pub fn stop(&mut self, code: VarInt) {
        let _ = self.recv.stop(code);
    }
}

/// Writes `frame` and then `payload` at `pace`: the one way a frame is
/// written. The payload goes a piece at a time, each of which quinn must
/// take (it does once the peer's flow control lets it) on schedule, so a
/// peer that does not read is cut off instead of holding the sender up. No
/// copy: each piece is a slice of `payload`. A sender with no rate of its
/// own uses `Pace::at_rate(SENDER_RATE)`.
pub async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    payload: Bytes,
    mut pace: Pace<'_>,
) -> Result<(), StreamError> {
    let mut header = Vec::with_capacity(128);
    frame.encode(&mut header).map_err(|e| StreamError::Other(e.to_string()))?;
    // quinn takes as much of the pieces as flow control allows at each
    // call, so an open window takes the whole frame in one; each call must
    // make progress within the pace's next wait.
    let mut pieces = [Bytes::from(header), payload];
    let mut moved = 0u64;
    while pieces.iter().any(|p| !p.is_empty()) {
        let wait = pace.next_wait(moved).ok_or(StreamError::TimedOut("sending"))?;
        let written = tokio::time::timeout(wait, send.write_chunks(&mut pieces))
            .await
            .map_err(|_| StreamError::TimedOut("sending"))??;
        moved += written.bytes as u64;
    }
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
