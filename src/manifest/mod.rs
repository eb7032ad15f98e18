//! Manifests: the encrypted list of one file version's chunks (docs/FORMAT.md).
//!
//! A [`Manifest`] is encoded with postcard, sealed into an envelope by
//! [`crate::crypto`], and addressed by the BLAKE3 of the envelope
//! ([`ManifestId`]). Decoding checks every length and sum before trusting it.
//! The per-owner version log lives in [`log`]. This module does no I/O.

pub mod log;

use serde::{Deserialize, Serialize};

use crate::chunk::MAX_CHUNK_SIZE;
use crate::crypto::ChunkKey;
use crate::crypto::{CryptoError, EnvelopeRandomness, FileKey, OwnerKeys, open_manifest_with_file_key};
use crate::id::{ChunkId, ManifestId};
use crate::sealing::{MAX_SEALED_LEN, Sealing};

/// Version of the manifest body layout written now. Version 1 (no sealing
/// field, chunks in chunk format v1, no erasure coding) still decodes.
pub const MANIFEST_VERSION: u8 = 2;
/// Most shards one chunk is cut into (data and parity together).
pub const MAX_SHARDS: usize = 32;
/// Longest file name a manifest records, in bytes.
pub const MAX_NAME_LEN: usize = 4096;
/// Most chunks one manifest lists: 256 Ki chunks, 256 GiB at the default
/// 1 MiB average chunk size (1 TiB with `avg_size = 4 MiB`). The bound keeps
/// a whole manifest, and its pin, inside one member's share of a node's
/// memory budget (docs/PROTOCOL.md, "Limits").
pub const MAX_CHUNKS: usize = 256 * 1024;
/// Largest manifest envelope, in bytes: one of [`MAX_CHUNKS`] chunks of the
/// largest size, with the longest name, fits (a test builds it). The store,
/// the wire (`MAX_MANIFEST_PAYLOAD`) and `Pin` all hold to this one limit.
pub const MAX_ENVELOPE_LEN: usize = 18 * 1024 * 1024;

/// One chunk of a file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Address of the ciphertext.
    pub id: ChunkId,
    /// Key that opens it.
    pub key: ChunkKey,
    /// Plaintext length in bytes.
    pub len: u32,
}

/// What one version of a file is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Body layout version, [`MANIFEST_VERSION`] (or 1, read from an older store).
    pub version: u8,
    /// The name the file was pushed under.
    pub name: String,
    /// Total plaintext size; equals the sum of the chunk lengths.
    pub size: u64,
    /// The chunks in file order.
    pub chunks: Vec<ChunkRef>,
    /// How the chunks are sealed, and so how they open.
    pub sealing: Sealing,
    /// How the chunks are spread over nodes, if erasure coded; `None`: each
    /// chunk is stored whole on R nodes.
    pub erasure: Option<Erasure>,
}

/// An erasure-coded manifest's layout: each chunk's sealed bytes cut into
/// `data` shards plus `parity` shards, any `data` of which rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// Data shards per chunk (K).
    pub data: u8,
    /// Parity shards per chunk (M).
    pub parity: u8,
    /// One stripe per chunk, in chunk order.
    pub stripes: Vec<Stripe>,
}

/// The shards of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    /// Length of the chunk's sealed bytes, which the shards are cut from.
    pub sealed_len: u32,
    /// The shards' ids (BLAKE3 of each shard's bytes): `data` data shards
    /// then `parity` parity shards.
    pub shards: Vec<ChunkId>,
}

/// Manifest body v1, as older stores hold it.
#[derive(Deserialize)]
struct BodyV1 {
    version: u8,
    name: String,
    size: u64,
    chunks: Vec<ChunkRef>,
}

/// Manifest body v2.
#[derive(Deserialize)]
struct BodyV2 {
    version: u8,
    name: String,
    size: u64,
    sealing: Sealing,
    erasure: Option<Erasure>,
    chunks: Vec<ChunkRef>,
}

/// [`BodyV1`] to encode, borrowing the manifest (postcard writes a `&str`
/// as a `String`, a slice as a `Vec`, `Option<&T>` as `Option<T>`).
#[derive(Serialize)]
struct BodyV1Out<'a> {
    version: u8,
    name: &'a str,
    size: u64,
    chunks: &'a [ChunkRef],
}

