//! Erasure coding of sealed chunks: K data shards plus M parity shards
//! (Reed-Solomon over GF(2^16), `reed-solomon-simd`), any K of which give
//! the chunk back (docs/FORMAT.md, "Erasure-coded chunks").
//!
//! A chunk's ciphertext of `sealed_len` bytes is cut into K data shards of
//! [`Shape::shard_len`] bytes each (the last one padded with zeros; the
//! length is even, as the codec needs); the M parity shards have the same
//! length. Each shard is a blob addressed by the BLAKE3 of its bytes, so a
//! storage node keeps and verifies it exactly as a chunk. Encoding is
//! deterministic: the same ciphertext always gives the same shards, and so
//! the same shard ids (dedup works on shards as on chunks).
//!
//! Pure: no I/O. The caller verifies what it decodes (the rebuilt
//! ciphertext must hash to its `ChunkId`).

use std::fmt;
use std::str::FromStr;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use serde::{Deserialize, Serialize};

/// Most shards (data + parity) one chunk is cut into: the manifest's limit.
pub const MAX_SHARDS: usize = crate::manifest::MAX_SHARDS;

/// The shortest shard: a storage node keeps no blob shorter than a sealed
/// chunk can be (its 16-byte tag), so a small chunk's shards are padded up
/// to this.
pub const MIN_SHARD_LEN: usize = 16;

/// What an erasure-coding operation refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErasureError {
    /// K or M is zero, or K + M is over [`MAX_SHARDS`].
    #[error(
        "{data}+{parity} is not a usable erasure code: give K+M with K ≥ 1 data and M ≥ 1 parity shards, \
         K + M ≤ {MAX_SHARDS} (e.g. 4+2)"
    )]
    Shape {
        /// Data shards asked for.
        data: usize,
        /// Parity shards asked for.
        parity: usize,
    },
    /// A `K+M` argument is not two numbers joined by `+`.
    #[error("'{0}' is not an erasure code: write it as K+M, e.g. 4+2 (4 data and 2 parity shards)")]
    Syntax(String),
    /// Fewer than K distinct shards were given to decode.
    #[error("{got} distinct shards of the {data} needed to rebuild the chunk")]
    TooFewShards {
        /// Distinct shards given.
        got: usize,
        /// Shards needed (K).
        data: usize,
    },
    /// A shard's index or length does not fit the stripe.
    #[error("shard {index} does not fit a {data}+{parity} stripe of {shard_len}-byte shards")]
    BadShard {
        /// Its index.
        index: usize,
        /// K.
        data: usize,
        /// M.
        parity: usize,
        /// The stripe's shard length.
        shard_len: usize,
    },
    /// The sealed length is zero, or is over what K shards can hold.
    #[error("a sealed length of {0} bytes cannot be erasure-coded")]
    Length(usize),
    /// The codec refused (an invariant of this module broke).
    #[error("the Reed-Solomon codec failed: {0}")]
    Codec(String),
}

/// An erasure code: K data shards and M parity shards per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    data: u8,
    parity: u8,
}

impl Shape {
    /// K data and M parity shards; K ≥ 1, M ≥ 1, K + M ≤ [`MAX_SHARDS`].
    pub fn new(data: usize, parity: usize) -> Result<Self, ErasureError> {
        if data == 0 || parity == 0 || data + parity > MAX_SHARDS {
            return Err(ErasureError::Shape { data, parity });
        }
        // Both fit: each is at most MAX_SHARDS (32).
        Ok(Self { data: data as u8, parity: parity as u8 })
    }

    /// K: the shards any rebuild needs.
    pub fn data(&self) -> usize {
        usize::from(self.data)
    }

    /// M: the shards that may be lost.
    pub fn parity(&self) -> usize {
        usize::from(self.parity)
    }

    /// K + M: shards per chunk, each on its own node.
    pub fn total(&self) -> usize {
        self.data() + self.parity()
    }

    /// Bytes stored per byte of ciphertext, (K + M) / K (before the padding of the last shard).
    pub fn overhead(&self) -> f64 {
        self.total() as f64 / self.data() as f64
    }

