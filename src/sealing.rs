//! Chunk formats: how a chunk's plaintext becomes the bytes peers store
//! (docs/FORMAT.md, "Chunk sealing").
//!
//! Format v2, what pushes write, compresses a plaintext that zstd shrinks,
//! records inside the seal whether it did, and pads the sealed size with
//! Padmé, so a storage peer learns less about the content from sizes:
//!
//! ```text
//! inner = payload ‖ zeros ‖ flag (0 raw, 1 zstd) ‖ payload length (u32 LE),  padme(payload length + 5) bytes
//! ct    = ChaCha20-Poly1305(key, nonce 0, aad "p2pfs chunk v2", inner)
//! ```
//!
//! Deciding to compress costs little: a chunk of more than [`SAMPLE_ABOVE`]
//! bytes is first judged by compressing a 64 KiB sample at zstd's fastest
//! level, and incompressible data (already compressed media, archives,
//! ciphertext) is stored raw without compressing the whole chunk. A chunk is
//! kept compressed only if that saves at least 1/32 of its size.
//!
//! Format v1 (stores written before compression) is the plaintext sealed with
//! aad "p2pfs chunk v1" and no header; it still opens. Both formats key the
//! seal with the same convergent chunk key. Pure: no I/O; zstd contexts are
//! kept (one per core, shared by the threads) and reused, which is what makes
//! compressing many chunks cheap and keeps its memory bounded.

use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use crate::chunk::MAX_CHUNK_SIZE;
use crate::crypto::{ChunkKey, CryptoError, TAG_LEN, open_chunk_with, seal_chunk_with};
use crate::id::ChunkId;

const AAD_V1: &[u8] = b"p2pfs chunk v1";
const AAD_V2: &[u8] = b"p2pfs chunk v2";
/// Bytes after the padding in a v2 chunk: the flag and the payload length.
const TRAILER_LEN: usize = 5;
const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// Chunks longer than this are sampled before being compressed whole.
pub const SAMPLE_ABOVE: usize = 128 * 1024;
/// Slices of the sample, spread through the chunk.
const SAMPLE_SLICES: usize = 4;
/// Bytes in each slice of the sample.
const SAMPLE_SLICE: usize = 16 * 1024;
/// The zstd level samples are compressed at: the fastest of the normal ones.
const SAMPLE_LEVEL: i8 = 1;

/// The zstd levels a configuration may ask for; 0 means "never compress".
pub const LEVELS: std::ops::RangeInclusive<i8> = -7..=19;
/// The zstd level used when the configuration names none.
pub const DEFAULT_LEVEL: i8 = 3;

/// The largest sealed chunk: a raw chunk of [`MAX_CHUNK_SIZE`] bytes, padded.
/// Stores and the wire take chunks up to this length.
pub const MAX_SEALED_LEN: u32 = max_sealed_len(MAX_CHUNK_SIZE);

/// How a manifest's chunks are sealed, and so how they open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sealing {
    /// Chunk format v1: the plaintext sealed as it is, no padding.
    V1,
    /// Chunk format v2: compressed when it pays, padded, at this zstd level
    /// (0: never compressed). The level matters only to seal; any v2 chunk
    /// opens whatever level sealed it.
    V2 {
        /// The zstd level.
        level: i8,
    },
}

impl Sealing {
    /// How new chunks are sealed at `level` (0 turns compression off).
    pub fn current(level: i8) -> Self {
        Sealing::V2 { level }
    }

    /// The tag under which the home remembers that a chunk key was sealed in
    /// this format (its `sealed` table): the two formats give one key two ids,
    /// so a v2 push never takes a v1 chunk for its own. Holds no key.
    pub fn lookup_tag(&self, key: &ChunkKey) -> [u8; 32] {
        match self {
            Sealing::V1 => key.lookup_tag(),
            Sealing::V2 { .. } => *blake3::Hasher::new().update(&key.0).update(AAD_V2).finalize().as_bytes(),
        }
    }

    /// Seals `buf` in place: it holds the plaintext and ends up holding the
    /// sealed chunk. Returns the chunk's id. Deterministic: the same key,
    /// plaintext, format and zstd version give the same id.
    pub fn seal(&self, key: &ChunkKey, buf: &mut Vec<u8>) -> ChunkId {
        match *self {
            Sealing::V1 => seal_chunk_with(key, AAD_V1, buf),
            Sealing::V2 { level } => {
                with_scratch(|scratch| frame(level, buf, scratch));
                seal_chunk_with(key, AAD_V2, buf)
            }
        }
    }

