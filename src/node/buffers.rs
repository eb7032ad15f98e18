//! Buffers that chunk replies are read into, used again once quinn has
//! sent their bytes.
//!
//! A node serving a pull reads one chunk file per request. A fresh buffer
//! each time costs more than the read: the allocator hands memory back to
//! the system and takes it again, and every page of it is faulted in and
//! zeroed anew. A reply's bytes go to quinn as [`Bytes`] that return their
//! buffer here when the last of them is dropped (once the peer has
//! acknowledged every packet), so a busy node reads into warm memory.
//!
//! Bounded: idle buffers hold at most [`IDLE_BYTES`], and none is kept
//! that is larger than [`LARGEST_KEPT`]. Buffers in use are the payload
//! budget's to count, as before; a buffer is at most [`ROUNDING`] larger
//! than the chunk it holds.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Most bytes of idle buffers kept for the next replies.
pub const IDLE_BYTES: usize = 32 << 20;
/// The largest buffer kept: one for a chunk of the default largest size
/// (4 MiB, its tag, and the byte a read uses to see the file end), rounded.
pub const LARGEST_KEPT: usize = 5 << 20;
/// Buffers are made in multiples of this, so one fits many chunk sizes.
pub const ROUNDING: usize = 1 << 20;

/// Idle reply buffers.
#[derive(Default)]
pub(crate) struct ReplyBuffers {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl ReplyBuffers {
    /// An empty buffer with room for `len` bytes: an idle one that fits,
    /// the most recently returned first, else a new one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = idle.iter().rposition(|buf| buf.capacity() >= len) {
            return idle.remove(at);
        }
        drop(idle);
        Vec::with_capacity(len.div_ceil(ROUNDING).max(1).saturating_mul(ROUNDING))
    }

    /// `buf`'s bytes, for quinn to send; the buffer comes back here when
    /// the last `Bytes` of them is dropped.
    pub(crate) fn share(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent { buf, home: Arc::clone(self) })
    }

    /// Keeps `buf` for a later reply if it is not too large and there is room.
    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > LARGEST_KEPT {
            return;
        }
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let held: usize = idle.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= IDLE_BYTES {
            idle.push(buf);
        }
    }

    /// Bytes of idle buffers held.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).iter().map(Vec::capacity).sum()
    }
}

/// A buffer lent out as `Bytes`, returned on drop.
struct Lent {
    buf: Vec<u8>,
    home: Arc<ReplyBuffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_the_last_slice_of_it_is_dropped() {
        let buffers = Arc::new(ReplyBuffers::default());
        let mut buf = buffers.take(1000);
        assert_eq!(buf.capacity(), ROUNDING, "rounded up");
        buf.extend_from_slice(&[7; 1000]);
        let first = buf.as_ptr();
        let bytes = buffers.share(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(buffers.idle_bytes(), 0, "a slice still holds it");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert_eq!(buffers.idle_bytes(), ROUNDING);
        let again = buffers.take(ROUNDING);
        assert!(again.is_empty() && again.as_ptr() == first, "the same memory, emptied");
        assert!(buffers.take(ROUNDING + 1).capacity() > ROUNDING, "one that is too small is not used");
    }

    #[test]
    fn idle_buffers_are_bounded() {
        let buffers = Arc::new(ReplyBuffers::default());
        let lent: Vec<Bytes> = (0..IDLE_BYTES / ROUNDING + 4).map(|_| buffers.share(buffers.take(100))).collect();
        drop(lent);
        assert_eq!(buffers.idle_bytes(), IDLE_BYTES);
        drop(buffers.share(buffers.take(LARGEST_KEPT + 1)));
        assert_eq!(buffers.idle_bytes(), IDLE_BYTES, "the large one is not kept");
    }
}
