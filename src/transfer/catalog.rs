//! Where a home keeps its own records: the owner's log, the manifests it
//! pushed, their pins, and which chunks it sealed before.
//!
//! When this process owns the home, that is the home's [`Store`]. While
//! `p2pfs serve` owns it, the CLI reaches the same records through the
//! running node over QUIC ([`super::daemon::Daemon`]), which checks each
//! log entry's signature and place in the chain before it keeps it.

use crate::crypto::OwnerKeys;
use crate::id::{ChunkId, ManifestId, OwnerId};
use crate::manifest::log::LogEntry;
use crate::store::{PinRecord, Store, StoreError};

use super::TransferError;

/// One change to a home's records (see [`super::record`], the one place
/// that makes them).
#[derive(Default)]
pub struct Change<'a> {
    /// Log entries to append, in sequence order.
    pub entries: &'a [LogEntry],
    /// A new version's manifest envelope and pin. A store keeps them with
    /// the log entry, in one commit; the node serving a home gets them as a
    /// member of the swarm, before the entry.
    pub version: Option<(&'a [u8], &'a PinRecord)>,
    /// Pins to remove (the versions the entries remove).
    pub unpins: &'a [(OwnerId, ManifestId)],
    /// Key tags and ids of chunks sealed, to skip sealing them again.
    pub sealed: &'a [([u8; 32], ChunkId)],
}

/// A home's records: the home's store, or the node serving the home.
pub trait Catalog: Sync {
    /// The entries of `owner`'s log from sequence number `from` on, in
    /// order (unverified: the history index checks them). A source whose
    /// log went apart from what the caller knows may answer from entry 0.
    fn log_from(&self, owner: &OwnerKeys, from: u64) -> Result<Vec<LogEntry>, TransferError>;

    /// The id of the chunk sealed under a key with this tag, if it is known.
    fn sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError>;

    /// A manifest envelope, if it is held (unverified: opening it checks it).
    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError>;

    /// Makes a change durable (see [`Change`] for what each kind keeps).
    fn record(&self, change: Change<'_>) -> Result<(), TransferError>;

    /// Replaces `owner`'s log from sequence number `from` on with
    /// `entries`, a verified chain that follows what precedes `from`: how
    /// the home's copy takes the log its peers hold
    /// ([`super::network_log`]).
    fn adopt_log(&self, owner: &OwnerKeys, from: u64, entries: &[LogEntry]) -> Result<(), TransferError>;
}

impl Catalog for Store {
    fn log_from(&self, owner: &OwnerKeys, from: u64) -> Result<Vec<LogEntry>, TransferError> {
        Ok(self.meta().log(&owner.owner_id(), from)?)
    }

    fn sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError> {
        Ok(self.meta().lookup_sealed(tag)?)
    }

    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
        match self.read_manifest(id) {
            Ok(envelope) => Ok(Some(envelope)),
            Err(StoreError::ManifestMissing(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The envelope first (durable on its own, unreferenced until the
    /// commit), then log entries, pin, unpins and sealed tags in one commit.
    fn record(&self, change: Change<'_>) -> Result<(), TransferError> {
        let pins = match change.version {
            Some((envelope, pin)) => {
                self.put_manifest(&pin.manifest, envelope)?;
                std::slice::from_ref(pin)
            }
            None => &[],
        };
        Ok(self.meta().commit(change.entries, pins, change.unpins, change.sealed)?)
    }

    fn adopt_log(&self, owner: &OwnerKeys, from: u64, entries: &[LogEntry]) -> Result<(), TransferError> {
        Ok(self.meta().replace_log(&owner.owner_id(), from, entries)?)
    }
}