    /// The length of each shard of a chunk whose ciphertext is `sealed_len`
    /// bytes: `sealed_len / K` rounded up, then up to an even number, and
    /// at least [`MIN_SHARD_LEN`].
    pub fn shard_len(&self, sealed_len: usize) -> usize {
        let len = sealed_len.div_ceil(self.data()).max(MIN_SHARD_LEN);
        len + (len & 1)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.data, self.parity)
    }
}

impl FromStr for Shape {
    type Err = ErasureError;

    /// Reads `K+M`, e.g. `4+2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ErasureError::Syntax(s.to_owned());
        let (k, m) = s.trim().split_once('+').ok_or_else(syntax)?;
        let k: usize = k.trim().parse().map_err(|_| syntax())?;
        let m: usize = m.trim().parse().map_err(|_| syntax())?;
        Shape::new(k, m)
    }
}

fn codec(e: reed_solomon_simd::Error) -> ErasureError {
    ErasureError::Codec(e.to_string())
}

/// Cuts `ciphertext` into K data and M parity shards, in shard order (data
/// first), each [`Shape::shard_len`] bytes long.
pub fn encode(shape: Shape, ciphertext: &[u8]) -> Result<Vec<Vec<u8>>, ErasureError> {
    if ciphertext.is_empty() {
        return Err(ErasureError::Length(0));
    }
    let shard_len = shape.shard_len(ciphertext.len());
    let mut shards: Vec<Vec<u8>> = (0..shape.data())
        .map(|i| {
            let start = (i * shard_len).min(ciphertext.len());
            let end = ((i + 1) * shard_len).min(ciphertext.len());
            let mut shard = Vec::with_capacity(shard_len);
            shard.extend_from_slice(&ciphertext[start..end]);
            shard.resize(shard_len, 0);
            shard
        })
        .collect();
    let mut encoder = ReedSolomonEncoder::new(shape.data(), shape.parity(), shard_len).map_err(codec)?;
    for shard in &shards {
        encoder.add_original_shard(shard).map_err(codec)?;
    }
    let result = encoder.encode().map_err(codec)?;
    shards.extend(result.recovery_iter().map(<[u8]>::to_vec));
    Ok(shards)
}

/// Rebuilds the ciphertext of `sealed_len` bytes from any K distinct
/// shards (`(index, bytes)`, index in `0..K+M`; more are ignored). The
/// caller checks the result against the chunk's id.
pub fn decode(shape: Shape, sealed_len: usize, shards: &[(usize, &[u8])]) -> Result<Vec<u8>, ErasureError> {
    let mut out = Vec::new();
    decode_into(shape, sealed_len, shards, &mut out)?;
    Ok(out)
}

/// [`decode`] into `out` (cleared first), so a caller can reuse one buffer.
pub fn decode_into(
    shape: Shape,
    sealed_len: usize,
    shards: &[(usize, &[u8])],
    out: &mut Vec<u8>,
) -> Result<(), ErasureError> {
    out.clear();
    let shard_len = shape.shard_len(sealed_len);
    if sealed_len == 0 || sealed_len > shard_len * shape.data() {
        return Err(ErasureError::Length(sealed_len));
    }
    let mut have: Vec<Option<&[u8]>> = vec![None; shape.total()];
    for &(index, bytes) in shards {
        if index >= shape.total() || bytes.len() != shard_len {
            return Err(ErasureError::BadShard { index, data: shape.data(), parity: shape.parity(), shard_len });
        }
        have[index].get_or_insert(bytes);
    }
    let got = have.iter().flatten().count();
    if got < shape.data() {
        return Err(ErasureError::TooFewShards { got, data: shape.data() });
    }
    out.reserve(shard_len * shape.data());
    if have[..shape.data()].iter().all(Option::is_some) {
        for shard in have[..shape.data()].iter().flatten() {
            out.extend_from_slice(shard);
        }
    } else {
        let mut decoder = ReedSolomonDecoder::new(shape.data(), shape.parity(), shard_len).map_err(codec)?;
        // Exactly K shards: the decoder needs no more.
        let mut given = 0;
        for (index, shard) in have.iter().enumerate() {
            let Some(shard) = shard else { continue };
            if given == shape.data() {
                break;
            }
            given += 1;
            if index < shape.data() {
                decoder.add_original_shard(index, shard).map_err(codec)?;
            } else {
                decoder.add_recovery_shard(index - shape.data(), shard).map_err(codec)?;
            }
        }
        let result = decoder.decode().map_err(codec)?;
        for (index, shard) in have[..shape.data()].iter().enumerate() {
            match shard {
                Some(shard) => out.extend_from_slice(shard),
                None => out.extend_from_slice(
                    result
                        .restored_original(index)
                        .ok_or_else(|| ErasureError::Codec(format!("data shard {index} was not restored")))?,
                ),
            }
        }
    }
    out.truncate(sealed_len);
    Ok(())
}