/// [`BodyV2`] to encode, borrowing the manifest.
#[derive(Serialize)]
struct BodyV2Out<'a> {
    version: u8,
    name: &'a str,
    size: u64,
    sealing: Sealing,
    erasure: Option<&'a Erasure>,
    chunks: &'a [ChunkRef],
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The envelope's bytes do not hash to the id it was fetched by.
    #[error("manifest {0} is corrupted: its bytes do not match its id")]
    IdMismatch(ManifestId),
    /// Decryption or authentication failed.
    #[error("manifest {id} cannot be opened")]
    Crypto {
        /// The manifest.
        id: ManifestId,
        /// What failed.
        source: CryptoError,
    },
    /// The decrypted body is not a valid manifest.
    #[error("manifest {id} is malformed: {reason}")]
    Malformed {
        /// The manifest.
        id: ManifestId,
        /// What is wrong with it.
        reason: String,
    },
}

impl Manifest {
    /// A manifest for `name` listing `chunks`, sealed as `sealing` says and
    /// stored whole (not erasure coded).
    pub fn new(name: String, sealing: Sealing, chunks: Vec<ChunkRef>) -> Self {
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        Self { version: MANIFEST_VERSION, name, size, chunks, sealing, erasure: None }
    }

    /// The body's bytes, in the layout its `version` names.
    pub fn encode(&self) -> Vec<u8> {
        let (version, name, size, chunks) = (self.version, self.name.as_str(), self.size, self.chunks.as_slice());
        let body = if version == 1 {
            postcard::to_stdvec(&BodyV1Out { version, name, size, chunks })
        } else {
            let (sealing, erasure) = (self.sealing, self.erasure.as_ref());
            postcard::to_stdvec(&BodyV2Out { version, name, size, sealing, erasure, chunks })
        };
        body.expect("a manifest always encodes: it has no maps or unsupported types")
    }

    /// Encodes and seals the manifest; returns its id and envelope.
    pub fn seal(&self, owner: &OwnerKeys, fresh: &EnvelopeRandomness) -> (ManifestId, Vec<u8>) {
        let envelope = owner.seal_manifest(&self.encode(), fresh);
        (ManifestId::of(&envelope), envelope)
    }

    /// The ids of the blobs nodes store for this version: each chunk's, or
    /// each chunk's shards' if erasure coded.
    pub fn blobs(&self) -> Vec<ChunkId> {
        match &self.erasure {
            None => self.chunks.iter().map(|c| c.id).collect(),
            Some(erasure) => erasure.stripes.iter().flat_map(|s| s.shards.iter().copied()).collect(),
        }
    }

    /// Checks `envelope` against `id`, opens it with the owner's keys and decodes it.
    pub fn open(owner: &OwnerKeys, id: ManifestId, envelope: &[u8]) -> Result<(FileKey, Self), ManifestError> {
        check_id(id, envelope)?;
        let (file_key, body) = owner.open_manifest(envelope).map_err(|source| ManifestError::Crypto { id, source })?;
        Ok((file_key, Self::decode(id, &body)?))
    }

    /// As [`Manifest::open`], for a holder of the version's file key only.
    pub fn open_with_file_key(file_key: &FileKey, id: ManifestId, envelope: &[u8]) -> Result<Self, ManifestError> {
        check_id(id, envelope)?;
        let body =
            open_manifest_with_file_key(file_key, envelope).map_err(|source| ManifestError::Crypto { id, source })?;
        Self::decode(id, &body)
    }

    /// Decodes a body, rejecting trailing bytes and inconsistent lengths.
    pub fn decode(id: ManifestId, body: &[u8]) -> Result<Self, ManifestError> {
        let malformed = |reason: String| ManifestError::Malformed { id, reason };
        let (manifest, rest) = match body.first() {
            Some(1) => {
                let (v1, rest): (BodyV1, _) = postcard::take_from_bytes(body).map_err(|e| malformed(e.to_string()))?;
                let BodyV1 { version, name, size, chunks } = v1;
                (Self { version, name, size, chunks, sealing: Sealing::V1, erasure: None }, rest)
            }
            Some(2) => {
                let (v2, rest): (BodyV2, _) = postcard::take_from_bytes(body).map_err(|e| malformed(e.to_string()))?;
                let BodyV2 { version, name, size, sealing, erasure, chunks } = v2;
                (Self { version, name, size, chunks, sealing, erasure }, rest)
            }
            Some(other) => {
                return Err(malformed(format!("unknown version {other}; this p2pfs reads 1 to {MANIFEST_VERSION}")));
            }
            None => return Err(malformed("empty body".into())),
        };
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        if manifest.name.len() > MAX_NAME_LEN {
            return Err(malformed(format!("name longer than {MAX_NAME_LEN} bytes")));
        }
        if manifest.chunks.len() > MAX_CHUNKS {
            return Err(malformed(format!("more than {MAX_CHUNKS} chunks")));
        }
        if let Some(bad) = manifest.chunks.iter().find(|c| c.len == 0 || c.len > MAX_CHUNK_SIZE) {
            return Err(malformed(format!("chunk {} has length {}", bad.id, bad.len)));
        }
        let sum: u64 = manifest.chunks.iter().map(|c| u64::from(c.len)).sum();
        if sum != manifest.size {
            return Err(malformed(format!("size {} but chunks add up to {sum}", manifest.size)));
        }
        if let Some(erasure) = &manifest.erasure {
            erasure.check(manifest.chunks.len()).map_err(malformed)?;
        }
        // A pull that resumes seals chunks again at this level: keep it to
        // the levels a home may configure, whose cost is known.
        if let Sealing::V2 { level } = manifest.sealing
            && !crate::sealing::LEVELS.contains(&level)
        {
            return Err(malformed(format!("zstd level {level} is outside {:?}", crate::sealing::LEVELS)));
        }
        Ok(manifest)
    }

