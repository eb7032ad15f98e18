//! The node serving this home, as the home's [`Catalog`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use crate::crypto::OwnerKeys;
use crate::id::{ChunkId, ManifestId};
use crate::manifest::log::LogEntry;
use crate::net::{Client, NetError, Peer};
use crate::wire;

use super::TransferError;
use super::catalog::{Catalog, Change};

/// While `p2pfs serve` owns the home, the CLI reads and extends the owner's
/// log through it. The node checks every log entry's signature and place in
/// the chain as it would any peer's, and answers a log read only with the
/// owner's proof. Manifests and pins reach it as a member of the swarm.
pub struct Daemon {
    client: Client,
    /// The connection; a new one replaces it if the node closes it as idle
    /// (a long push leaves it unused from the first log read to the last entry).
    peer: Mutex<Peer>,
    addr: SocketAddr,
    owner: OwnerKeys,
}

impl Daemon {
    /// The home's node, reached at `peer` (which answered at `addr`), read
    /// and written as `owner`.
    pub fn new(client: Client, peer: Peer, addr: SocketAddr, owner: OwnerKeys) -> Self {
        Self { client, peer: Mutex::new(peer), addr, owner }
    }

    /// The connection to the node.
    pub fn peer(&self) -> Peer {
        self.peer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What the node stores.
    pub fn status(&self) -> Result<wire::Status, TransferError> {
        self.call(|peer| async move { peer.status().await })
    }

    /// Runs one request, on a new connection if the node closed the old one as idle.
    fn call<T, Fut>(&self, request: impl Fn(Peer) -> Fut) -> Result<T, TransferError>
    where
        Fut: Future<Output = Result<T, NetError>>,
    {
        let attempt = self.client.run(request(self.peer()));
        let result = match attempt {
            Err(e) if e.closed_as_idle() => {
                self.client.connect(self.peer().node_id(), &[self.addr]).and_then(|(peer, _)| {
                    *self.peer.lock().unwrap_or_else(PoisonError::into_inner) = peer.clone();
                    self.client.run(request(peer))
                })
            }
            other => other,
        };
        result.map_err(|source| TransferError::Node { source })
    }
}

impl Catalog for Daemon {
    fn log_from(&self, owner: &OwnerKeys, from: u64) -> Result<Vec<LogEntry>, TransferError> {
        let encoded = self.call(|peer| async move { peer.get_log_from(owner, from).await })?;
        let mut entries = Vec::with_capacity(encoded.len());
        for (seq, bytes) in (from..).zip(&encoded) {
            entries.push(LogEntry::decode(seq, bytes)?);
        }
        Ok(entries)
    }

    fn sealed(&self, _tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError> {
        // The sealed-chunk map stays in the node's store: a chunk is sealed
        // again, and the batched `Has` keeps it from travelling again.
        Ok(None)
    }

    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
        self.call(|peer| async move { peer.get_manifest(*id).await })
    }

    /// Appends the entries to the node's copy of the log. The version's
    /// manifest and pin, and the unpins, went to the node as a member of
    /// the swarm (`record`), so they are not sent twice.
    fn record(&self, change: Change<'_>) -> Result<(), TransferError> {
        debug_assert!(change.entries.iter().all(|e| e.owner == self.owner.owner_id()));
        for entry in change.entries {
            self.call(|peer| async move { peer.append_log(entry.encode(), entry.hash()).await })?;
        }
        Ok(())
    }

    /// The node's copy is one of the owner's log copies: it gets the
    /// entries it lacks. A copy that went apart stays as it is (a node
    /// takes only entries that follow what it holds); reads rebase on it.
    fn adopt_log(&self, _owner: &OwnerKeys, _from: u64, entries: &[LogEntry]) -> Result<(), TransferError> {
        for entry in entries {
            match self.call(|peer| async move { peer.append_log(entry.encode(), entry.hash()).await }) {
                Err(e) if e.is_log_conflict() => return Ok(()),
                other => other?,
            }
        }
        Ok(())
    }
}
