//! Frames and payloads on one QUIC stream.
//!
//! A request stream carries one frame, then (for chunk data, manifests and
//! pins) the raw payload bytes the frame declares. [`FrameReader`] reads no
//! further than it must: the decoder refuses an oversize length before the
//! frame is buffered, and a payload is read only after its declared length
//! has passed the frame's limit.

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, WriteError};

use crate::wire::{self, DecodeError, Frame};

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
pub struct FrameReader<'a> {
    recv: &'a mut RecvStream,
    buf: BytesMut,
}

/// Bytes asked of quinn per read while a frame is incomplete.
const READ_STEP: usize = 64 * 1024;

impl<'a> FrameReader<'a> {
    /// A reader of `recv`.
    pub fn new(recv: &'a mut RecvStream) -> Self {
        Self { recv, buf: BytesMut::new() }
    }

    /// The next frame; `Ok(None)` if the stream ends cleanly first.
    pub async fn next_or_end(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = wire::decode_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            // Never buffer past one frame's limit, even if the peer sends more.
            let room = (wire::MAX_FRAME_LEN + wire::HEADER_LEN).saturating_sub(self.buf.len()).clamp(1, READ_STEP);
            match self.recv.read_chunk(room, true).await? {
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

    /// Exactly `len` payload bytes into `out` (replacing its contents).
    /// `len` must already be within the frame's limit.
    pub async fn payload(&mut self, len: usize, out: &mut Vec<u8>) -> Result<(), StreamError> {
        out.clear();
        out.reserve(len);
        for part in self.payload_parts(len).await? {
            out.extend_from_slice(&part);
        }
        Ok(())
    }

    /// Exactly `len` payload bytes, as the pieces quinn received them in
    /// (no copy). `len` must already be within the frame's limit.
    pub async fn payload_parts(&mut self, len: usize) -> Result<Vec<Bytes>, StreamError> {
        let buffered = self.buf.len().min(len);
        let mut parts = Vec::with_capacity(len / (16 << 10) + 2);
        if buffered > 0 {
            parts.push(self.buf.split_to(buffered).freeze());
        }
        let mut missing = len - buffered;
        while missing > 0 {
            match self.recv.read_chunk(missing, true).await? {
                Some(chunk) => {
                    missing -= chunk.bytes.len();
                    parts.push(chunk.bytes);
                }
                None => return Err(StreamError::Ended),
            }
        }
        Ok(parts)
    }
}

/// Writes `frame` and then `payload`, handing quinn the payload's buffer
/// instead of copying it.
pub async fn write_frame_owned(send: &mut SendStream, frame: &Frame, payload: Bytes) -> Result<(), StreamError> {
    let mut header = Vec::with_capacity(128);
    frame.encode(&mut header).map_err(|e| StreamError::Other(e.to_string()))?;
    send.write_all_chunks(&mut [Bytes::from(header), payload]).await?;
    Ok(())
}

/// Writes `frame` and then `payload` (which must be the length it declares).
pub async fn write_frame(send: &mut SendStream, frame: &Frame, payload: &[u8]) -> Result<(), StreamError> {
    let mut header = Vec::with_capacity(128);
    // Frames built here are within the limits; a failure is a bug worth reporting, not a panic.
    frame.encode(&mut header).map_err(|e| StreamError::Other(e.to_string()))?;
    send.write_all(&header).await?;
    if !payload.is_empty() {
        send.write_all(payload).await?;
    }
    Ok(())
}
