//! The peer table: which nodes this home knows, and where they listen.
//!
//! A small JSON file, `peers.json` in the home, replaced atomically (temp
//! file, fsync, rename). `serve` adds what bootstrap peers and peer exchange
//! tell it; `init --join` and `push`/`pull` add what they learn. It is read
//! without the home's lock, so `p2pfs peers` works beside a running node.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::wire::{self, Bounded, PeerInfo};

/// One known peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Its NodeId.
    pub node: NodeId,
    /// Where it listens, most recently learned first.
    pub addrs: Vec<SocketAddr>,
}

impl KnownPeer {
    /// As a `Peers` frame carries it.
    pub fn to_wire(&self) -> PeerInfo {
        let addrs = self.addrs.iter().take(wire::MAX_PEER_ADDRS).map(|&a| a.into()).collect();
        PeerInfo { node: self.node, addrs: Bounded::new(addrs).expect("at most MAX_PEER_ADDRS were taken") }
    }
}

/// The peer table of a home.
#[derive(Debug)]
pub struct PeerTable {
    path: PathBuf,
    peers: BTreeMap<NodeId, Vec<SocketAddr>>,
}

#[derive(Serialize, Deserialize, Default)]
struct PeerFile {
    peers: Vec<KnownPeer>,
}

/// The file name of the peer table inside a home.
pub const PEERS_FILE: &str = "peers.json";

impl PeerTable {
    /// Loads the home's peer table (empty if there is none yet).
    pub fn load(home: &Path) -> io::Result<Self> {
        let path = home.join(PEERS_FILE);
        let file: PeerFile = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => PeerFile::default(),
            Err(e) => return Err(e),
        };
        let peers = file.peers.into_iter().map(|p| (p.node, p.addrs)).collect();
        Ok(Self { path, peers })
    }

    /// Writes the table back, atomically.
    pub fn save(&self) -> io::Result<()> {
        let file = PeerFile { peers: self.peers() };
        let json = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::store::write_durably(dir, &self.path, &json)
    }

    /// Every known peer, ordered by NodeId.
    pub fn peers(&self) -> Vec<KnownPeer> {
        self.peers.iter().map(|(node, addrs)| KnownPeer { node: *node, addrs: addrs.clone() }).collect()
    }

    /// Whether the table is empty (no network configured).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Learns that `node` listens at `addrs` (put first). Returns whether anything changed.
    pub fn learn(&mut self, node: NodeId, addrs: &[SocketAddr]) -> bool {
        let known = self.peers.entry(node).or_default();
        let before = known.clone();
        for addr in addrs.iter().rev() {
            known.retain(|a| a != addr);
            known.insert(0, *addr);
        }
        known.truncate(wire::MAX_PEER_ADDRS);
        *known != before
    }

    /// Learns every peer of a `Peers` frame except `me`. Returns whether anything changed.
    pub fn learn_all(&mut self, peers: &[PeerInfo], me: NodeId) -> bool {
        let mut changed = false;
        for peer in peers.iter().filter(|p| p.node != me) {
            let addrs: Vec<SocketAddr> = peer.addrs.iter().map(|&a| a.into()).collect();
            changed |= self.learn(peer.node, &addrs);
        }
        changed
    }

    /// Forgets a peer. Returns whether it was known.
    pub fn forget(&mut self, node: &NodeId) -> bool {
        self.peers.remove(node).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_puts_the_newest_address_first_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        assert!(table.is_empty());
        let node = NodeId([3; 32]);
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        assert!(table.learn(node, &[a]));
        assert!(table.learn(node, &[b]));
        assert!(!table.learn(node, &[b]), "nothing new");
        table.save().unwrap();
        let again = PeerTable::load(dir.path()).unwrap();
        assert_eq!(again.peers(), vec![KnownPeer { node, addrs: vec![b, a] }]);
    }
}