    /// Byte offset of each chunk in the file.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |offset, chunk| {
            let at = *offset;
            *offset += u64::from(chunk.len);
            Some((at, chunk))
        })
    }
}

impl Erasure {
    /// Shards per chunk, K + M.
    pub fn width(&self) -> usize {
        usize::from(self.data) + usize::from(self.parity)
    }

    /// Checks the layout against the manifest's `chunks` count.
    fn check(&self, chunks: usize) -> Result<(), String> {
        if self.data == 0 || self.parity == 0 || self.width() > MAX_SHARDS {
            return Err(format!(
                "erasure coding {}+{}: each part must be at least 1 and both at most {MAX_SHARDS}",
                self.data, self.parity
            ));
        }
        if self.stripes.len() != chunks {
            return Err(format!("{} stripes for {chunks} chunks", self.stripes.len()));
        }
        // Its pin lists each chunk's id and then its shards' ids (docs/PROTOCOL.md, "Pin").
        if chunks.saturating_mul(self.width() + 1) > MAX_CHUNKS {
            return Err(format!("more than {MAX_CHUNKS} chunk and shard ids"));
        }
        if let Some(bad) = self.stripes.iter().find(|s| s.shards.len() != self.width()) {
            return Err(format!("a stripe has {} shards, not {}", bad.shards.len(), self.width()));
        }
        if let Some(bad) = self.stripes.iter().find(|s| s.sealed_len == 0 || s.sealed_len > MAX_SEALED_LEN) {
            return Err(format!("a stripe's sealed length is {}", bad.sealed_len));
        }
        Ok(())
    }
}

