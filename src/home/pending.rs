//! Removals some nodes have not confirmed yet: `pending-unpins.json`.
//!
//! `rm` sends the owner's signed unpin to every node it knows. A node that
//! does not answer keeps its pin, and so the chunks, until it hears of the
//! removal; so each version's unconfirmed nodes are written here, and every
//! later command that reaches peers sends the unpins again to those that
//! answer, until each has confirmed (docs/FORMAT.md, "pending-unpins.json").
//! A node the peer table no longer has is dropped from an entry once the
//! entry is [`GIVE_UP_AFTER_MS`] old.
//!
//! Commands of one home may run at once: every change is a read, modify
//! and atomic rewrite under an exclusive flock of the file's own lock.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::id::{ManifestId, NodeId, OwnerId};

/// How long a removal waits for a node the home no longer knows (30 days).
pub const GIVE_UP_AFTER_MS: u64 = 30 * 24 * 3600 * 1000;

/// The file, in the home.
pub const PENDING_FILE: &str = "pending-unpins.json";
const LOCK_FILE: &str = "pending-unpins.lock";

/// One removed version whose unpin some nodes have not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUnpin {
    /// Whose version.
    pub owner: OwnerId,
    /// The removed version's manifest.
    pub manifest: ManifestId,
    /// How the user named it (`name@3`), for messages.
    pub label: String,
    /// Nodes that have not confirmed the unpin.
    pub nodes: BTreeSet<NodeId>,
    /// When it was removed (ms since the Unix epoch).
    pub since_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PendingFile {
    pending: Vec<PendingUnpin>,
}

/// Every pending unpin of the home at `home` (none if there is no file).
pub fn load(home: &Path) -> io::Result<Vec<PendingUnpin>> {
    match std::fs::read(home.join(PENDING_FILE)) {
        Ok(bytes) => serde_json::from_slice::<PendingFile>(&bytes)
            .map(|f| f.pending)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{PENDING_FILE}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Changes the pending unpins of `home` with `change`, under the file's
/// lock; entries left with no node are dropped. Returns what `change` returned.
pub fn update<T>(home: &Path, change: impl FnOnce(&mut Vec<PendingUnpin>) -> T) -> io::Result<T> {
    let lock = OpenOptions::new().write(true).create(true).truncate(false).open(home.join(LOCK_FILE))?;
    lock.lock()?;
    let mut pending = load(home)?;
    let result = change(&mut pending);
    pending.retain(|p| !p.nodes.is_empty());
    let json = serde_json::to_vec_pretty(&PendingFile { pending }).expect("pending unpins always encode");
    crate::store::write_durably(home, &home.join(PENDING_FILE), &json)?;
    unlock(lock);
    Ok(result)
}

fn unlock(lock: File) {
    // Closing the file releases the lock too; this only says when.
    let _ = lock.unlock();
}

/// Records that `nodes` have not confirmed the unpin of `manifest`.
pub fn add(home: &Path, entry: PendingUnpin) -> io::Result<()> {
    update(home, |pending| match pending.iter_mut().find(|p| p.owner == entry.owner && p.manifest == entry.manifest) {
        Some(held) => held.nodes.extend(entry.nodes),
        None => pending.push(entry),
    })
}
