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

/// Version of the manifest body layout.
pub const MANIFEST_VERSION: u8 = 1;
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
    /// Plaintext length in bytes (the ciphertext is 16 bytes longer).
    pub len: u32,
}

/// What one version of a file is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Body layout version, [`MANIFEST_VERSION`].
    pub version: u8,
    /// The name the file was pushed under.
    pub name: String,
    /// Total plaintext size; equals the sum of the chunk lengths.
    pub size: u64,
    /// The chunks in file order.
    pub chunks: Vec<ChunkRef>,
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
    /// A manifest for `name` listing `chunks`.
    pub fn new(name: String, chunks: Vec<ChunkRef>) -> Self {
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        Self { version: MANIFEST_VERSION, name, size, chunks }
    }

    /// Encodes and seals the manifest; returns its id and envelope.
    pub fn seal(&self, owner: &OwnerKeys, fresh: &EnvelopeRandomness) -> (ManifestId, Vec<u8>) {
        let body = postcard::to_stdvec(self).expect("a manifest always encodes: it has no maps or unsupported types");
        let envelope = owner.seal_manifest(&body, fresh);
        (ManifestId::of(&envelope), envelope)
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
        let (manifest, rest): (Self, _) = postcard::take_from_bytes(body).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        if manifest.version != MANIFEST_VERSION {
            return Err(malformed(format!(
                "unknown version {}; this p2pfs reads {MANIFEST_VERSION}",
                manifest.version
            )));
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

fn check_id(id: ManifestId, envelope: &[u8]) -> Result<(), ManifestError> {
    if ManifestId::of(envelope) == id { Ok(()) } else { Err(ManifestError::IdMismatch(id)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        let manifest = Manifest::new("a.iso".into(), vec![]);
        let (id, mut envelope) = manifest.seal(&owner(), &fresh());
        let last = envelope.len() - 1;
        envelope[last] ^= 1;
        assert!(matches!(Manifest::open(&owner(), id, &envelope), Err(ManifestError::IdMismatch(_))));
    }

    #[test]
    fn another_owner_cannot_open_it() {
        let (id, envelope) = Manifest::new("a".into(), vec![]).seal(&owner(), &fresh());
        let other = OwnerKeys::derive(&[9; 32]);
        assert!(matches!(
            Manifest::open(&other, id, &envelope),
            Err(ManifestError::Crypto { source: CryptoError::WrongOwnerKey, .. })
        ));
    }

    #[test]
    fn inconsistent_size_and_trailing_bytes_are_rejected() {
        let id = ManifestId([0; 32]);
        let mut manifest =
            Manifest::new("x".into(), vec![ChunkRef { id: ChunkId([1; 32]), key: ChunkKey([2; 32]), len: 10 }]);
        manifest.size = 11;
        let body = postcard::to_stdvec(&manifest).unwrap();
        assert!(matches!(Manifest::decode(id, &body), Err(ManifestError::Malformed { .. })));
        manifest.size = 10;
        let mut body = postcard::to_stdvec(&manifest).unwrap();
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
        let manifest = Manifest::new("n".repeat(MAX_NAME_LEN), chunks);
        let (id, envelope) = manifest.seal(&owner(), &fresh());
        assert!(envelope.len() <= MAX_ENVELOPE_LEN, "{} bytes", envelope.len());
        assert!(envelope.len() > MAX_ENVELOPE_LEN * 9 / 10, "the limit is not far above the need");
        assert_eq!(Manifest::open(&owner(), id, &envelope).unwrap().1.chunks.len(), MAX_CHUNKS);
        // One more chunk is refused.
        let mut over = manifest;
        over.chunks.push(over.chunks[0]);
        over.size += u64::from(MAX_CHUNK_SIZE);
        let body = postcard::to_stdvec(&over).unwrap();
        assert!(matches!(Manifest::decode(id, &body), Err(ManifestError::Malformed { .. })));
    }

    proptest! {
        #[test]
        fn manifests_round_trip(name in ".{0,64}", chunks in proptest::collection::vec(chunk_ref(), 0..50)) {
            let manifest = Manifest::new(name, chunks);
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
