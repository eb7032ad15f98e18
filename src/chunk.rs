//! Streaming content-defined chunking (FastCDC 2020) with keyed boundaries.
//!
//! The cut-point scan is the `fastcdc` crate's; what this module adds is the
//! key and the streaming. The 256-entry gear table is derived from the owner's
//! chunker subkey (a BLAKE3 XOF stream), so chunk boundaries, and hence chunk
//! sizes, depend on a secret: a storage peer cannot recognise a known file by
//! the sizes of its chunks. [`Chunker`] reads from any [`Read`] into one
//! reusable buffer and hands out chunks by copying them into a buffer the
//! caller owns, so memory stays O(max chunk size) whatever the input length.
//!
//! Boundaries depend only on the bytes and the key, never on how the reader
//! splits its reads. This module does no I/O of its own.

use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Serialize};

/// Bounds of chunk sizes, in bytes. The last chunk of a file may be shorter
/// than `min_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    /// No chunk but the last is shorter.
    pub min_size: u32,
    /// The size chunks tend towards.
    pub avg_size: u32,
    /// No chunk is longer.
    pub max_size: u32,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

/// The largest `max_size` accepted: 16 MiB (FastCDC 2020's own limit).
pub const MAX_CHUNK_SIZE: u32 = v2020::MAXIMUM_MAX as u32;

/// A chunker configuration outside what FastCDC supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid chunk sizes min {min} / avg {avg} / max {max}: need {min_lo} <= min <= {min_hi}, \
     {avg_lo} <= avg <= {avg_hi}, {max_lo} <= max <= {max_hi}, min <= avg <= max, all even"
)]
pub struct InvalidChunkerConfig {
    min: u32,
    avg: u32,
    max: u32,
    min_lo: usize,
    min_hi: usize,
    avg_lo: usize,
    avg_hi: usize,
    max_lo: usize,
    max_hi: usize,
}

impl ChunkerConfig {
    /// Checks the sizes against FastCDC's limits.
    pub fn validate(&self) -> Result<(), InvalidChunkerConfig> {
        let (min, avg, max) = (self.min_size as usize, self.avg_size as usize, self.max_size as usize);
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && [min, avg, max].iter().all(|n| n % 2 == 0);
        if ok {
            Ok(())
        } else {
            Err(InvalidChunkerConfig {
                min: self.min_size,
                avg: self.avg_size,
                max: self.max_size,
                min_lo: v2020::MINIMUM_MIN,
                min_hi: v2020::MINIMUM_MAX,
                avg_lo: v2020::AVERAGE_MIN,
                avg_hi: v2020::AVERAGE_MAX,
                max_lo: v2020::MAXIMUM_MIN,
                max_hi: v2020::MAXIMUM_MAX,
            })
        }
    }
}

/// The keyed gear tables that decide where chunks end.
#[derive(Clone)]
pub struct GearTable {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl GearTable {
    /// Derives the table from a 32-byte secret (the owner's chunker subkey).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut stream = blake3::Hasher::new_keyed(seed);
        stream.update(b"p2pfs gear table v1");
        let mut bytes = [0u8; 256 * 8];
        stream.finalize_xof().fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (entry, word) in gear.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            *entry = u64::from_le_bytes(le);
        }
        let mut gear_ls = Box::new([0u64; 256]);
        for (shifted, entry) in gear_ls.iter_mut().zip(gear.iter()) {
            *shifted = entry << 1;
        }
        Self { gear, gear_ls }
    }
}

/// Finds chunk ends in memory; the core that [`Chunker`] streams.
#[derive(Clone)]
pub struct CutPoints {
    config: ChunkerConfig,
    gear: GearTable,
    mask_s: u64,
    mask_l: u64,
}

impl CutPoints {
    /// A cut finder for `config` (which must be valid) and `gear`.
    pub fn new(config: ChunkerConfig, gear: GearTable) -> Result<Self, InvalidChunkerConfig> {
        config.validate()?;
        let (mask_s, mask_l) = v2020::select_masks(config.avg_size as usize, Normalization::Level1);
        Ok(Self { config, gear, mask_s, mask_l })
    }

    /// The configuration in force.
    pub fn config(&self) -> ChunkerConfig {
        self.config
    }

    /// Length of the chunk that starts at `data[0]`. `data` must hold at least
    /// `max_size` bytes unless it is the end of the input.
    pub fn next_len(&self, data: &[u8]) -> usize {
        let (_, len) = v2020::cut_gear(
            data,
            self.config.min_size as usize,
            self.config.avg_size as usize,
            self.config.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear.gear[..],
            &self.gear.gear_ls[..],
        );
        len
    }

    /// Chunk lengths of a whole input held in memory.
    pub fn lengths(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let len = self.next_len(data);
            out.push(len);
            data = &data[len..];
        }
        out
    }
}

/// Splits a stream into chunks.
pub struct Chunker<R> {
    reader: R,
    cuts: CutPoints,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// A chunker reading from `reader`. Its buffer is four times the maximum
    /// chunk size, so each refill moves at most a quarter of it.
    pub fn new(reader: R, cuts: CutPoints) -> Self {
        let capacity = 4 * cuts.config.max_size as usize;
        Self { reader, cuts, buf: vec![0u8; capacity].into_boxed_slice(), start: 0, end: 0, eof: false }
    }

