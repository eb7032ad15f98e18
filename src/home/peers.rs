//! The peer table: which nodes this home knows, and where they listen.
//!
//! A small JSON file, `peers.json` in the home, replaced atomically (temp
//! file, fsync, rename). It is read without the home's lock, so `p2pfs
//! peers` works beside a running node.
//!
//! An address is *verified* once a connection to it succeeded (TLS pinned to
//! the peer's key, then the membership proof), or when the user gave it
//! (`init --join`, `--bootstrap`). Addresses other members tell us of in
//! `Peers` frames are *unverified* until then: they are tried after the
//! verified ones, never displace them, and are not passed on. Everything is
//! capped: [`MAX_KNOWN_PEERS`] peers, [`MAX_ADDRS`] addresses of each kind
//! per peer, so no member can grow the table or bury a real address.
//!
//! Each peer also has a liveness record: when it last answered, and how
//! many dials in a row failed since. After a failure a peer is in *backoff*
//! until [`backoff_after`] has passed ([`BACKOFF_FIRST`], doubling up to
//! [`BACKOFF_MAX`]): commands and the node's exchange skip it meanwhile, so a
//! dead peer costs one short connect timeout and then nothing for a while.
//! A node drops a peer that failed since it was last seen and has not been
//! seen for [`PEER_MAX_AGE`] ([`PeerTable::age_out`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::net::address_group;
use crate::wire::{self, Bounded, PeerInfo};

/// Most peers a table holds.
pub const MAX_KNOWN_PEERS: usize = 256;
/// Most verified, and most unverified, addresses kept per peer.
pub const MAX_ADDRS: usize = 4;
/// Most peers a table holds whose first address is in one address group
/// (an IPv4 address, an IPv6 /56): NodeIds cost a member nothing, and one
/// host must not fill the table with them.
pub const MAX_PEERS_PER_ADDRESS: usize = 16;
/// How long a peer is skipped after its first failed dial.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(30);
/// The longest a peer is skipped, however often it failed.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
/// How long a peer that failed since it last answered stays in a node's
/// table: a week, so a machine switched off for a holiday weekend is still
/// there when it comes back, and one gone for good is not dialled forever.
pub const PEER_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a peer is skipped after `failures` failed dials in a row:
/// [`BACKOFF_FIRST`], doubled for each further failure, at most [`BACKOFF_MAX`].
pub fn backoff_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * (1u32 << doublings)).min(BACKOFF_MAX)
}

/// Now, in seconds since the Unix epoch (what `peers.json` records).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One known peer: where to dial it, verified addresses first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Its NodeId.
    pub node: NodeId,
    /// Where it listens, in the order to try.
    pub addrs: Vec<SocketAddr>,
}

impl KnownPeer {
    /// As a `Peers` frame carries it.
    pub fn to_wire(&self) -> PeerInfo {
        let addrs = self.addrs.iter().take(wire::MAX_PEER_ADDRS).map(|&a| a.into()).collect();
        PeerInfo { node: self.node, addrs: Bounded::new(addrs).expect("at most MAX_PEER_ADDRS were taken") }
    }

    /// From a `Peers` frame.
    pub fn from_wire(info: &PeerInfo) -> Self {
        Self { node: info.node, addrs: info.addrs.iter().map(|&a| a.into()).collect() }
    }
}

/// The addresses known for one peer, and its liveness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Addrs {
    /// Most recently verified first.
    verified: Vec<SocketAddr>,
    /// Most recently heard of first.
    unverified: Vec<SocketAddr>,
    /// When it last answered (Unix seconds).
    last_seen: u64,
    /// Dials that failed in a row since.
    failures: u32,
    /// Not dialled before this (Unix seconds; 0: no backoff).
    retry_at: u64,
}

/// Why a peer is not dialled now: it failed `failures` times in a row and
/// is in backoff for `remaining` more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Failed dials in a row.
    pub failures: u32,
    /// How long until it is tried again.
    pub remaining: Duration,
}