/// Rebuilds shard `wanted` of a stripe from any K others: decode, then
/// encode again. The caller checks the result against the shard's id.
pub fn rebuild(
    shape: Shape,
    sealed_len: usize,
    shards: &[(usize, &[u8])],
    wanted: usize,
) -> Result<Vec<u8>, ErasureError> {
    if wanted >= shape.total() {
        return Err(ErasureError::BadShard {
            index: wanted,
            data: shape.data(),
            parity: shape.parity(),
            shard_len: shape.shard_len(sealed_len),
        });
    }
    let ciphertext = decode(shape, sealed_len, shards)?;
    let mut all = encode(shape, &ciphertext)?;
    Ok(all.swap_remove(wanted))
}

/// Rebuilds shard `wanted` of a stripe from any K others, knowing only
/// the shards (not the chunk's sealed length): the data shards are decoded
/// as they were cut, padding included, and encoded again. What a storage
/// node's repair uses; the caller checks the result against the shard's id.
pub fn restore(shape: Shape, shards: &[(usize, &[u8])], wanted: usize) -> Result<Vec<u8>, ErasureError> {
    let shard_len = shards.first().map_or(0, |(_, s)| s.len());
    let longest = shape.shard_len(crate::sealing::MAX_SEALED_LEN as usize);
    if shard_len < MIN_SHARD_LEN || shard_len > longest || !shard_len.is_multiple_of(2) || wanted >= shape.total() {
        return Err(ErasureError::BadShard { index: wanted, data: shape.data(), parity: shape.parity(), shard_len });
    }
    // The padded data shards are a "ciphertext" of K whole shards.
    rebuild(shape, shard_len * shape.data(), shards, wanted)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
    }

    /// Every subset of `n` items with `k` members, as index lists.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n)
            .filter(|mask| mask.count_ones() as usize == k)
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn shapes_parse_and_refuse_what_cannot_work() {
        assert_eq!("4+2".parse::<Shape>().unwrap(), Shape::new(4, 2).unwrap());
        assert_eq!(" 10 + 4 ".parse::<Shape>().unwrap().to_string(), "10+4");
        for bad in ["4", "4+", "+2", "a+b", "4-2", "4+2+1"] {
            assert!(matches!(bad.parse::<Shape>(), Err(ErasureError::Syntax(_))), "{bad}");
        }
        for bad in ["0+2", "4+0", "30+3"] {
            assert!(matches!(bad.parse::<Shape>(), Err(ErasureError::Shape { .. })), "{bad}");
        }
        assert!(Shape::new(31, 1).is_ok());
        assert_eq!(Shape::new(4, 2).unwrap().overhead(), 1.5);
    }

    #[test]
    fn shard_lengths_are_even_and_hold_the_ciphertext() {
        let shape = Shape::new(4, 2).unwrap();
        assert_eq!(shape.shard_len(1), MIN_SHARD_LEN);
        assert_eq!(shape.shard_len(64), MIN_SHARD_LEN);
        assert_eq!(shape.shard_len(65), 18);
        assert_eq!(shape.shard_len(16 * 1024 * 1024 + 16), 4 * 1024 * 1024 + 4);
        for len in 1..400 {
            let shard = shape.shard_len(len);
            assert!(shard.is_multiple_of(2) && shard >= MIN_SHARD_LEN && shard * 4 >= len, "{len}: {shard}");
            assert!(shard == MIN_SHARD_LEN || (shard - 2) * 4 < len, "{len}: {shard} is the shortest that holds it");
        }
    }

    #[test]
    fn every_k_subset_of_a_4_plus_2_stripe_gives_the_chunk_back() {
        let shape = Shape::new(4, 2).unwrap();
        for len in [1, 7, 8, 1000, 4099] {
            let ciphertext = bytes(len, len as u8);
            let shards = encode(shape, &ciphertext).unwrap();
            assert_eq!(shards.len(), 6);
            assert!(shards.iter().all(|s| s.len() == shape.shard_len(len)));
            for subset in subsets(6, 4) {
                let given: Vec<(usize, &[u8])> = subset.iter().map(|&i| (i, shards[i].as_slice())).collect();
                assert_eq!(decode(shape, len, &given).unwrap(), ciphertext, "{len} bytes from {subset:?}");
                for lost in (0..6).filter(|i| !subset.contains(i)) {
                    assert_eq!(rebuild(shape, len, &given, lost).unwrap(), shards[lost], "shard {lost}");
                    assert_eq!(restore(shape, &given, lost).unwrap(), shards[lost], "shard {lost}, from shards alone");
                }
            }
        }
    }

    #[test]
    fn encoding_is_deterministic() {
        let shape = Shape::new(3, 2).unwrap();
        let ciphertext = bytes(5000, 9);
        assert_eq!(encode(shape, &ciphertext).unwrap(), encode(shape, &ciphertext).unwrap());
    }

    #[test]
    fn too_few_or_misfit_shards_are_refused() {
        let shape = Shape::new(4, 2).unwrap();
        let ciphertext = bytes(1000, 1);
        let shards = encode(shape, &ciphertext).unwrap();
        let three: Vec<(usize, &[u8])> = (0..3).map(|i| (i, shards[i].as_slice())).collect();
        assert_eq!(decode(shape, 1000, &three), Err(ErasureError::TooFewShards { got: 3, data: 4 }));
        let repeated: Vec<(usize, &[u8])> = [0, 0, 1, 2].iter().map(|&i| (i, shards[i].as_slice())).collect();
        assert!(matches!(decode(shape, 1000, &repeated), Err(ErasureError::TooFewShards { got: 3, .. })));
        let out_of_range = [(6, shards[0].as_slice())];
        assert!(matches!(decode(shape, 1000, &out_of_range), Err(ErasureError::BadShard { index: 6, .. })));
        let short = [(0, &shards[0][1..])];
        assert!(matches!(decode(shape, 1000, &short), Err(ErasureError::BadShard { index: 0, .. })));
        assert_eq!(decode(shape, 0, &three), Err(ErasureError::Length(0)));
        assert!(encode(shape, &[]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_k_shards_give_the_chunk_back(
            data in 1usize..8,
            parity in 1usize..5,
            ciphertext in proptest::collection::vec(any::<u8>(), 1..3000),
            pick in any::<u64>(),
        ) {
            let shape = Shape::new(data, parity).unwrap();
            let shards = encode(shape, &ciphertext).unwrap();
            prop_assert_eq!(shards.len(), data + parity);
            // A pseudo-random K-subset, in a pseudo-random order.
            let mut order: Vec<usize> = (0..data + parity).collect();
            let mut state = pick;
            for i in (1..order.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let given: Vec<(usize, &[u8])> = order[..data].iter().map(|&i| (i, shards[i].as_slice())).collect();
            prop_assert_eq!(decode(shape, ciphertext.len(), &given).unwrap(), ciphertext.clone());
            let lost = order[data..].first().copied().unwrap_or(0);
            prop_assert_eq!(&rebuild(shape, ciphertext.len(), &given, lost).unwrap(), &shards[lost]);
        }
    }
}