    /// Replaces the contents of `out` with the next chunk and returns its
    /// length, or returns `Ok(None)` at the end of the input.
    pub fn next_chunk(&mut self, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
        self.fill()?;
        let data = &self.buf[self.start..self.end];
        if data.is_empty() {
            return Ok(None);
        }
        let len = self.cuts.next_len(data);
        out.clear();
        out.extend_from_slice(&data[..len]);
        self.start += len;
        Ok(Some(len))
    }

    /// Buffers at least `max_size` bytes, or everything up to the end.
    fn fill(&mut self) -> io::Result<()> {
        let want = self.cuts.config.max_size as usize;
        if self.eof || self.end - self.start >= want {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    fn small_config() -> ChunkerConfig {
        ChunkerConfig { min_size: 256, avg_size: 1024, max_size: 4096 }
    }

    fn cuts(seed: u8) -> CutPoints {
        CutPoints::new(small_config(), GearTable::from_seed(&[seed; 32])).unwrap()
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut stream = blake3::Hasher::new();
        stream.update(&seed.to_le_bytes());
        stream.finalize_xof().fill(&mut out);
        out
    }

    /// A reader that returns at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn stream_lengths(data: &[u8], step: usize, cuts: CutPoints) -> Vec<usize> {
        let mut chunker = Chunker::new(Trickle { data, step }, cuts);
        let mut out = Vec::new();
        let mut lengths = Vec::new();
        let mut offset = 0;
        while let Some(len) = chunker.next_chunk(&mut out).unwrap() {
            assert_eq!(out, &data[offset..offset + len]);
            offset += len;
            lengths.push(len);
        }
        lengths
    }

    #[test]
    fn default_config_is_valid_and_documented() {
        let config = ChunkerConfig::default();
        config.validate().unwrap();
        assert_eq!((config.min_size, config.avg_size, config.max_size), (256 << 10, 1 << 20, 4 << 20));
    }

    #[test]
    fn invalid_configs_are_refused() {
        for (min, avg, max) in [(0, 1024, 4096), (4096, 1024, 8192), (256, 1024, 32 << 20), (257, 1024, 4096)] {
            let config = ChunkerConfig { min_size: min, avg_size: avg, max_size: max };
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert_eq!(stream_lengths(&[], 7, cuts(1)), Vec::<usize>::new());
    }

    #[test]
    fn boundaries_depend_on_the_key() {
        let data = pseudo_random(256 * 1024, 9);
        assert_ne!(cuts(1).lengths(&data), cuts(2).lengths(&data));
    }

    /// Flips bits of one byte at `at` and checks that only the boundaries near
    /// it move.
    fn check_an_edit_moves_only_nearby_boundaries(seed: u64, at: usize, byte: u8) {
        let data = pseudo_random(400_000, seed);
        let mut edited = data.clone();
        edited[at] ^= byte | 1;
        let ends = |lengths: Vec<usize>| -> Vec<usize> {
            lengths
                .into_iter()
                .scan(0, |end, l| {
                    *end += l;
                    Some(*end)
                })
                .collect()
        };
        let before = ends(cuts(4).lengths(&data));
        let after = ends(cuts(4).lengths(&edited));
        // After the edit the boundaries realign, and once realigned they stay
        // identical to the end of the input.
        let first_common = after.iter().copied().filter(|&e| e > at).find(|e| before.contains(e));
        let first_common = first_common.expect("boundaries realign after an edit");
        let tail = |v: &[usize]| v.iter().copied().filter(|&e| e >= first_common).collect::<Vec<_>>();
        assert_eq!(tail(&before), tail(&after));
        assert!(first_common - at <= 8 * small_config().max_size as usize);
        // Boundaries before the edit are unchanged. FastCDC decides a cut with
        // the first byte of the next chunk in its hash, so a boundary at `at`
        // itself may move: only those strictly before it are fixed.
        let head = |v: &[usize]| v.iter().copied().filter(|&e| e < at).collect::<Vec<_>>();
        assert_eq!(head(&before), head(&after));
    }

    /// The case that showed the cut depends on the byte after it (CI, 2026-11).
    #[test]
    fn editing_the_first_byte_of_a_chunk_may_move_the_cut_before_it() {
        check_an_edit_moves_only_nearby_boundaries(2_316_084_751_511_310_926, 190_237, 0);
    }

    proptest! {
        // A fixed seed and no regression files: the same 64 cases every run,
        // so a test run cannot pass or fail by luck.
        #![proptest_config(ProptestConfig {
            cases: 64,
            rng_seed: RngSeed::Fixed(0x7032_7066_7363_6463),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn chunks_cover_the_input_exactly_whatever_the_read_size(
            len in 0usize..60_000, seed in any::<u64>(), step in 1usize..20_000,
        ) {
            let data = pseudo_random(len, seed);
            let whole = cuts(3).lengths(&data);
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            let config = small_config();
            for (i, &l) in whole.iter().enumerate() {
                prop_assert!(l <= config.max_size as usize);
                if i + 1 < whole.len() {
                    prop_assert!(l >= config.min_size as usize);
                }
            }
            prop_assert_eq!(stream_lengths(&data, step, cuts(3)), whole);
        }

        #[test]
        fn an_edit_moves_only_nearby_boundaries(seed in any::<u64>(), at in 0usize..200_000, byte in any::<u8>()) {
            check_an_edit_moves_only_nearby_boundaries(seed, at, byte);
        }
    }
}
