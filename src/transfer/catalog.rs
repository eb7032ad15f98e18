//! Where a home keeps its own records: the owner's log, the manifests it
//! pushed, their pins, and which chunks it sealed before.
//!
//! When this process owns the home, that is the home's [`Store`]. While
//! `p2pfs serve` owns it, the CLI reaches the same records through the
//! running node over QUIC ([`super::remote::Daemon`]), which checks each
//! log entry's signature and place in the chain before it keeps it.

use crate::id::{ChunkId, ManifestId, OwnerId};
use crate::manifest::log::LogEntry;
use crate::store::{PinRecord, Store, StoreError};

use super::TransferError;

/// One change to a home's records, made durable as a whole or (over the
/// network, where it takes several requests) in the order that never leaves
/// a live version without its pin: pins, then log entries, then unpins.
#[derive(Default)]
pub struct Change<'a> {
    /// Log entries to append, in sequence order.
    pub entries: &'a [LogEntry],
    /// Manifests to pin, with their chunks.
    pub pins: &'a [(ManifestId, PinRecord)],
    /// Manifests to unpin.
    pub unpins: &'a [ManifestId],
    /// Key tags and ids of chunks sealed, to skip sealing them again.
    pub sealed: &'a [([u8; 32], ChunkId)],
}

/// A home's records: the home's store, or the node serving the home.
pub trait Catalog: Sync {
    /// Every log entry of `owner`, in sequence order (unverified: replay checks them).
    fn log(&self, owner: &OwnerId) -> Result<Vec<LogEntry>, TransferError>;

    /// The id of the chunk sealed under a key with this tag, if it is known.
    fn sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError>;

    /// Keeps a manifest envelope durably.
    fn put_manifest(&self, id: &ManifestId, envelope: &[u8]) -> Result<(), TransferError>;

    /// A manifest envelope, if it is held (unverified: opening it checks it).
    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError>;

    /// Applies a change (see [`Change`]).
    fn apply(&self, change: Change<'_>) -> Result<(), TransferError>;
}

impl Catalog for Store {
    fn log(&self, owner: &OwnerId) -> Result<Vec<LogEntry>, TransferError> {
        Ok(self.meta().log(owner)?)
    }

    fn sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError> {
        Ok(self.meta().lookup_sealed(tag)?)
    }

    fn put_manifest(&self, id: &ManifestId, envelope: &[u8]) -> Result<(), TransferError> {
        Ok(Store::put_manifest(self, id, envelope)?)
    }

    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
        match self.read_manifest(id) {
            Ok(envelope) => Ok(Some(envelope)),
            Err(StoreError::ManifestMissing(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn apply(&self, change: Change<'_>) -> Result<(), TransferError> {
        Ok(self.meta().commit(change.entries, change.pins, change.unpins, change.sealed)?)
    }
}
