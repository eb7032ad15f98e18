//! What a node decides and does in its store for the requests that keep
//! data (`Has`, `PutChunk`, `GetChunk`, `Pin`, `Unpin`), with no stream,
//! budget or clock in sight: each takes the decoded request (and its
//! payload, already received) and returns the reply frame or the
//! [`Refusal`] its `Error` carries.
//!
//! [`super::handler`] calls these for every request that arrives over QUIC,
//! around its stream I/O, deadlines and payload budget; the
//! `node_requests` fuzz target and [`super::request_model`] call the very
//! same functions on a real store and check what they do against a plain
//! model. So the logic that decides what is kept (a chunk's bytes against
//! its id, a pin's signature and tombstone, `Has` sparing a chunk for the
//! grace) exists once, and is the logic under test.

use tracing::{debug, warn};

use crate::crypto;
use crate::id::ChunkId;
use crate::store::{PinRecord, Pinned, SignedPin, SpaceReservation, Store, StoreError};
use crate::wire::{self, Ack, ChunkData, ErrorCode, Frame, HasReply, NotFound};

/// Why a request could not be served: the code and message of its `Error` reply.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The `Error` frame's code.
    pub(crate) code: ErrorCode,
    /// What failed and what to try, for the peer: never a path on this node.
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A store failure, as the peer is told of it: what kind, never where. The
/// details (paths, OS errors) go to this node's log.
impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        if let StoreError::OverQuota { .. } = e {
            // The quota's figures are the node's own to give: no path in them.
            debug!("refused a chunk: {e}");
            return Refusal::new(ErrorCode::STORAGE_FULL, e.to_string());
        }
        let full = e
            .io_error()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded));
        warn!("serving a request: {e:#}");
        if full {
            return Refusal::new(ErrorCode::STORAGE_FULL, "this node's disk is full; try another node");
        }
        match e {
            StoreError::PinRevoked(manifest) => Refusal::new(
                ErrorCode::UNPINNED,
                format!("its owner unpinned manifest {manifest} here; it is not pinned again"),
            ),
            _ => Refusal::new(
                ErrorCode::INTERNAL,
                "this node failed to read or write its store (its log says why); try another node",
            ),
        }
    }
}

/// A node's store and the quota it keeps, as the requests see them.
pub(crate) struct StoreRequests<'a> {
    store: &'a Store,
    /// The most chunk bytes the node stores (`serve --max-storage`).
    max_storage: Option<u64>,
}

impl<'a> StoreRequests<'a> {
    pub(crate) fn new(store: &'a Store, max_storage: Option<u64>) -> Self {
        Self { store, max_storage }
    }

    /// `Has`: which of `ids` are here. A chunk said to be here is spared by
    /// GC for its grace: the asker may skip sending it and pin it later.
    pub(crate) fn has(&self, ids: &[ChunkId]) -> Frame {
        let present = self.store.hold_chunks(ids);
        let reply = HasReply::from_flags(&present).expect("as many flags as ids, within MAX_HAS_IDS");
        Frame::HasReply(reply)
    }

    /// `PutChunk`, before a byte of its payload is read: ciphertext is at
    /// least its tag, so anything shorter is no chunk (and the store would
    /// only quarantine it later).
    pub(crate) fn check_chunk_len(len: u32) -> Result<(), Refusal> {
        if (len as usize) < crypto::TAG_LEN {
            return Err(Refusal::new(
                ErrorCode::BAD_FRAME,
                format!("{len} bytes cannot be a chunk ({} at least)", crypto::TAG_LEN),
            ));
        }
        Ok(())
    }

    /// `PutChunk`, before its payload is read: under a quota, room for
    /// `len` bytes, held until the chunk is stored or refused (`None`: no
    /// quota, or the chunk is here already, which is acked as ever and so
    /// is said to be here, as by `Has`).
    pub(crate) fn reserve_chunk_room(&self, id: &ChunkId, len: u32) -> Result<Option<SpaceReservation>, Refusal> {
        let Some(quota) = self.max_storage else { return Ok(None) };
        if self.store.hold_chunks(&[*id]) == [true] {
            return Ok(None);
        }
        Ok(Some(self.store.reserve_chunk_space(u64::from(len), quota)?))
    }

    /// `PutChunk`, once its payload (received in `parts`) is here: the
    /// bytes must hash to the id they came under, then they are stored
    /// durably (a good copy here already is kept, and its time refreshed).
    pub(crate) fn put_chunk(&self, id: &ChunkId, parts: &[impl AsRef<[u8]>]) -> Result<Frame, Refusal> {
        if ChunkId(hash_parts(parts)) != *id {
            return Err(Refusal::new(ErrorCode::BAD_FRAME, format!("chunk bytes do not hash to {id}")));
        }
        self.store.put_chunk_parts(id, parts)?;
        Ok(Frame::Ack(Ack { id: id.0 }))
    }

