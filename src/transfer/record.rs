//! Recording a version and retracting one: the one path each takes, for a
//! home on its own and for one with peers. Pins and unpins are built and
//! signed here and nowhere else.
//!
//! Recording (after every chunk is durable where it belongs):
//! 1. the destination publishes the version: to peers, the manifest and the
//!    owner's pin (on every peer, and confirmed by every peer holding one of
//!    its chunks) and the log head; a store has nothing to do here;
//! 2. the home's records take the log entry: a store keeps the manifest,
//!    the pin and the entry in one atomic commit; the node serving a home
//!    appends the entry to its copy of the log.
//!
//! Retracting: the home's records take the removal entries first (a store
//! unpins in the same commit), then every peer of the swarm gets a signed
//! unpin. A peer keeps a tombstone, so a replayed pin cannot undo it.

use super::TransferError;
use super::catalog::{Catalog, Change};
use super::push::{Destination, Published};
use super::swarm::Swarm;
use super::unix_time_ms;
use crate::crypto::OwnerKeys;
use std::collections::HashSet;

use super::index::HistoryIndex;
use crate::id::{ChunkId, ManifestId, NodeId};
use crate::manifest::log::{LogOp, LogRecord, Version};
use crate::store::PinRecord;
use crate::wire::{self, Pin, Stripes, Unpin};

/// `owner`'s signed pin of `manifest`, which needs `chunks`: whole chunks,
/// or with `erasure`, the shards of each stripe in turn.
pub fn signed_pin(owner: &OwnerKeys, manifest: ManifestId, chunks: &[ChunkId], erasure: Option<Stripes>) -> Pin {
    let owner_id = owner.owner_id();
    let (domain, message) = wire::pin_signing(&owner_id, &manifest, chunks, erasure);
    Pin {
        owner: owner_id,
        manifest,
        chunks: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
        signature: owner.sign(domain, &message),
        erasure,
    }
}

/// `owner`'s signed unpin of `manifest`.
pub fn signed_unpin(owner: &OwnerKeys, manifest: ManifestId) -> Unpin {
    let owner_id = owner.owner_id();
    let signature = owner.sign(wire::UNPIN_DOMAIN, &wire::unpin_message(&owner_id, &manifest));
    Unpin { owner: owner_id, manifest, signature }
}

/// Records a version whose chunks are durable at `destination`: publishes
/// it there, then keeps it in the home's records (see the module doc).
pub fn record_version(
    catalog: &dyn Catalog,
    destination: &dyn Destination,
    owner: &OwnerKeys,
    version: &Published<'_>,
    sealed: &[([u8; 32], ChunkId)],
) -> Result<(), TransferError> {
    destination.publish(version)?;
    let pin = PinRecord { owner: owner.owner_id(), manifest: version.manifest, chunks: version.kept() };
    catalog.record(Change {
        entries: std::slice::from_ref(version.entry),
        version: Some((version.envelope, &pin)),
        unpins: &[],
        sealed,
    })
}

/// Keeps in the home's records a version whose log entry is in the log
/// already: its manifest and pin, with no new entry.
pub fn keep_version(
    catalog: &dyn Catalog,
    owner: &OwnerKeys,
    manifest: ManifestId,
    envelope: &[u8],
    chunks: &[ChunkId],
    sealed: &[([u8; 32], ChunkId)],
) -> Result<(), TransferError> {
    let pin = PinRecord { owner: owner.owner_id(), manifest, chunks: chunks.to_vec() };
    catalog.record(Change { entries: &[], version: Some((envelope, &pin)), unpins: &[], sealed })
}

/// What a retraction reached.
#[derive(Debug, Default)]
pub struct Retracted {
    /// The nodes that confirmed every unpin.
    pub confirmed: HashSet<NodeId>,
    /// Nodes that did not, and why.
    pub unconfirmed: Vec<(NodeId, String)>,
}

/// Tombstones `versions` in the owner's log and unpins them: in the home's
/// records, then on every peer of `swarm`. Their chunks stay until garbage
/// collection.
pub fn retract_versions(
    catalog: &dyn Catalog,
    index: &HistoryIndex,
    swarm: Option<&Swarm>,
    owner: &OwnerKeys,
    versions: &[Version],
) -> Result<Retracted, TransferError> {
    let unpins: Vec<_> = versions.iter().map(|v| (owner.owner_id(), v.manifest)).collect();
    let mut attempts = 0;
    loop {
        let mut history = index.sync(owner, catalog, true)?;
        let mut entries = Vec::with_capacity(versions.len());
        // A version another command (or an earlier attempt of this one,
        // through a node that took part of it) removed already needs no
        // entry; it is still unpinned below.
        let mut live = Vec::new();
        for version in versions {
            if history.by_manifest(&version.manifest)?.is_some_and(|v| v.is_live()) {
                live.push(version);
            }
        }
        for version in live {
            let record = LogRecord { time_ms: unix_time_ms(), op: LogOp::Remove { manifest: version.manifest } };
            entries.push(history.append(owner, record, rand::random())?);
        }
        match catalog.record(Change { entries: &entries, version: None, unpins: &unpins, sealed: &[] }) {
            Ok(()) => break,
            // Another command of this owner appended first: remove on top of it.
            Err(e) if e.is_log_conflict() && attempts < super::MAX_LOG_RETRIES => attempts += 1,
            Err(e) => return Err(e),
        }
    }
    let Some(swarm) = swarm else { return Ok(Retracted::default()) };
    let manifests: Vec<ManifestId> = versions.iter().map(|v| v.manifest).collect();
    Ok(send_unpins(swarm, owner, &manifests, None))
}

/// Sends the owner's signed unpin of every one of `manifests` to the live
/// members of `swarm` (those in `only`, if given), each member's in order.
pub fn send_unpins(
    swarm: &Swarm,
    owner: &OwnerKeys,
    manifests: &[ManifestId],
    only: Option<&HashSet<NodeId>>,
) -> Retracted {
    let unpins: Vec<Unpin> = manifests.iter().map(|m| signed_unpin(owner, *m)).collect();
    let targets: Vec<usize> = swarm
        .live_members()
        .into_iter()
        .filter(|&i| only.is_none_or(|only| only.contains(&swarm.member(i).node())))
        .collect();
    let calls = targets.iter().map(|&index| {
        let unpins = unpins.clone();
        async move {
            for unpin in unpins {
                swarm
                    .with_retry(index, |peer| {
                        let unpin = unpin.clone();
                        async move { peer.unpin(unpin).await }
                    })
                    .await?;
            }
            Ok::<(), crate::net::NetError>(())
        }
    });
    let mut retracted = Retracted::default();
    for (&index, result) in targets.iter().zip(swarm.client().run_all(calls)) {
        let node = swarm.member(index).node();
        match result {
            Ok(()) => {
                retracted.confirmed.insert(node);
            }
            Err(e) => retracted.unconfirmed.push((node, e.to_string())),
        }
    }
    retracted
}