    /// Opens a sealed chunk in place: `buf` holds the sealed bytes and ends up
    /// holding the plaintext, which must be `plaintext_len` bytes. The caller
    /// checks the [`ChunkId`] first; this checks the tag and the layout.
    pub fn open(&self, key: &ChunkKey, plaintext_len: u32, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        match self {
            Sealing::V1 => open_chunk_with(key, AAD_V1, buf)?,
            Sealing::V2 { .. } => {
                open_chunk_with(key, AAD_V2, buf)?;
                with_scratch(|scratch| unframe(plaintext_len as usize, buf, scratch))?;
            }
        }
        if buf.len() != plaintext_len as usize {
            return Err(CryptoError::ChunkMalformed("its plaintext is not the length the manifest says"));
        }
        Ok(())
    }
}

/// The longest a chunk of `plaintext_len` bytes can be once sealed, in
/// either format: a raw v2 chunk, padded, with its tag.
pub const fn max_sealed_len(plaintext_len: u32) -> u32 {
    padme(plaintext_len as u64 + TRAILER_LEN as u64) as u32 + TAG_LEN as u32
}

/// Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files
/// and Communication with PURBs", 2019): rounds `len` up so that only
/// O(log log len) bits of it remain: at most 12% more bytes, and at most
/// 3.1% (1.6% on average) for chunks of 1 to 2 MiB.
pub const fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - len.leading_zeros() as u64; // floor(log2 len)
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let zeros = e - s;
    let mask = (1u64 << zeros) - 1;
    (len + mask) & !mask
}

/// Turns the plaintext in `buf` into the v2 inner layout, padded. The
/// trailer goes last, so a raw chunk is never moved in memory.
fn frame(level: i8, buf: &mut Vec<u8>, scratch: &mut Scratch) {
    let len = buf.len();
    let mut flag = RAW;
    if level != 0
        && worth_compressing(buf, scratch)
        && scratch.compress(level, buf).is_some_and(|n| n <= len - len / 32)
    {
        std::mem::swap(buf, &mut scratch.out);
        flag = ZSTD;
    }
    let payload_len = buf.len();
    let padded = padme((payload_len + TRAILER_LEN) as u64) as usize;
    buf.reserve_exact(padded + TAG_LEN - payload_len);
    buf.resize(padded - TRAILER_LEN, 0);
    buf.push(flag);
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
}

/// Undoes [`frame`]: checks the layout and leaves the plaintext in `buf`.
fn unframe(plaintext_len: usize, buf: &mut Vec<u8>, scratch: &mut Scratch) -> Result<(), CryptoError> {
    let malformed = CryptoError::ChunkMalformed;
    let Some(body_len) = buf.len().checked_sub(TRAILER_LEN) else {
        return Err(malformed("shorter than its trailer"));
    };
    let (body, trailer) = buf.split_at(body_len);
    let flag = trailer[0];
    let payload_len = u32::from_le_bytes(trailer[1..].try_into().expect("4 bytes")) as usize;
    if payload_len > body_len {
        return Err(malformed("payload longer than the chunk"));
    }
    if padme((payload_len + TRAILER_LEN) as u64) != buf.len() as u64 || body[payload_len..].iter().any(|&b| b != 0) {
        return Err(malformed("padding is not the format's"));
    }
    match flag {
        RAW => buf.truncate(payload_len),
        ZSTD => {
            scratch.decompress(&buf[..payload_len], plaintext_len)?;
            std::mem::swap(buf, &mut scratch.out);
        }
        _ => return Err(malformed("unknown compression flag")),
    }
    Ok(())
}

/// Whether a chunk is likely to shrink: small chunks are always tried; a large
/// one is judged by a sample of [`SAMPLE_SLICES`] slices spread through it,
/// compressed at zstd's fastest level.
fn worth_compressing(plaintext: &[u8], scratch: &mut Scratch) -> bool {
    if plaintext.len() <= SAMPLE_ABOVE {
        return true;
    }
    let stride = plaintext.len() / SAMPLE_SLICES;
    scratch.sample.clear();
    for i in 0..SAMPLE_SLICES {
        scratch.sample.extend_from_slice(&plaintext[i * stride..][..SAMPLE_SLICE]);
    }
    let sample = std::mem::take(&mut scratch.sample);
    let shrinks = scratch.compress(SAMPLE_LEVEL, &sample).is_some_and(|n| n <= sample.len() - sample.len() / 16);
    scratch.sample = sample;
    shrinks
}

