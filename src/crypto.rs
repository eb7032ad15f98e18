//! Keys, chunk sealing, the manifest envelope and signatures (DESIGN.md §4,
//! docs/FORMAT.md).
//!
//! Everything an owner has is derived from its 32-byte root key
//! ([`OwnerKeys::derive`]). Chunks are sealed convergently: the per-chunk key
//! is a keyed BLAKE3 of the plaintext, so the same plaintext of the same owner
//! always gives the same ciphertext and [`ChunkId`], and nobody without the
//! owner's subkey can compute it. Each chunk key encrypts exactly one
//! plaintext, which is what makes the fixed zero nonce safe.
//!
//! Chunk sealing, the hot path, uses ring's ChaCha20-Poly1305 (AVX2 assembly,
//! about twice the speed of the portable RustCrypto code on a CPU without
//! AVX-512). The manifest envelope and log entries use XChaCha20-Poly1305 from
//! RustCrypto, because they need random 24-byte nonces and ring has no
//! XChaCha. Both are RFC 8439; a test checks that the two libraries agree.
//!
//! Pure: randomness comes in as arguments, so every function here is
//! deterministic and testable.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
pub use ed25519_dalek::Signature;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::id::{ChunkId, OwnerId};

/// Length of every symmetric key and seed.
pub const KEY_LEN: usize = 32;
/// Length of a Poly1305 tag, the growth of a sealed message.
pub const TAG_LEN: usize = 16;
/// Length of an XChaCha20 nonce.
pub const XNONCE_LEN: usize = 24;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const CHUNK_AAD: &[u8] = b"p2pfs chunk v1";
const WRAP_AAD: &[u8] = b"p2pfs manifest-wrap v1";

/// Magic bytes at the start of every manifest envelope.
pub const ENVELOPE_MAGIC: &[u8; 8] = b"P2PFSMAN";
/// Version of the manifest envelope layout.
pub const ENVELOPE_VERSION: u8 = 1;
const ENVELOPE_HEADER_LEN: usize = 8 + 1 + XNONCE_LEN + KEY_LEN + TAG_LEN + XNONCE_LEN;
/// Smallest possible envelope: the header and an empty body's tag.
pub const ENVELOPE_MIN_LEN: usize = ENVELOPE_HEADER_LEN + TAG_LEN;