impl std::fmt::Display for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in backoff after {} failed connect{} in a row (next try in {} s; `p2pfs peers` checks it now)",
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            self.remaining.as_secs().max(1)
        )
    }
}

/// The peer table of a home.
#[derive(Debug)]
pub struct PeerTable {
    path: PathBuf,
    peers: BTreeMap<NodeId, Addrs>,
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct PeerEntry {
    node: NodeId,
    /// Verified addresses.
    addrs: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unverified: Vec<SocketAddr>,
    /// When it last answered, Unix seconds (absent in files written before
    /// liveness was recorded: then the time the file is loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
    /// Failed dials in a row since.
    #[serde(default, skip_serializing_if = "is_zero")]
    failures: u32,
    /// Not dialled before this, Unix seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    retry_at: u64,
}

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Serialize, Deserialize, Default)]
struct PeerFile {
    peers: Vec<PeerEntry>,
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
        let mut table = Self { path, peers: BTreeMap::new(), dirty: false };
        let now = unix_now();
        for entry in file.peers {
            for addr in entry.addrs.iter().rev() {
                table.learn_verified(entry.node, *addr);
            }
            table.learn_unverified(entry.node, &entry.unverified);
            if let Some(addrs) = table.peers.get_mut(&entry.node) {
                addrs.last_seen = entry.last_seen.unwrap_or(now);
                addrs.failures = entry.failures;
                addrs.retry_at = entry.retry_at;
            }
        }
        table.dirty = false;
        Ok(table)
    }

    /// Writes the table back, atomically, if it changed.
    pub fn save(&mut self) -> io::Result<()> {
        match self.take_changes()? {
            Some(json) => write_table(&self.path, &json),
            None => Ok(()),
        }
    }

    /// The file's new contents if the table changed since it was loaded or
    /// last taken (it is then clean), so that a caller can write them
    /// without holding the table ([`write_table`]).
    pub fn take_changes(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.dirty {
            return Ok(None);
        }
        let peers = self
            .peers
            .iter()
            .map(|(node, addrs)| PeerEntry {
                node: *node,
                addrs: addrs.verified.clone(),
                unverified: addrs.unverified.clone(),
                last_seen: (addrs.last_seen != 0).then_some(addrs.last_seen),
                failures: addrs.failures,
                retry_at: addrs.retry_at,
            })
            .collect();
        let json = serde_json::to_vec_pretty(&PeerFile { peers }).map_err(io::Error::other)?;
        self.dirty = false;
        Ok(Some(json))
    }

    /// Marks the table changed (a write of its changes failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Where the table is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether something changed since the table was loaded or saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Every known peer, ordered by NodeId, with every address (verified first).
    pub fn peers(&self) -> Vec<KnownPeer> {
        self.peers
            .iter()
            .map(|(node, addrs)| KnownPeer {
                node: *node,
                addrs: addrs.verified.iter().chain(&addrs.unverified).copied().collect(),
            })
            .collect()
    }

    /// Every known peer with the addresses to dial it at: its verified ones
    /// if it has any, else those heard of. (A heard-of address next to a
    /// verified one is only tried by the verification round, so nobody can
    /// aim every dial of a real peer at addresses of their choosing.)
    pub fn dial_list(&self) -> Vec<KnownPeer> {
        self.peers
            .iter()
            .map(|(node, addrs)| {
                let dial = if addrs.verified.is_empty() { &addrs.unverified } else { &addrs.verified };
                KnownPeer { node: *node, addrs: dial.clone() }
            })
            .collect()
    }

    /// [`dial_list`](Self::dial_list) split at `now`: the peers to dial,
    /// and those in backoff (to dial only if none of the others answers).
    pub fn dial_plan(&self, now: u64) -> (Vec<KnownPeer>, Vec<(KnownPeer, Backoff)>) {
        let (mut ready, mut deferred) = (Vec::new(), Vec::new());
        for peer in self.dial_list() {
            match self.backoff(&peer.node, now) {
                Some(backoff) => deferred.push((peer, backoff)),
                None => ready.push(peer),
            }
        }
        (ready, deferred)
    }

    /// The peers with a verified address, and only those addresses: what
    /// this node tells others.
    pub fn verified_peers(&self) -> Vec<KnownPeer> {
        self.peers
            .iter()
            .filter(|(_, addrs)| !addrs.verified.is_empty())
            .map(|(node, addrs)| KnownPeer { node: *node, addrs: addrs.verified.clone() })
            .collect()
    }

    /// The peers with addresses nobody has verified yet, and only those
    /// addresses: what a node dials to find out whether they are real.
    pub fn unverified_peers(&self) -> Vec<KnownPeer> {
        self.peers
            .iter()
            .filter(|(_, addrs)| !addrs.unverified.is_empty())
            .map(|(node, addrs)| KnownPeer { node: *node, addrs: addrs.unverified.clone() })
            .collect()
    }

    /// Whether the table is empty (no network configured).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether `node` is known.
    pub fn knows(&self, node: &NodeId) -> bool {
        self.peers.contains_key(node)
    }

    /// Records that `node` answered at `addr` (or that the user says it
    /// listens there): it goes first. Returns whether anything changed. A
    /// peer that would be one too many verified at that address group is
    /// not kept (nor its heard-of addresses), however it got into the table.
    pub fn learn_verified(&mut self, node: NodeId, addr: SocketAddr) -> bool {
        let verified_before = self.peers.get(&node).is_some_and(|a| !a.verified.is_empty());
        if !verified_before && self.crowded_verified(addr) {
            self.dirty |= self.peers.remove(&node).is_some();
            return false;
        }
        if !self.peers.contains_key(&node) && !self.make_room() {
            return false;
        }
        let addrs = self.peers.entry(node).or_default();
        let before = addrs.clone();
        addrs.unverified.retain(|a| *a != addr);
        addrs.verified.retain(|a| *a != addr);
        addrs.verified.insert(0, addr);
        addrs.verified.truncate(MAX_ADDRS);
        let changed = *addrs != before;
        addrs.last_seen = unix_now();
        addrs.failures = 0;
        addrs.retry_at = 0;
        self.dirty |= changed || before.failures != 0 || before.last_seen != addrs.last_seen;
        changed
    }

    /// Whether `node` has a verified address.
    pub fn is_verified(&self, node: &NodeId) -> bool {
        self.peers.get(node).is_some_and(|a| !a.verified.is_empty())
    }

    /// Records that a dial of `node` failed at `now` (Unix seconds): it is
    /// in backoff for [`backoff_after`] its failures in a row. A peer
    /// nobody verified is forgotten instead (it never answered anyone).
    pub fn record_failure(&mut self, node: &NodeId, now: u64) {
        let Some(addrs) = self.peers.get_mut(node) else { return };
        if addrs.verified.is_empty() {
            self.peers.remove(node);
        } else {
            addrs.failures = addrs.failures.saturating_add(1);
            addrs.retry_at = now.saturating_add(backoff_after(addrs.failures).as_secs());
        }
        self.dirty = true;
    }

    /// Whether `node` is in backoff at `now`, and for how long.
    pub fn backoff(&self, node: &NodeId, now: u64) -> Option<Backoff> {
        let addrs = self.peers.get(node)?;
        (addrs.retry_at > now)
            .then(|| Backoff { failures: addrs.failures, remaining: Duration::from_secs(addrs.retry_at - now) })
    }

    /// When `node` last answered (Unix seconds), if known.
    pub fn last_seen(&self, node: &NodeId) -> Option<u64> {
        self.peers.get(node).map(|a| a.last_seen).filter(|&t| t != 0)
    }

    /// Drops every peer that failed since it last answered and has not
    /// answered for [`PEER_MAX_AGE`] at `now`. Returns those dropped.
    pub fn age_out(&mut self, now: u64) -> Vec<NodeId> {
        let cutoff = now.saturating_sub(PEER_MAX_AGE.as_secs());
        let old: Vec<NodeId> =
            self.peers.iter().filter(|(_, a)| a.failures > 0 && a.last_seen < cutoff).map(|(node, _)| *node).collect();
        for node in &old {
            self.peers.remove(node);
        }
        self.dirty |= !old.is_empty();
        old
    }

    /// The known peers whose NodeId starts with `prefix` (hex digits, any case).
    pub fn matching(&self, prefix: &str) -> Vec<NodeId> {
        let prefix = prefix.to_ascii_lowercase();
        self.peers.keys().filter(|node| node.to_string().starts_with(&prefix)).copied().collect()
    }

    /// Records addresses another member says `node` has: after every
    /// verified one, and only as many as [`MAX_ADDRS`]. Returns whether
    /// anything changed.
    pub fn learn_unverified(&mut self, node: NodeId, heard: &[SocketAddr]) -> bool {
        let heard: Vec<SocketAddr> = heard.iter().copied().filter(|a| !a.ip().is_unspecified()).collect();
        let Some(&first) = heard.first() else { return false };
        if !self.peers.contains_key(&node) && (self.crowded(first) || !self.make_room()) {
            return false;
        }
        let addrs = self.peers.entry(node).or_default();
        let before = addrs.clone();
        for addr in heard.iter().rev().filter(|a| !before.verified.contains(a)) {
            addrs.unverified.retain(|a| a != addr);
            addrs.unverified.insert(0, *addr);
        }
        addrs.unverified.truncate(MAX_ADDRS);
        let changed = *addrs != before;
        self.dirty |= changed;
        changed
    }

    /// Learns every peer of a `Peers` frame except `me`, unverified.
    /// Returns whether anything changed.
    pub fn learn_all_unverified(&mut self, peers: &[PeerInfo], me: NodeId) -> bool {
        let mut changed = false;
        for peer in peers.iter().filter(|p| p.node != me) {
            changed |= self.learn_unverified(peer.node, &KnownPeer::from_wire(peer).addrs);
        }
        changed
    }

    /// Drops addresses heard of for `node` that did not answer; a peer
    /// left with no address at all is forgotten.
    pub fn drop_unverified(&mut self, node: &NodeId, failed: &[SocketAddr]) {
        let Some(addrs) = self.peers.get_mut(node) else { return };
        let before = addrs.unverified.len();
        addrs.unverified.retain(|a| !failed.contains(a));
        self.dirty |= addrs.unverified.len() != before;
        if addrs.verified.is_empty() && addrs.unverified.is_empty() {
            self.peers.remove(node);
        }
    }

    /// Forgets a peer. Returns whether it was known.
    pub fn forget(&mut self, node: &NodeId) -> bool {
        let known = self.peers.remove(node).is_some();
        self.dirty |= known;
        known
    }

    /// Whether the address group of `addr` already has its share of peers,
    /// counting each by its first address, verified or heard of.
    fn crowded(&self, addr: SocketAddr) -> bool {
        let group = address_group(addr.ip());
        let first = |a: &Addrs| a.verified.first().or(a.unverified.first()).copied();
        self.peers.values().filter_map(first).filter(|a| address_group(a.ip()) == group).count()
            >= MAX_PEERS_PER_ADDRESS
    }

    /// Whether the address group of `addr` already has its share of
    /// verified peers, counting each by every group it has verified addresses in.
    fn crowded_verified(&self, addr: SocketAddr) -> bool {
        let group = address_group(addr.ip());
        let in_group = |a: &Addrs| a.verified.iter().any(|v| address_group(v.ip()) == group);
        self.peers.values().filter(|a| in_group(a)).count() >= MAX_PEERS_PER_ADDRESS
    }

    /// Room for one more peer: there is some, or a peer nobody has verified
    /// gives its place. Verified peers are never pushed out.
    fn make_room(&mut self) -> bool {
        if self.peers.len() < MAX_KNOWN_PEERS {
            return true;
        }
        let Some(victim) = self.peers.iter().find(|(_, a)| a.verified.is_empty()).map(|(n, _)| *n) else {
            return false;
        };
        self.peers.remove(&victim);
        self.dirty = true;
        true
    }
}