    /// `GetChunk`: the reply and its payload, read into `buf` (`NotFound`
    /// and an empty payload if the chunk is not here). Served as it is on
    /// disk, not hashed here: the client verifies every chunk by its id,
    /// and a copy gone bad is found by the scrub, or replaced when a client
    /// that found the mismatch sends the good one (docs/PROTOCOL.md, "Who
    /// verifies a chunk").
    pub(crate) fn get_chunk(&self, id: &ChunkId, mut buf: Vec<u8>) -> Result<(Frame, Vec<u8>), Refusal> {
        let not_found = || (Frame::NotFound(NotFound { id: id.0 }), Vec::new());
        match self.store.read_chunk_unverified(id, &mut buf) {
            Ok(true) if buf.len() <= wire::MAX_CHUNK_PAYLOAD as usize => {
                let frame = Frame::ChunkData(ChunkData { id: *id, len: buf.len() as u32 });
                Ok((frame, buf))
            }
            Ok(_) => Ok(not_found()),
            // A file of no chunk's length was quarantined: for the peer it is simply not here.
            Err(StoreError::ChunkCorrupted { .. }) => Ok(not_found()),
            Err(e) => Err(e.into()),
        }
    }

    /// `Pin`, with its payload `ids` (`pin.chunks` ids of 32 bytes): kept
    /// only if its owner signed it, and never once that owner unpinned the
    /// manifest here (a replayed `Pin` cannot bring back what was removed).
    pub(crate) fn pin(&self, pin: &wire::Pin, ids: Vec<u8>) -> Result<Frame, Refusal> {
        if ids.len() as u64 != u64::from(pin.chunks) * 32 {
            return Err(Refusal::new(
                ErrorCode::BAD_FRAME,
                format!("a pin of {} chunk ids came with {} bytes of them", pin.chunks, ids.len()),
            ));
        }
        let chunks: Vec<ChunkId> =
            ids.chunks_exact(32).map(|id| ChunkId(id.try_into().expect("chunks_exact yields 32 bytes"))).collect();
        drop(ids);
        let (domain, message) = wire::pin_signing(&pin.owner, &pin.manifest, &chunks, pin.erasure);
        crypto::verify(&pin.owner, domain, &message, &pin.signature).map_err(|_| {
            Refusal::new(ErrorCode::BAD_SIGNATURE, format!("pin of {} is not signed by its owner", pin.manifest))
        })?;
        // An erasure pin signs each stripe's chunk id too; it keeps the shards.
        let kept = match pin.erasure {
            Some(stripes) => stripes.kept(&chunks),
            None => chunks.clone(),
        };
        let record = PinRecord { owner: pin.owner, manifest: pin.manifest, chunks: kept };
        let signed = SignedPin {
            signature: pin.signature.to_bytes(),
            chunks,
            erasure: pin.erasure.map(|e| [e.data(), e.parity()]),
        };
        match self.store.pin_signed(&record, &signed)? {
            Pinned::New | Pinned::AlreadyHeld => Ok(Frame::Ack(Ack { id: pin.manifest.0 })),
            Pinned::Revoked => Err(Refusal::new(
                ErrorCode::UNPINNED,
                format!("its owner unpinned manifest {} here; it is not pinned again", pin.manifest),
            )),
        }
    }

    /// `Unpin`: only its owner removes a pin, and leaves a tombstone. The
    /// reply, and whether a pin was removed (a collection is due).
    pub(crate) fn unpin(&self, unpin: &wire::Unpin) -> Result<(Frame, bool), Refusal> {
        let message = wire::unpin_message(&unpin.owner, &unpin.manifest);
        crypto::verify(&unpin.owner, wire::UNPIN_DOMAIN, &message, &unpin.signature).map_err(|_| {
            Refusal::new(ErrorCode::BAD_SIGNATURE, format!("unpin of {} is not signed by its owner", unpin.manifest))
        })?;
        let removed = self.store.meta().unpin(&unpin.owner, &unpin.manifest)?;
        Ok((Frame::Ack(Ack { id: unpin.manifest.0 }), removed))
    }
}

/// BLAKE3 of a payload received in pieces.
pub(super) fn hash_parts(parts: &[impl AsRef<[u8]>]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.as_ref());
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_is_reported_without_the_nodes_paths() {
        let path = std::path::PathBuf::from("/home/alice/.local/share/p2pfs/store/chunks/ab/cd/abcd");
        let io = StoreError::Io {
            what: "storing chunk abcd".into(),
            path: path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let full = StoreError::Io {
            what: "storing chunk abcd".into(),
            path: path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let corrupt =
            StoreError::ChunkCorrupted { id: ChunkId([0xab; 32]), quarantined: path.with_file_name("quarantined") };
        for (error, code) in
            [(io, ErrorCode::INTERNAL), (full, ErrorCode::STORAGE_FULL), (corrupt, ErrorCode::INTERNAL)]
        {
            let refusal = Refusal::from(error);
            assert_eq!(refusal.code, code);
            assert!(!refusal.message.contains("/home") && !refusal.message.contains("alice"), "{}", refusal.message);
        }
    }
}