/// A cryptographic check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A chunk's ciphertext did not authenticate under its key.
    #[error("chunk failed authentication: the bytes or the key are wrong")]
    ChunkAuth,
    /// A chunk authenticated but what it holds is not a chunk of its format
    /// (a wrong length, padding, or compressed stream): sealed by a broken writer.
    #[error("chunk is malformed inside its seal: {0}")]
    ChunkMalformed(&'static str),
    /// A blob is not a manifest envelope of a version this build reads.
    #[error("not a p2pfs manifest envelope ({0})")]
    EnvelopeMalformed(&'static str),
    /// The file key could not be unwrapped: another owner's manifest, or a tampered header.
    #[error("the manifest's file key does not open with this owner key")]
    WrongOwnerKey,
    /// A sealed body did not authenticate.
    #[error("sealed data failed authentication: it was tampered with or the key is wrong")]
    SealedAuth,
    /// An Ed25519 signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// 32 bytes that are not an Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    BadPublicKey,
}

/// The per-chunk key: keyed BLAKE3 of the plaintext under the owner's chunk subkey.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

impl ChunkKey {
    /// A tag that identifies this key without revealing it, for the local
    /// "already sealed" map: BLAKE3 of the key.
    pub fn lookup_tag(&self) -> [u8; 32] {
        *blake3::hash(&self.0).as_bytes()
    }
}

/// The random key of one manifest version. A share ticket hands it out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// Everything derived from an owner's root key.
#[derive(Clone)]
pub struct OwnerKeys {
    chunk: [u8; KEY_LEN],
    chunker_seed: [u8; KEY_LEN],
    manifest_wrap: [u8; KEY_LEN],
    log: [u8; KEY_LEN],
    signing: SigningKey,
}

impl OwnerKeys {
    /// Derives the subkeys with `blake3::derive_key`, one context each.
    pub fn derive(root: &[u8; KEY_LEN]) -> Self {
        let derive = |context: &str| blake3::derive_key(context, root);
        Self {
            chunk: derive("p2pfs 2026 chunk-key"),
            chunker_seed: derive("p2pfs 2026 chunker-seed"),
            manifest_wrap: derive("p2pfs 2026 manifest-wrap"),
            log: derive("p2pfs 2026 log"),
            signing: SigningKey::from_bytes(&derive("p2pfs 2026 owner-sign")),
        }
    }

    /// The owner's public identity: its signing public key.
    pub fn owner_id(&self) -> OwnerId {
        OwnerId(self.signing.verifying_key().to_bytes())
    }

    /// The seed of this owner's FastCDC gear table.
    pub fn chunker_seed(&self) -> &[u8; KEY_LEN] {
        &self.chunker_seed
    }

    /// The key that seals log entries.
    pub fn log_key(&self) -> &[u8; KEY_LEN] {
        &self.log
    }

    /// The convergent key of a chunk's plaintext.
    pub fn chunk_key(&self, plaintext: &[u8]) -> ChunkKey {
        ChunkKey(*blake3::keyed_hash(&self.chunk, plaintext).as_bytes())
    }

    /// Signs `message` under `domain` (see [`verify`]).
    pub fn sign(&self, domain: &str, message: &[u8]) -> Signature {
        self.signing.sign(&domain_separated(domain, message))
    }

    /// Seals a manifest body into an envelope with fresh randomness.
    pub fn seal_manifest(&self, body: &[u8], fresh: &EnvelopeRandomness) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_MIN_LEN + body.len());
        out.extend_from_slice(ENVELOPE_MAGIC);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&fresh.wrap_nonce);
        out.extend_from_slice(&xseal(&self.manifest_wrap, &fresh.wrap_nonce, WRAP_AAD, &fresh.file_key.0));
        out.extend_from_slice(&fresh.body_nonce);
        let sealed = xseal(&fresh.file_key.0, &fresh.body_nonce, &out[..ENVELOPE_HEADER_LEN], body);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens an envelope of this owner: unwraps its file key, then the body.
    pub fn open_manifest(&self, envelope: &[u8]) -> Result<(FileKey, Vec<u8>), CryptoError> {
        let header = EnvelopeHeader::parse(envelope)?;
        let file_key = xopen(&self.manifest_wrap, header.wrap_nonce, WRAP_AAD, header.wrapped_key)
            .map_err(|_| CryptoError::WrongOwnerKey)?;
        let file_key = FileKey(file_key.try_into().map_err(|_| CryptoError::WrongOwnerKey)?);
        let body = open_manifest_with_file_key(&file_key, envelope)?;
        Ok((file_key, body))
    }
}

/// The random values one manifest envelope needs.
pub struct EnvelopeRandomness {
    /// The version's file key.
    pub file_key: FileKey,
    /// Nonce for wrapping the file key.
    pub wrap_nonce: [u8; XNONCE_LEN],
    /// Nonce for the body.
    pub body_nonce: [u8; XNONCE_LEN],
}

struct EnvelopeHeader<'a> {
    wrap_nonce: &'a [u8],
    wrapped_key: &'a [u8],
    body_nonce: &'a [u8],
}

impl<'a> EnvelopeHeader<'a> {
    fn parse(envelope: &'a [u8]) -> Result<Self, CryptoError> {
        if envelope.len() < ENVELOPE_MIN_LEN {
            return Err(CryptoError::EnvelopeMalformed("too short"));
        }
        if &envelope[..8] != ENVELOPE_MAGIC {
            return Err(CryptoError::EnvelopeMalformed("bad magic"));
        }
        if envelope[8] != ENVELOPE_VERSION {
            return Err(CryptoError::EnvelopeMalformed("unknown version"));
        }
        let rest = &envelope[9..];
        let (wrap_nonce, rest) = rest.split_at(XNONCE_LEN);
        let (wrapped_key, rest) = rest.split_at(KEY_LEN + TAG_LEN);
        let body_nonce = &rest[..XNONCE_LEN];
        Ok(Self { wrap_nonce, wrapped_key, body_nonce })
    }
}

/// Checks what anyone can check of an envelope without its keys: its
/// length, magic and version. What a storage node asks of a `PutManifest`.
pub fn check_envelope_form(envelope: &[u8]) -> Result<(), CryptoError> {
    EnvelopeHeader::parse(envelope).map(|_| ())
}