/// Writes a table's contents (from [`PeerTable::take_changes`]) to `path`, atomically.
pub fn write_table(path: &Path, json: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::store::write_durably(dir, path, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn info(node: NodeId, ports: &[u16]) -> PeerInfo {
        KnownPeer { node, addrs: ports.iter().map(|&p| addr(p)).collect() }.to_wire()
    }

    #[test]
    fn verified_addresses_come_first_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        assert!(table.is_empty());
        let node = NodeId([3; 32]);
        assert!(table.learn_verified(node, addr(1)));
        assert!(table.learn_unverified(node, &[addr(9)]));
        assert!(table.learn_verified(node, addr(2)));
        assert!(!table.learn_verified(node, addr(2)), "nothing new");
        assert!(table.is_dirty());
        table.save().unwrap();
        assert!(!table.is_dirty());
        let again = PeerTable::load(dir.path()).unwrap();
        assert_eq!(again.peers(), vec![KnownPeer { node, addrs: vec![addr(2), addr(1), addr(9)] }]);
        assert_eq!(again.verified_peers(), vec![KnownPeer { node, addrs: vec![addr(2), addr(1)] }]);
    }

    #[test]
    fn heard_addresses_never_bury_or_evict_verified_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let me = NodeId([0; 32]);
        let real = NodeId([1; 32]);
        table.learn_verified(real, addr(7070));
        for round in 0..200u16 {
            let fake: Vec<u16> = (0..8).map(|i| 10_000 + round * 8 + i).collect();
            let mut frame = vec![info(real, &fake)];
            frame.extend((0..63u16).map(|i| {
                let mut id = [2; 32];
                id[..2].copy_from_slice(&(round * 64 + i).to_le_bytes());
                info(NodeId(id), &[1])
            }));
            table.learn_all_unverified(&frame, me);
        }
        assert!(table.peers().len() <= MAX_KNOWN_PEERS);
        let real_entry = table.peers().into_iter().find(|p| p.node == real).unwrap();
        assert_eq!(real_entry.addrs[0], addr(7070), "the verified address is still first");
        assert!(real_entry.addrs.len() <= 1 + MAX_ADDRS);
        assert_eq!(table.verified_peers(), vec![KnownPeer { node: real, addrs: vec![addr(7070)] }]);
    }

    #[test]
    fn one_host_cannot_fill_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let learned = (0..100u16)
            .filter(|i| {
                let mut id = [6; 32];
                id[..2].copy_from_slice(&i.to_le_bytes());
                table.learn_verified(NodeId(id), addr(9000 + i))
            })
            .count();
        assert_eq!(learned, MAX_PEERS_PER_ADDRESS);
        assert!(table.learn_verified(NodeId([7; 32]), SocketAddr::from(([127, 0, 0, 2], 1))), "another host still can");
    }

    #[test]
    fn a_made_up_first_address_does_not_slip_a_peer_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let host = |port: u16| SocketAddr::from(([127, 0, 0, 9], port));
        let verified = (0..100u16)
            .filter(|i| {
                let mut id = [8; 32];
                id[..2].copy_from_slice(&i.to_le_bytes());
                let node = NodeId(id);
                // Heard of at a made-up address first, then found at the host.
                let fake = SocketAddr::from(([10, 1, (i >> 8) as u8, *i as u8], 1));
                table.learn_unverified(node, &[fake, host(1000 + i)]);
                table.learn_verified(node, host(1000 + i))
            })
            .count();
        assert_eq!(verified, MAX_PEERS_PER_ADDRESS);
        assert_eq!(table.verified_peers().len(), MAX_PEERS_PER_ADDRESS);
    }

    #[test]
    fn dialing_a_verified_peer_never_tries_addresses_heard_of() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let (real, heard) = (NodeId([1; 32]), NodeId([2; 32]));
        table.learn_verified(real, addr(1));
        table.learn_unverified(real, &[addr(666)]);
        table.learn_unverified(heard, &[addr(2)]);
        let dial = table.dial_list();
        assert_eq!(
            dial,
            vec![KnownPeer { node: real, addrs: vec![addr(1)] }, KnownPeer { node: heard, addrs: vec![addr(2)] }]
        );
    }

    #[test]
    fn a_full_table_keeps_its_verified_peers() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        for i in 0..MAX_KNOWN_PEERS as u16 {
            let mut id = [5; 32];
            id[..2].copy_from_slice(&i.to_le_bytes());
            let host = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7070));
            assert!(table.learn_verified(NodeId(id), host));
        }
        assert!(!table.learn_unverified(NodeId([9; 32]), &[addr(1)]), "no verified peer gives way");
        assert_eq!(table.peers().len(), MAX_KNOWN_PEERS);
    }

    #[test]
    fn a_table_written_before_unverified_addresses_existed_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeId([4; 32]);
        let old = format!(r#"{{"peers":[{{"node":"{node}","addrs":["127.0.0.1:5","127.0.0.1:6"]}}]}}"#);
        fs::write(dir.path().join(PEERS_FILE), old).unwrap();
        let table = PeerTable::load(dir.path()).unwrap();
        assert_eq!(table.verified_peers(), vec![KnownPeer { node, addrs: vec![addr(5), addr(6)] }]);
    }
    #[test]
    fn a_failed_peer_backs_off_longer_each_time_and_an_answer_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let (dead, live) = (NodeId([1; 32]), NodeId([2; 32]));
        table.learn_verified(dead, addr(1));
        table.learn_verified(live, addr(2));
        let now = unix_now();
        table.record_failure(&dead, now);
        let first = table.backoff(&dead, now).unwrap();
        assert_eq!((first.failures, first.remaining), (1, BACKOFF_FIRST));
        let (ready, deferred) = table.dial_plan(now);
        assert_eq!(ready.iter().map(|p| p.node).collect::<Vec<_>>(), vec![live]);
        assert_eq!(deferred.len(), 1);
        assert!(table.backoff(&dead, now + BACKOFF_FIRST.as_secs()).is_none(), "expired");
        table.record_failure(&dead, now);
        assert_eq!(table.backoff(&dead, now).unwrap().remaining, BACKOFF_FIRST * 2);
        for _ in 0..40 {
            table.record_failure(&dead, now);
        }
        assert_eq!(table.backoff(&dead, now).unwrap().remaining, BACKOFF_MAX);
        table.save().unwrap();
        let mut again = PeerTable::load(dir.path()).unwrap();
        assert_eq!(again.backoff(&dead, now).unwrap().failures, 42, "liveness survives a reload");
        again.learn_verified(dead, addr(1));
        assert!(again.backoff(&dead, now).is_none(), "it answered");
    }

    #[test]
    fn only_peers_that_failed_and_were_unseen_for_long_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let (gone, quiet, fresh) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        for (node, port) in [(gone, 1), (quiet, 2), (fresh, 3)] {
            table.learn_verified(node, addr(port));
        }
        let later = unix_now() + PEER_MAX_AGE.as_secs() + 60;
        table.record_failure(&gone, later);
        assert!(table.age_out(unix_now()).is_empty(), "a week has not passed");
        assert_eq!(table.age_out(later), vec![gone]);
        assert!(!table.knows(&gone));
        assert!(table.knows(&quiet), "not dialled since, so not known to be gone");
        assert!(table.knows(&fresh));
    }

    #[test]
    fn a_peer_nobody_verified_is_forgotten_when_its_dial_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let heard = NodeId([9; 32]);
        table.learn_unverified(heard, &[addr(5)]);
        table.record_failure(&heard, unix_now());
        assert!(!table.knows(&heard));
    }

    #[test]
    fn peers_match_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = PeerTable::load(dir.path()).unwrap();
        let (a, b) = (NodeId([0xab; 32]), NodeId([0xac; 32]));
        table.learn_verified(a, addr(1));
        table.learn_verified(b, SocketAddr::from(([127, 0, 0, 2], 1)));
        assert_eq!(table.matching("ABAB"), vec![a]);
        assert_eq!(table.matching("a").len(), 2);
        assert!(table.matching("ff").is_empty());
    }
}
