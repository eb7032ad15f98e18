//! Frames and payloads on one QUIC stream.
//!
//! A request stream carries one frame, then (for chunk data, manifests and
//! pins) the raw payload bytes the frame declares. [`FrameReader`] reads no
//! further than it must: the decoder refuses an oversize length before the
//! frame is buffered, and a payload is read only after its declared length
//! has passed the frame's limit.

use bytes::{Buf, BytesMut};
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
        out.resize(len, 0);
        let buffered = self.buf.len().min(len);
        out[..buffered].copy_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        if buffered < len {
            self.recv.read_exact(&mut out[buffered..]).await.map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => StreamError::Ended,
                quinn::ReadExactError::ReadError(e) => e.into(),
            })?;
        }
        Ok(())
    }
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