/// Opens an envelope's body with its file key (how a share ticket reads one version).
pub fn open_manifest_with_file_key(file_key: &FileKey, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let header = EnvelopeHeader::parse(envelope)?;
    let (header_bytes, body) = envelope.split_at(ENVELOPE_HEADER_LEN);
    xopen(&file_key.0, header.body_nonce, header_bytes, body)
}

/// Seals a chunk in chunk format v1, in place: `buf` holds the plaintext and
/// ends up holding the ciphertext (plaintext length + [`TAG_LEN`]). Returns
/// the ciphertext's id. New pushes seal with [`crate::sealing::Sealing`].
pub fn seal_chunk(key: &ChunkKey, buf: &mut Vec<u8>) -> ChunkId {
    seal_chunk_with(key, CHUNK_AAD, buf)
}

/// Opens a chunk of format v1 in place: `buf` holds the ciphertext and ends
/// up holding the plaintext. The caller checks the [`ChunkId`] first; this
/// checks the tag.
pub fn open_chunk(key: &ChunkKey, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
    open_chunk_with(key, CHUNK_AAD, buf)
}

/// ChaCha20-Poly1305 with nonce 0 under a chunk key, in place.
pub(crate) fn seal_chunk_with(key: &ChunkKey, aad: &'static [u8], buf: &mut Vec<u8>) -> ChunkId {
    let key = chunk_aead(key);
    // A chunk key encrypts exactly one plaintext, so nonce 0 is never reused
    // with another message under the same key.
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), buf)
        .expect("ChaCha20-Poly1305 sealing fails only for inputs over 256 GiB; chunks are at most 16 MiB");
    ChunkId::of(buf)
}

/// Opens what [`seal_chunk_with`] sealed, in place.
pub(crate) fn open_chunk_with(key: &ChunkKey, aad: &'static [u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
    let key = chunk_aead(key);
    let len = key
        .open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), buf)
        .map_err(|_| CryptoError::ChunkAuth)?
        .len();
    buf.truncate(len);
    Ok(())
}

fn chunk_aead(key: &ChunkKey) -> LessSafeKey {
    // A 32-byte key is the one length CHACHA20_POLY1305 accepts.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("32-byte ChaCha20 key"))
}

/// XChaCha20-Poly1305 seal with a caller-chosen random nonce.
pub fn xseal(key: &[u8; KEY_LEN], nonce: &[u8; XNONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .encrypt(&XNonce::from(*nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 sealing fails only for inputs over 256 GiB")
}

/// XChaCha20-Poly1305 open; `nonce` must be [`XNONCE_LEN`] bytes.
pub fn xopen(key: &[u8; KEY_LEN], nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; XNONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::SealedAuth)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher.decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad }).map_err(|_| CryptoError::SealedAuth)
}

/// Verifies a signature made by [`OwnerKeys::sign`] with the same domain.
pub fn verify(owner: &OwnerId, domain: &str, message: &[u8], signature: &Signature) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(owner.as_bytes()).map_err(|_| CryptoError::BadPublicKey)?;
    key.verify_strict(&domain_separated(domain, message), signature).map_err(|_| CryptoError::BadSignature)
}

