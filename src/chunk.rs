//! Streaming content-defined chunking (FastCDC 2020) with keyed boundaries.
//!
//! The cut points are exactly those of the `fastcdc` crate's `v2020::cut_gear`
//! (its masks, its two-bytes-at-a-time scan; a test holds the two equal);
//! what this module adds is the key and a scan that can resume as bytes
//! arrive. The 256-entry gear table is derived from the owner's chunker
//! subkey (a BLAKE3 XOF stream), so chunk boundaries, and hence chunk sizes,
//! depend on a secret: a storage peer cannot recognise a known file by the
//! sizes of its chunks. [`Chunker`] reads from any [`Read`] straight into the
//! buffer the caller owns, a step at a time, and scans each step as it lands;
//! only the bytes read past a cut (less than one step) are copied, to start
//! the next chunk. Memory stays O(max chunk size) whatever the input length.
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
        let remaining = data.len().min(self.config.max_size as usize);
        if remaining <= self.config.min_size as usize {
            return remaining;
        }
        let mut scan = Scan::start(self.config);
        self.resume(&data[..remaining], &mut scan).unwrap_or(remaining)
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

    /// Continues `scan` over the byte pairs wholly inside `chunk` (the
    /// chunk's bytes so far, at most `max_size`); returns the cut, if one is
    /// there. The gear hash starts at `min_size`, and a cut needs the hash's
    /// `mask_s` bits clear before `avg_size` and its `mask_l` bits after
    /// (normalized chunking, level 1). FastCDC tests the first byte of each
    /// pair with the hash and mask shifted left by one, so this does too.
    fn resume(&self, chunk: &[u8], scan: &mut Scan) -> Option<usize> {
        let gear: &[u64; 256] = &self.gear.gear;
        let gear_ls: &[u64; 256] = &self.gear.gear_ls;
        let pairs = chunk.len() / 2;
        let center = (self.config.avg_size as usize / 2).min(pairs);
        let Scan { mut pair, mut hash } = *scan;
        for (end, mask) in [(center, self.mask_s), (pairs, self.mask_l)] {
            let mask_ls = mask << 1;
            while pair < end {
                let a = 2 * pair;
                hash = (hash << 2).wrapping_add(gear_ls[usize::from(chunk[a])]);
                if hash & mask_ls == 0 {
                    return Some(a);
                }
                hash = hash.wrapping_add(gear[usize::from(chunk[a + 1])]);
                if hash & mask == 0 {
                    return Some(a + 1);
                }
                pair += 1;
            }
        }
        *scan = Scan { pair, hash };
        None
    }
}

/// Where a cut search stands in a chunk: the next byte pair to hash, and the
/// gear hash so far.
#[derive(Debug, Clone, Copy)]
struct Scan {
    pair: usize,
    hash: u64,
}

impl Scan {
    /// Before the first pair that can end a chunk (at `min_size`, which is even).
    fn start(config: ChunkerConfig) -> Self {
        Scan { pair: config.min_size as usize / 2, hash: 0 }
    }
}

/// Bytes read per call once a chunk has its minimum size. A cut falls inside
/// the last step, so what is carried over to the next chunk is under a step.
const READ_STEP: usize = 64 * 1024;

/// Splits a stream into chunks.
pub struct Chunker<R> {
    reader: R,
    cuts: CutPoints,
    /// Bytes read past the last cut: the start of the next chunk.
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// A chunker reading from `reader`.
    pub fn new(reader: R, cuts: CutPoints) -> Self {
        Self { reader, cuts, carry: Vec::with_capacity(READ_STEP), eof: false }
    }

    /// Replaces the contents of `out` with the next chunk and returns its
    /// length, or returns `Ok(None)` at the end of the input. The input is
    /// read straight into `out`, which grows to at most `max_size` bytes.
    pub fn next_chunk(&mut self, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let config = self.cuts.config;
        let (min, max) = (config.min_size as usize, config.max_size as usize);
        out.clear();
        out.extend_from_slice(&self.carry);
        self.carry.clear();
        let mut scan = Scan::start(config);
        loop {
            if out.len() > min
                && let Some(cut) = self.cuts.resume(out, &mut scan)
            {
                self.carry.extend_from_slice(&out[cut..]);
                out.truncate(cut);
                return Ok(Some(cut));
            }
            // No cut yet; with nothing more to come, the chunk is what is here.
            if self.eof || out.len() == max {
                return Ok((!out.is_empty()).then_some(out.len()));
            }
            let step = if out.len() < min { min + READ_STEP - out.len() } else { READ_STEP };
            self.read_into(out, step.min(max - out.len()))?;
        }
    }

    /// Appends up to `want` bytes of input to `out`, fewer only at the end.
    fn read_into(&mut self, out: &mut Vec<u8>, want: usize) -> io::Result<()> {
        let start = out.len();
        out.resize(start + want, 0);
        let mut filled = start;
        let result = loop {
            if filled == out.len() {
                break Ok(());
            }
            match self.reader.read(&mut out[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break Ok(());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        out.truncate(filled);
        result
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

    #[test]
    fn default_sized_chunks_stream_as_they_cut_in_memory() {
        // Chunks of ~1 MiB are read a step at a time, so cuts land mid-step and
        // the rest of a step starts the next chunk.
        let cuts = CutPoints::new(ChunkerConfig::default(), GearTable::from_seed(&[5; 32])).unwrap();
        let data = pseudo_random(12 << 20, 11);
        let whole = cuts.lengths(&data);
        assert!(whole.len() > 6, "{} chunks", whole.len());
        for step in [7_777, 1 << 20, usize::MAX] {
            assert_eq!(stream_lengths(&data, step, cuts.clone()), whole, "reads of at most {step} bytes");
        }
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
        fn cuts_are_exactly_fastcdc_2020s(len in 0usize..100_000, seed in any::<u64>(), config in 0usize..3) {
            let config = [
                small_config(),
                ChunkerConfig { min_size: 64, avg_size: 256, max_size: 1024 },
                ChunkerConfig { min_size: 2048, avg_size: 8192, max_size: 65536 },
            ][config];
            let gear = GearTable::from_seed(&seed.to_le_bytes().repeat(4).try_into().unwrap());
            let cuts = CutPoints::new(config, gear.clone()).unwrap();
            let data = pseudo_random(len, seed);
            let mut theirs = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let (_, cut) = v2020::cut_gear(
                    rest,
                    config.min_size as usize,
                    config.avg_size as usize,
                    config.max_size as usize,
                    cuts.mask_s,
                    cuts.mask_l,
                    cuts.mask_s << 1,
                    cuts.mask_l << 1,
                    &gear.gear[..],
                    &gear.gear_ls[..],
                );
                theirs.push(cut);
                rest = &rest[cut..];
            }
            prop_assert_eq!(cuts.lengths(&data), theirs);
        }

        #[test]
        fn an_edit_moves_only_nearby_boundaries(seed in any::<u64>(), at in 0usize..200_000, byte in any::<u8>()) {
            check_an_edit_moves_only_nearby_boundaries(seed, at, byte);
        }
    }
}