/// zstd contexts and buffers, kept between chunks.
#[derive(Default)]
struct Scratch {
    /// The context for whole chunks, at the level it was made for.
    compressor: Option<(i8, zstd::bulk::Compressor<'static>)>,
    /// The context for samples, at level 1: kept apart, so that judging a
    /// chunk does not cost the whole-chunk context its tables.
    sampler: Option<zstd::bulk::Compressor<'static>>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    out: Vec<u8>,
    sample: Vec<u8>,
}

impl Scratch {
    /// Compresses `input` at `level` into `self.out` and returns its length;
    /// `None` if it does not fit in `input`'s length (it would not be kept
    /// anyway) or zstd fails.
    fn compress(&mut self, level: i8, input: &[u8]) -> Option<usize> {
        let compressor = if level == SAMPLE_LEVEL {
            match &mut self.sampler {
                Some(sampler) => sampler,
                slot => slot.insert(zstd::bulk::Compressor::new(i32::from(level)).ok()?),
            }
        } else {
            match &mut self.compressor {
                Some((at, compressor)) if *at == level => compressor,
                slot => &mut slot.insert((level, zstd::bulk::Compressor::new(i32::from(level)).ok()?)).1,
            }
        };
        self.out.clear();
        self.out.reserve(input.len());
        compressor.compress_to_buffer(input, &mut self.out).ok()
    }

    /// Decompresses `input` into `self.out`; it must give exactly `len` bytes.
    fn decompress(&mut self, input: &[u8], len: usize) -> Result<(), CryptoError> {
        let malformed = CryptoError::ChunkMalformed("its compressed stream does not decompress to the chunk's length");
        let decompressor = match &mut self.decompressor {
            Some(decompressor) => decompressor,
            slot => slot.insert(zstd::bulk::Decompressor::new().map_err(|_| malformed.clone())?),
        };
        self.out.clear();
        // The manifest's length bounds the output: a stream that would
        // decompress to more fails here instead of growing the buffer.
        self.out.reserve_exact(len);
        let written = decompressor.decompress_to_buffer(input, &mut self.out).map_err(|_| malformed.clone())?;
        if written != len {
            return Err(malformed);
        }
        Ok(())
    }
}

/// Runs `f` with one of the process's [`Scratch`]es, waiting for one if all
/// are in use. There are as many as cores: compressing is CPU-bound, so more
/// at once would not be faster, and each holds a zstd context (a few MiB at
/// level 3, over 100 MiB at level 19) and a chunk-sized buffer. A push to
/// peers runs 16 workers; they share these instead of holding 16 contexts.
fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    static POOL: OnceLock<Pool> = OnceLock::new();
    let pool = POOL.get_or_init(|| Pool {
        free: Mutex::new((Vec::new(), 0)),
        returned: Condvar::new(),
        limit: std::thread::available_parallelism().map_or(2, |n| n.get()),
    });
    let mut lent = Lent { scratch: Some(pool.take()), pool };
    f(lent.scratch.as_mut().expect("held until dropped"))
}

/// The [`Scratch`]es, and how many exist.
struct Pool {
    /// The free ones, and how many were made.
    free: Mutex<(Vec<Scratch>, usize)>,
    returned: Condvar,
    limit: usize,
}