fn check_id(id: ManifestId, envelope: &[u8]) -> Result<(), ManifestError> {
    if ManifestId::of(envelope) == id { Ok(()) } else { Err(ManifestError::IdMismatch(id)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEALING: Sealing = Sealing::V2 { level: 3 };

    fn owner() -> OwnerKeys {
        OwnerKeys::derive(&[1; 32])
    }

    fn fresh() -> EnvelopeRandomness {
        EnvelopeRandomness { file_key: FileKey([2; 32]), wrap_nonce: [3; 24], body_nonce: [4; 24] }
    }

    fn chunk_ref() -> impl Strategy<Value = ChunkRef> {
        (any::<[u8; 32]>(), any::<[u8; 32]>(), 1..=MAX_CHUNK_SIZE).prop_map(|(id, key, len)| ChunkRef {
            id: ChunkId(id),
            key: ChunkKey(key),
            len,
        })
    }

    #[test]
    fn tampered_envelope_is_reported_by_id() {
        let manifest = Manifest::new("a.iso".into(), SEALING, vec![]);
        let (id, mut envelope) = manifest.seal(&owner(), &fresh());
        let last = envelope.len() - 1;
        envelope[last] ^= 1;
        assert!(matches!(Manifest::open(&owner(), id, &envelope), Err(ManifestError::IdMismatch(_))));
    }

    #[test]
    fn another_owner_cannot_open_it() {
        let (id, envelope) = Manifest::new("a".into(), SEALING, vec![]).seal(&owner(), &fresh());
        let other = OwnerKeys::derive(&[9; 32]);
        assert!(matches!(
            Manifest::open(&other, id, &envelope),
            Err(ManifestError::Crypto { source: CryptoError::WrongOwnerKey, .. })
        ));
    }

    #[test]
    fn inconsistent_size_and_trailing_bytes_are_rejected() {
        let id = ManifestId([0; 32]);
        let mut manifest = Manifest::new(
            "x".into(),
            SEALING,
            vec![ChunkRef { id: ChunkId([1; 32]), key: ChunkKey([2; 32]), len: 10 }],
        );
        manifest.size = 11;
        let body = manifest.encode();
        assert!(matches!(Manifest::decode(id, &body), Err(ManifestError::Malformed { .. })));
        manifest.size = 10;
        let mut body = manifest.encode();
        Manifest::decode(id, &body).unwrap();
        body.push(0);
        assert!(matches!(Manifest::decode(id, &body), Err(ManifestError::Malformed { .. })));
    }

    #[test]
    fn the_largest_manifest_fits_the_envelope_limit() {
        let chunks = (0..MAX_CHUNKS as u32)
            .map(|i| {
                let mut id = [0xff; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                ChunkRef { id: ChunkId(id), key: ChunkKey([0xee; 32]), len: MAX_CHUNK_SIZE }
            })
            .collect();
        let manifest = Manifest::new("n".repeat(MAX_NAME_LEN), SEALING, chunks);
        let (id, envelope) = manifest.seal(&owner(), &fresh());
        assert!(envelope.len() <= MAX_ENVELOPE_LEN, "{} bytes", envelope.len());
        assert!(envelope.len() > MAX_ENVELOPE_LEN * 9 / 10, "the limit is not far above the need");
        assert_eq!(Manifest::open(&owner(), id, &envelope).unwrap().1.chunks.len(), MAX_CHUNKS);
        // One more chunk is refused.
        let mut over = manifest;
        over.chunks.push(over.chunks[0]);
        over.size += u64::from(MAX_CHUNK_SIZE);
        let body = over.encode();
        assert!(matches!(Manifest::decode(id, &body), Err(ManifestError::Malformed { .. })));
    }

    #[test]
    fn version_1_bodies_still_decode() {
        let chunk = ChunkRef { id: ChunkId([1; 32]), key: ChunkKey([2; 32]), len: 10 };
        // A v1 body as an older p2pfs wrote it: version, name, size, chunks.
        let body = postcard::to_stdvec(&(1u8, "old.txt", 10u64, vec![chunk])).unwrap();
        let manifest = Manifest::decode(ManifestId([0; 32]), &body).unwrap();
        assert_eq!((manifest.version, manifest.sealing, manifest.erasure.is_none()), (1, Sealing::V1, true));
        assert_eq!(manifest.chunks, vec![chunk]);
        assert_eq!(manifest.encode(), body, "a v1 manifest encodes as it was");
        let mut unknown = body;
        unknown[0] = 3;
        assert!(matches!(Manifest::decode(ManifestId([0; 32]), &unknown), Err(ManifestError::Malformed { .. })));
    }

    #[test]
    fn erasure_layouts_are_checked() {
        let chunk = ChunkRef { id: ChunkId([1; 32]), key: ChunkKey([2; 32]), len: 10 };
        let stripe = Stripe { sealed_len: 42, shards: vec![ChunkId([3; 32]); 6] };
        let mut manifest = Manifest::new("e".into(), SEALING, vec![chunk]);
        manifest.erasure = Some(Erasure { data: 4, parity: 2, stripes: vec![stripe] });
        let decoded = Manifest::decode(ManifestId([0; 32]), &manifest.encode()).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.blobs().len(), 6);
        let bad = |change: &dyn Fn(&mut Erasure)| {
            let mut wrong = manifest.clone();
            change(wrong.erasure.as_mut().unwrap());
            Manifest::decode(ManifestId([0; 32]), &wrong.encode()).is_err()
        };
        assert!(bad(&|e| e.parity = 0));
        assert!(bad(&|e| e.data = 40));
        assert!(bad(&|e| e.stripes[0].shards.pop().map(drop).unwrap_or(())));
        assert!(bad(&|e| e.stripes.clear()));
        assert!(bad(&|e| e.stripes[0].sealed_len = MAX_SEALED_LEN + 1));
        let mut hard = manifest.clone();
        hard.sealing = Sealing::V2 { level: 22 };
        assert!(Manifest::decode(ManifestId([0; 32]), &hard.encode()).is_err(), "a level no home may configure");
    }

    proptest! {
        #[test]
        fn manifests_round_trip(name in ".{0,64}", chunks in proptest::collection::vec(chunk_ref(), 0..50)) {
            let manifest = Manifest::new(name, SEALING, chunks);
            let (id, envelope) = manifest.seal(&owner(), &fresh());
            let (file_key, opened) = Manifest::open(&owner(), id, &envelope).unwrap();
            prop_assert_eq!(&opened, &manifest);
            prop_assert_eq!(Manifest::open_with_file_key(&file_key, id, &envelope).unwrap(), manifest);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(ManifestId([0; 32]), &body);
        }
    }
}