/// `len(domain) as u8 ‖ domain ‖ message`: a signature for one purpose never
/// verifies for another.
fn domain_separated(domain: &str, message: &[u8]) -> Vec<u8> {
    let domain = domain.as_bytes();
    let len = u8::try_from(domain.len()).expect("signature domains are short string constants");
    let mut out = Vec::with_capacity(1 + domain.len() + message.len());
    out.push(len);
    out.extend_from_slice(domain);
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(seed: u8) -> OwnerKeys {
        OwnerKeys::derive(&[seed; 32])
    }

    fn fresh(seed: u8) -> EnvelopeRandomness {
        EnvelopeRandomness { file_key: FileKey([seed; 32]), wrap_nonce: [seed ^ 1; 24], body_nonce: [seed ^ 2; 24] }
    }

    #[test]
    fn subkeys_are_distinct_and_stable() {
        let a = keys(1);
        let subkeys = [a.chunk, a.chunker_seed, a.manifest_wrap, a.log, a.signing.to_bytes()];
        for i in 0..subkeys.len() {
            for j in i + 1..subkeys.len() {
                assert_ne!(subkeys[i], subkeys[j]);
            }
        }
        assert_eq!(keys(1).owner_id(), a.owner_id());
        assert_ne!(keys(2).owner_id(), a.owner_id());
    }

    #[test]
    fn chunk_sealing_is_convergent_per_owner_only() {
        let plaintext = b"the same bytes".to_vec();
        let seal = |owner: &OwnerKeys| {
            let mut buf = plaintext.clone();
            seal_chunk(&owner.chunk_key(&plaintext), &mut buf)
        };
        assert_eq!(seal(&keys(1)), seal(&keys(1)));
        assert_ne!(seal(&keys(1)), seal(&keys(2)));
    }

    #[test]
    fn ring_and_rustcrypto_agree_on_chunk_ciphertext() {
        use chacha20poly1305::ChaCha20Poly1305;
        let key = ChunkKey([7; 32]);
        let mut buf = b"interoperable".to_vec();
        seal_chunk(&key, &mut buf);
        let portable = ChaCha20Poly1305::new(&key.0.into())
            .encrypt(&[0u8; 12].into(), Payload { msg: b"interoperable", aad: CHUNK_AAD })
            .unwrap();
        assert_eq!(buf, portable);
    }

    #[test]
    fn tampered_chunk_fails_to_open() {
        let key = ChunkKey([3; 32]);
        let mut buf = vec![42u8; 1000];
        seal_chunk(&key, &mut buf);
        buf[500] ^= 1;
        assert_eq!(open_chunk(&key, &mut buf), Err(CryptoError::ChunkAuth));
    }

    #[test]
    fn manifest_envelope_opens_only_for_its_owner() {
        let envelope = keys(1).seal_manifest(b"body", &fresh(9));
        let (file_key, body) = keys(1).open_manifest(&envelope).unwrap();
        assert_eq!(body, b"body");
        assert_eq!(file_key, FileKey([9; 32]));
        assert_eq!(keys(2).open_manifest(&envelope).unwrap_err(), CryptoError::WrongOwnerKey);
        assert_eq!(open_manifest_with_file_key(&file_key, &envelope).unwrap(), b"body");
    }

    #[test]
    fn every_envelope_byte_is_authenticated() {
        let envelope = keys(1).seal_manifest(b"some manifest body", &fresh(4));
        for i in 0..envelope.len() {
            let mut tampered = envelope.clone();
            tampered[i] ^= 0x80;
            assert!(keys(1).open_manifest(&tampered).is_err(), "byte {i} not authenticated");
        }
        assert!(keys(1).open_manifest(&envelope[..ENVELOPE_MIN_LEN - 1]).is_err());
    }

    #[test]
    fn signatures_are_bound_to_their_domain() {
        let owner = keys(5);
        let signature = owner.sign("p2pfs test", b"message");
        verify(&owner.owner_id(), "p2pfs test", b"message", &signature).unwrap();
        assert!(verify(&owner.owner_id(), "p2pfs other", b"message", &signature).is_err());
        assert!(verify(&owner.owner_id(), "p2pfs test", b"massage", &signature).is_err());
        assert!(verify(&keys(6).owner_id(), "p2pfs test", b"message", &signature).is_err());
    }

    proptest! {
        #[test]
        fn chunks_round_trip(plaintext in proptest::collection::vec(any::<u8>(), 0..4096), seed in any::<u8>()) {
            let owner = keys(seed);
            let key = owner.chunk_key(&plaintext);
            let mut buf = plaintext.clone();
            let id = seal_chunk(&key, &mut buf);
            prop_assert_eq!(buf.len(), plaintext.len() + TAG_LEN);
            prop_assert_eq!(ChunkId::of(&buf), id);
            open_chunk(&key, &mut buf).unwrap();
            prop_assert_eq!(buf, plaintext);
        }

        #[test]
        fn envelopes_round_trip(body in proptest::collection::vec(any::<u8>(), 0..2048), seed in any::<u8>()) {
            let envelope = keys(seed).seal_manifest(&body, &fresh(seed));
            prop_assert_eq!(keys(seed).open_manifest(&envelope).unwrap().1, body);
        }
    }
}