impl Pool {
    fn take(&self) -> Scratch {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(scratch) = free.0.pop() {
                return scratch;
            }
            if free.1 < self.limit {
                free.1 += 1;
                return Scratch::default();
            }
            free = self.returned.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A [`Scratch`] on loan; it goes back to the pool even if its user panics.
struct Lent<'a> {
    scratch: Option<Scratch>,
    pool: &'a Pool,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(scratch) = self.scratch.take() {
            self.pool.free.lock().unwrap_or_else(PoisonError::into_inner).0.push(scratch);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::{OwnerKeys, open_chunk, seal_chunk};

    fn text(len: usize) -> Vec<u8> {
        let words = ["chunk ", "peer ", "store ", "seal ", "manifest ", "owner\n"];
        words.iter().cycle().flat_map(|w| w.bytes()).take(len).collect()
    }

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[seed]);
        let mut reader = hasher.finalize_xof();
        out.resize(len, 0);
        reader.fill(&mut out);
        out
    }

    fn round_trip(sealing: Sealing, plaintext: &[u8]) -> (ChunkId, usize) {
        let key = OwnerKeys::derive(&[4; 32]).chunk_key(plaintext);
        let mut buf = plaintext.to_vec();
        let id = sealing.seal(&key, &mut buf);
        assert_eq!(ChunkId::of(&buf), id);
        let sealed_len = buf.len();
        assert!(sealed_len <= max_sealed_len(plaintext.len() as u32) as usize);
        sealing.open(&key, plaintext.len() as u32, &mut buf).unwrap();
        assert_eq!(buf, plaintext);
        (id, sealed_len)
    }

    #[test]
    fn text_is_compressed_and_noise_is_stored_raw_padded() {
        let level = Sealing::current(DEFAULT_LEVEL);
        let (_, text_len) = round_trip(level, &text(1 << 20));
        assert!(text_len < 1 << 14, "1 MiB of repeated words sealed to {text_len} bytes");
        let (_, noise_len) = round_trip(level, &noise(1 << 20, 1));
        assert_eq!(noise_len as u64, padme((1 << 20) + 5) + TAG_LEN as u64);
        // Level 0 never compresses.
        let (_, off_len) = round_trip(Sealing::current(0), &text(1 << 20));
        assert_eq!(off_len, noise_len);
    }

    #[test]
    fn sealing_is_deterministic_and_formats_have_their_own_ids_and_tags() {
        let plaintext = text(300_000);
        let (a, _) = round_trip(Sealing::current(3), &plaintext);
        let (b, _) = round_trip(Sealing::current(3), &plaintext);
        let (v1, _) = round_trip(Sealing::V1, &plaintext);
        assert_eq!(a, b);
        assert_ne!(a, v1);
        let key = ChunkKey([9; 32]);
        assert_ne!(Sealing::V1.lookup_tag(&key), Sealing::current(3).lookup_tag(&key));
        assert_eq!(Sealing::current(3).lookup_tag(&key), Sealing::current(1).lookup_tag(&key));
    }

    #[test]
    fn v1_is_the_format_before_compression() {
        let key = ChunkKey([5; 32]);
        let mut old = b"written by an older p2pfs".to_vec();
        let id = seal_chunk(&key, &mut old);
        let mut buf = b"written by an older p2pfs".to_vec();
        assert_eq!(Sealing::V1.seal(&key, &mut buf), id);
        Sealing::V1.open(&key, 25, &mut buf).unwrap();
        open_chunk(&key, &mut old).unwrap();
        assert_eq!(buf, old);
    }

    #[test]
    fn a_wrong_length_or_format_fails_to_open() {
        let plaintext = text(200_000);
        let key = ChunkKey([6; 32]);
        let mut sealed = plaintext.clone();
        Sealing::current(3).seal(&key, &mut sealed);
        let mut buf = sealed.clone();
        assert!(matches!(Sealing::current(3).open(&key, 199_999, &mut buf), Err(CryptoError::ChunkMalformed(_))));
        let mut buf = sealed.clone();
        assert_eq!(Sealing::V1.open(&key, 200_000, &mut buf), Err(CryptoError::ChunkAuth));
        let mut buf = sealed;
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(Sealing::current(3).open(&key, 200_000, &mut buf), Err(CryptoError::ChunkAuth));
    }

    #[test]
    fn padme_keeps_few_bits_and_little_overhead() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(1 << 20), 1 << 20);
        assert_eq!(padme((1 << 20) + 1), (1 << 20) + (1 << 15));
        for len in [2u64, 3, 100, 1000, 65_537, 1 << 24, (1 << 24) + 5] {
            let padded = padme(len);
            assert!(padded >= len && padded - len <= len / 8 + 1, "{len} -> {padded}");
            assert_eq!(padme(padded), padded, "padding is idempotent");
        }
        assert_eq!(MAX_SEALED_LEN, (1 << 24) + (1 << 19) + TAG_LEN as u32);
    }

    proptest! {
        /// What is inside the seal comes from the owner alone, but opening
        /// still checks it: no layout, however wrong, panics or writes past
        /// the length the manifest gives.
        #[test]
        fn unframing_arbitrary_bytes_never_panics(inner in proptest::collection::vec(any::<u8>(), 0..2048), len in 0usize..4096) {
            let mut buf = inner;
            if let Ok(()) = with_scratch(|scratch| unframe(len, &mut buf, scratch)) {
                prop_assert!(buf.len() <= len.max(2048));
            }
        }

        #[test]
        fn chunks_round_trip(len in 1usize..400_000, seed in any::<u8>(), compressible in any::<bool>(), level in -2i8..6) {
            let plaintext = if compressible { text(len) } else { noise(len, seed) };
            round_trip(Sealing::current(level), &plaintext);
            round_trip(Sealing::V1, &plaintext);
        }
    }
}
