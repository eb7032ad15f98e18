//! Peers as a push destination and a pull source.
//!
//! A [`Swarm`] is the set of peers one push or pull talks to: every known
//! peer it could reach at the start, each a verified QUIC connection. The
//! pipelines' worker threads call into it and wait on the tokio runtime, so
//! each worker is one request in flight, on its own stream: a push with 16
//! workers has 16 chunks in flight, spread over the peers by placement.
//!
//! - Push ([`Replicate`]): each chunk goes to the R best-placed live peers
//!   (rendezvous order); a peer that fails is dropped and the chunk goes to
//!   the next one in that order. A chunk counts only when acked, and a peer
//!   acks only once the chunk is durable. Chunks of the name's previous
//!   version are asked about first (batched `Has`), so unchanged chunks are
//!   neither sealed nor sent again.
//! - Pull ([`Fetch`]): each chunk from the best-placed live peer that has
//!   it; one that fails or sends bytes that do not hash to the chunk's id is
//!   dropped for the rest of the pull and the next replica is used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::runtime::Handle;

use super::TransferError;
use super::catalog::{Catalog, Change};
use super::placement;
use super::pull::Source;
use super::push::{Destination, Published};
use crate::crypto::OwnerKeys;
use crate::id::{ChunkId, ManifestId, NodeId, OwnerId};
use crate::manifest::ChunkRef;
use crate::manifest::log::LogEntry;
use crate::net::{Net, NetError, Peer};
use crate::node::peers::KnownPeer;
use crate::store::Store;
use crate::wire::{self, ErrorCode, PeerInfo, Pin, Signature, Unpin};

/// One peer of a swarm, and what this transfer did with it.
pub struct Member {
    peer: Peer,
    gone: AtomicBool,
    failure: Mutex<Option<String>>,
    chunks_sent: AtomicU64,
    bytes_sent: AtomicU64,
    chunks_fetched: AtomicU64,
}

/// What one peer got or gave in a transfer, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    /// The peer.
    pub node: NodeId,
    /// Where it was reached.
    pub addr: SocketAddr,
    /// Chunks it acked (push).
    pub chunks_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Chunks fetched from it (pull).
    pub chunks_fetched: u64,
    /// Why it was dropped, if it was.
    pub failure: Option<String>,
}

/// The peers one transfer talks to.
pub struct Swarm {
    runtime: Handle,
    members: Vec<Member>,
    nodes: Vec<NodeId>,
    /// Peers that could not be reached at the start, and why.
    pub unreachable: Vec<(NodeId, String)>,
    /// Peers learned from the others (by peer exchange), to remember.
    pub learned: Vec<PeerInfo>,
}

impl Swarm {
    /// Connects to every peer of `known` at once; the ones that answer are
    /// the swarm. Then asks them for the peers they know, and connects to
    /// those too (one round).
    pub async fn connect(runtime: Handle, net: &Net, known: &[KnownPeer]) -> Swarm {
        let mut swarm =
            Swarm { runtime, members: Vec::new(), nodes: Vec::new(), unreachable: Vec::new(), learned: Vec::new() };
        swarm.dial(net, known).await;
        let mut learned: HashMap<NodeId, PeerInfo> = HashMap::new();
        let exchanges = swarm.members.iter().map(|m| m.peer.exchange_peers(Vec::new()));
        for peers in join_all(exchanges).await.into_iter().flatten() {
            for info in peers {
                let new = info.node != net.node_id()
                    && !swarm.nodes.contains(&info.node)
                    && !swarm.unreachable.iter().any(|(n, _)| *n == info.node);
                if new {
                    learned.insert(info.node, info);
                }
            }
        }
        let more: Vec<KnownPeer> = learned
            .values()
            .map(|info| KnownPeer { node: info.node, addrs: info.addrs.iter().map(|&a| a.into()).collect() })
            .collect();
        swarm.dial(net, &more).await;
        swarm.learned = learned.into_values().collect();
        swarm
    }

    async fn dial(&mut self, net: &Net, known: &[KnownPeer]) {
        let attempts = known.iter().map(|peer| async move {
            let mut last = String::from("no address known");
            for &addr in &peer.addrs {
                match net.connect(peer.node, addr).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) => last = e.to_string(),
                }
            }
            Err((peer.node, last))
        });
        for result in join_all(attempts).await {
            match result {
                Ok(peer) => {
                    self.nodes.push(peer.node_id());
                    self.members.push(Member {
                        peer,
                        gone: AtomicBool::new(false),
                        failure: Mutex::new(None),
                        chunks_sent: AtomicU64::new(0),
                        bytes_sent: AtomicU64::new(0),
                        chunks_fetched: AtomicU64::new(0),
                    });
                }
                Err(unreachable) => self.unreachable.push(unreachable),
            }
        }
    }

    /// How many peers answered.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no peer answered.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How many peers are still usable.
    pub fn live(&self) -> usize {
        self.members.iter().filter(|m| !m.gone.load(Ordering::Relaxed)).count()
    }

    /// Live members' indices, best-placed first for `id`.
    fn ranked(&self, id: &[u8; 32]) -> Vec<usize> {
        placement::rank(&self.nodes, id)
            .into_iter()
            .filter(|&i| !self.members[i].gone.load(Ordering::Relaxed))
            .collect()
    }

    /// Drops a member for the rest of this transfer.
    fn drop_member(&self, index: usize, why: &NetError) {
        let member = &self.members[index];
        if !member.gone.swap(true, Ordering::Relaxed) {
            tracing::warn!("dropping peer {}: {why}", member.peer.node_id().short(16));
            *member.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_string());
        }
    }

    /// Whether an error means "do not use this peer again in this transfer".
    fn disqualifies(error: &NetError) -> bool {
        error.peer_is_gone()
            || matches!(error, NetError::Corrupt { .. } | NetError::Decode { .. } | NetError::Unexpected { .. })
            || error.remote_code() == Some(ErrorCode::STORAGE_FULL.0)
    }

    /// What each peer did, for the summary.
    pub fn report(&self) -> Vec<MemberReport> {
        for m in &self.members {
            let stats = m.peer.connection().stats();
            tracing::debug!(
                "{:?}: mtu {} ({} probes, {} lost, {} black holes), rtt {:?}, {} datagrams out in {} sends, {} in; {} acks out, {} in; lost {}",
                m.peer,
                stats.path.current_mtu,
                stats.path.sent_plpmtud_probes,
                stats.path.lost_plpmtud_probes,
                stats.path.black_holes_detected,
                stats.path.rtt,
                stats.udp_tx.datagrams,
                stats.udp_tx.ios,
                stats.udp_rx.datagrams,
                stats.frame_tx.acks,
                stats.frame_rx.acks,
                stats.path.lost_packets,
            );
        }
        self.members
            .iter()
            .map(|m| MemberReport {
                node: m.peer.node_id(),
                addr: m.peer.remote_addr(),
                chunks_sent: m.chunks_sent.load(Ordering::Relaxed),
                bytes_sent: m.bytes_sent.load(Ordering::Relaxed),
                chunks_fetched: m.chunks_fetched.load(Ordering::Relaxed),
                failure: m.failure.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            })
            .collect()
    }

    /// Fetches a manifest envelope: best-placed peers first, then the rest.
    pub fn fetch_manifest(&self, id: &ManifestId) -> Result<Vec<u8>, TransferError> {
        let mut reasons = Vec::new();
        for index in placement::rank(&self.nodes, id.as_bytes()) {
            let member = &self.members[index];
            match self.runtime.block_on(member.peer.get_manifest(*id)) {
                Ok(Some(envelope)) => return Ok(envelope),
                Ok(None) => reasons.push(format!("{}: not there", member.peer.node_id().short(16))),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(TransferError::ManifestUnavailable {
            manifest: *id,
            peers: self.members.len(),
            reasons: reasons.join("; "),
        })
    }

    /// Removes an owner's pins of `manifests` on every live peer. Returns the
    /// peers that did not confirm, with why.
    pub fn unpin(&self, owner: &OwnerKeys, manifests: &[ManifestId]) -> Vec<String> {
        let mut failures = Vec::new();
        for manifest in manifests {
            let signature = owner.sign(wire::UNPIN_DOMAIN, &wire::unpin_message(&owner.owner_id(), manifest));
            let unpin = Unpin { owner: owner.owner_id(), manifest: *manifest, signature: Signature(signature) };
            let calls = self.members.iter().map(|m| m.peer.unpin(unpin.clone()));
            failures.extend(
                self.runtime.block_on(join_all(calls)).into_iter().filter_map(|r| r.err().map(|e| e.to_string())),
            );
        }
        failures
    }
}

/// Push to peers: R replicas per chunk.
pub struct Replicate<'a> {
    swarm: &'a Swarm,
    owner: &'a OwnerKeys,
    /// Replicas wanted per chunk.
    pub replicas: usize,
    /// Peers holding each chunk of the previous version (from the batched `Has`).
    held: HashMap<ChunkId, usize>,
    /// Sent chunks' buffers, for reuse.
    buffers: Recycler,
}

impl<'a> Replicate<'a> {
    /// Replication to `replicas` peers per chunk (capped by the swarm's size).
    /// `previous` are chunks likely to be there already (the name's previous
    /// version); every live peer is asked about them in batched `Has` requests.
    pub fn new(swarm: &'a Swarm, owner: &'a OwnerKeys, replicas: usize, previous: &[ChunkId]) -> Self {
        let replicas = replicas.clamp(1, swarm.len().max(1));
        let mut held: HashMap<ChunkId, usize> = HashMap::new();
        if !previous.is_empty() {
            let asks = swarm.members.iter().map(|m| m.peer.has(previous));
            for (index, answer) in swarm.runtime.block_on(join_all(asks)).into_iter().enumerate() {
                match answer {
                    Ok(present) => {
                        for (id, _) in previous.iter().zip(present).filter(|(_, p)| *p) {
                            *held.entry(*id).or_default() += 1;
                        }
                    }
                    Err(e) => swarm.drop_member(index, &e),
                }
            }
        }
        Self { swarm, owner, replicas, held, buffers: Recycler::default() }
    }
}

impl Replicate<'_> {
    /// Sends one chunk until `replicas` peers have acked it, in rendezvous order.
    fn replicate(&self, id: &ChunkId, ciphertext: &Bytes) -> Result<bool, TransferError> {
        let swarm = self.swarm;
        let mut acked = 0;
        let mut tried = vec![false; swarm.members.len()];
        let mut failures = Vec::new();
        while acked < self.replicas {
            let batch: Vec<usize> =
                swarm.ranked(id.as_bytes()).into_iter().filter(|&i| !tried[i]).take(self.replicas - acked).collect();
            if batch.is_empty() {
                break;
            }
            let puts = batch.iter().map(|&i| swarm.members[i].peer.put_chunk(*id, ciphertext.clone()));
            for (&index, result) in batch.iter().zip(swarm.runtime.block_on(join_all(puts))) {
                tried[index] = true;
                let member = &swarm.members[index];
                match result {
                    Ok(()) => {
                        acked += 1;
                        member.chunks_sent.fetch_add(1, Ordering::Relaxed);
                        member.bytes_sent.fetch_add(ciphertext.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if Swarm::disqualifies(&e) {
                            swarm.drop_member(index, &e);
                        }
                        failures.push(e.to_string());
                    }
                }
            }
        }
        if acked < self.replicas {
            return Err(TransferError::Replication {
                chunk: *id,
                acked,
                wanted: self.replicas,
                reasons: failures.join("; "),
            });
        }
        Ok(true)
    }
}

/// Sent chunk buffers on their way back to the push pipeline.
///
/// quinn keeps a reference to a stream's data until the peer acknowledges
/// the packets, which can be a moment after the peer's `Ack` frame arrives.
/// A buffer still held then waits here, and the next chunk takes any waiting
/// buffer quinn has let go of, so the pipeline reuses a few allocations
/// instead of faulting in new pages for most chunks.
#[derive(Default)]
struct Recycler {
    waiting: Mutex<Vec<Bytes>>,
}

/// Buffers kept waiting at most; beyond that, quinn frees them when done.
const MAX_WAITING_BUFFERS: usize = 8;

impl Recycler {
    /// An empty buffer of at least `capacity`: `sent`'s own, or one that has
    /// come free since, or a new one.
    fn reclaim(&self, sent: Bytes, capacity: usize) -> Vec<u8> {
        let free = if sent.is_unique() {
            Some(sent)
        } else {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let free = waiting.iter().position(Bytes::is_unique).map(|i| waiting.swap_remove(i));
            if waiting.len() == MAX_WAITING_BUFFERS {
                waiting.remove(0);
            }
            waiting.push(sent);
            free
        };
        // Emptied as a BytesMut: `Bytes::truncate(0)` would let go of the buffer.
        free.and_then(|bytes| bytes.try_into_mut().ok())
            .map(|mut buf| {
                buf.clear();
                Vec::from(buf)
            })
            .filter(|buf| buf.capacity() >= capacity)
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }
}

impl Destination for Replicate<'_> {
    fn holds(&self, id: &ChunkId) -> bool {
        self.held.get(id).is_some_and(|&n| n >= self.replicas)
    }

    fn put(&self, id: &ChunkId, ciphertext: &mut Vec<u8>) -> Result<bool, TransferError> {
        if self.holds(id) {
            return Ok(false);
        }
        // Every replica's stream shares this one buffer; quinn copies it only
        // into packets. It comes back to the pipeline once quinn lets go.
        let capacity = ciphertext.capacity();
        let shared = Bytes::from(std::mem::take(ciphertext));
        let result = self.replicate(id, &shared);
        *ciphertext = self.buffers.reclaim(shared, capacity);
        result
    }

    fn publish(&self, version: &Published<'_>) -> Result<(), TransferError> {
        let swarm = self.swarm;
        let owner_id = self.owner.owner_id();
        let message = wire::pin_message(&owner_id, &version.manifest, version.chunks);
        let signature = Signature(self.owner.sign(wire::PIN_DOMAIN, &message));
        let pin = Pin {
            owner: owner_id,
            manifest: version.manifest,
            chunks: u32::try_from(version.chunks.len()).unwrap_or(u32::MAX),
            signature,
        };
        let entry = version.entry.encode();
        let entry_hash = version.entry.hash();
        // Every live peer keeps the manifest, the pin and the head: the
        // manifest is small, and any of them can then serve a pull by id.
        let publish = |peer: &Peer| {
            let (pin, entry) = (pin.clone(), entry.clone());
            let peer = peer.clone();
            async move {
                peer.put_manifest(version.manifest, version.envelope).await?;
                peer.pin(pin, version.chunks).await?;
                match peer.put_head(entry, entry_hash).await {
                    // A newer head from another machine of this owner is fine.
                    Err(e) if e.remote_code() == Some(ErrorCode::STALE_HEAD.0) => Ok(()),
                    other => other,
                }
            }
        };
        let live: Vec<usize> =
            (0..swarm.members.len()).filter(|&i| !swarm.members[i].gone.load(Ordering::Relaxed)).collect();
        let calls = live.iter().map(|&i| publish(&swarm.members[i].peer));
        let mut published = 0;
        let mut failures = Vec::new();
        for (&index, result) in live.iter().zip(swarm.runtime.block_on(join_all(calls))) {
            match result {
                Ok(()) => published += 1,
                Err(e) => {
                    swarm.drop_member(index, &e);
                    failures.push(e.to_string());
                }
            }
        }
        if published < self.replicas {
            return Err(TransferError::Replication {
                chunk: ChunkId(version.manifest.0),
                acked: published,
                wanted: self.replicas,
                reasons: format!("publishing the manifest: {}", failures.join("; ")),
            });
        }
        Ok(())
    }
}

/// Pull from peers (and the local store first, if it has a chunk).
pub struct Fetch<'a> {
    swarm: &'a Swarm,
    local: Option<&'a Store>,
}

impl<'a> Fetch<'a> {
    /// Fetching from `swarm`, and from `local` first when given.
    pub fn new(swarm: &'a Swarm, local: Option<&'a Store>) -> Self {
        Self { swarm, local }
    }
}

impl Source for Fetch<'_> {
    fn read(&self, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), TransferError> {
        if let Some(store) = self.local
            && store.has_chunk(&chunk.id)
            && store.read_chunk(&chunk.id, chunk.len, buf).is_ok()
        {
            return Ok(());
        }
        let swarm = self.swarm;
        let mut reasons = Vec::new();
        for index in swarm.ranked(chunk.id.as_bytes()) {
            let member = &swarm.members[index];
            match swarm.runtime.block_on(member.peer.get_chunk(chunk.id, buf)) {
                Ok(true) => {
                    member.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(false) => reasons.push(format!("{}: not there", member.peer.node_id().short(16))),
                Err(e) => {
                    if Swarm::disqualifies(&e) {
                        swarm.drop_member(index, &e);
                    }
                    reasons.push(e.to_string());
                }
            }
        }
        Err(TransferError::ChunkUnavailable { chunk: chunk.id, live: swarm.live(), reasons: reasons.join("; ") })
    }
}

/// The node serving this home, as the home's [`Catalog`]: while `p2pfs
/// serve` owns the home, the CLI reads and extends the owner's log, pins and
/// manifests through it. It checks every log entry's signature and place in
/// the chain, and every pin's signature, as it would any peer's.
pub struct Daemon {
    runtime: Handle,
    peer: Peer,
    owner: OwnerKeys,
}

impl Daemon {
    /// The home's node, reached at `peer`; pins are signed with `owner`.
    pub fn new(runtime: Handle, peer: Peer, owner: OwnerKeys) -> Self {
        Self { runtime, peer, owner }
    }

    /// The connection to the node.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// What the node stores.
    pub fn status(&self) -> Result<wire::Status, TransferError> {
        self.runtime.block_on(self.peer.status()).map_err(|source| TransferError::Node { source })
    }

    fn call<T>(&self, request: impl std::future::Future<Output = Result<T, NetError>>) -> Result<T, TransferError> {
        self.runtime.block_on(request).map_err(|source| TransferError::Node { source })
    }
}

impl Catalog for Daemon {
    fn log(&self, owner: &OwnerId) -> Result<Vec<LogEntry>, TransferError> {
        let encoded = self.call(self.peer.get_log(*owner))?;
        let mut entries = Vec::with_capacity(encoded.len());
        for (seq, bytes) in encoded.iter().enumerate() {
            entries.push(LogEntry::decode(seq as u64, bytes)?);
        }
        Ok(entries)
    }

    fn sealed(&self, _tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError> {
        // The sealed-chunk map stays in the node's store: a chunk is sealed
        // again, and the batched `Has` keeps it from travelling again.
        Ok(None)
    }

    fn put_manifest(&self, id: &ManifestId, envelope: &[u8]) -> Result<(), TransferError> {
        self.call(self.peer.put_manifest(*id, envelope))
    }

    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
        self.call(self.peer.get_manifest(*id))
    }

    fn apply(&self, change: Change<'_>) -> Result<(), TransferError> {
        let owner_id = self.owner.owner_id();
        for (manifest, pin) in change.pins {
            let message = wire::pin_message(&owner_id, manifest, &pin.chunks);
            let frame = Pin {
                owner: owner_id,
                manifest: *manifest,
                chunks: u32::try_from(pin.chunks.len()).unwrap_or(u32::MAX),
                signature: Signature(self.owner.sign(wire::PIN_DOMAIN, &message)),
            };
            self.call(self.peer.pin(frame, &pin.chunks))?;
        }
        for entry in change.entries {
            self.call(self.peer.append_log(entry.encode(), entry.hash()))?;
        }
        for manifest in change.unpins {
            let signature = self.owner.sign(wire::UNPIN_DOMAIN, &wire::unpin_message(&owner_id, manifest));
            self.call(self.peer.unpin(Unpin {
                owner: owner_id,
                manifest: *manifest,
                signature: Signature(signature),
            }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A buffer of capacity 4099 that comes back with capacity 4099 is the
    // same one: a new one would have the 4096 asked for.

    #[test]
    fn a_buffer_nobody_else_holds_comes_back_itself() {
        let mut buf = Vec::with_capacity(4099);
        buf.extend_from_slice(&[7; 1000]);
        let back = Recycler::default().reclaim(Bytes::from(buf), 4096);
        assert_eq!((back.len(), back.capacity()), (0, 4099));
    }

    #[test]
    fn a_buffer_still_held_waits_and_is_reused_once_free() {
        let recycler = Recycler::default();
        let mut buf = Vec::with_capacity(4099);
        buf.extend_from_slice(&[7; 1000]);
        let sent = Bytes::from(buf);
        let quinns = sent.clone();
        let first = recycler.reclaim(sent, 4096);
        assert_eq!((first.len(), first.capacity()), (0, 4096), "a buffer still held is not handed out");
        assert_eq!(&quinns[..], &[7; 1000][..], "the other holder's bytes are untouched");

        drop(quinns);
        let other = Bytes::from(Vec::with_capacity(4096));
        let _still_held = other.clone();
        let second = recycler.reclaim(other, 4096);
        assert_eq!((second.len(), second.capacity()), (0, 4099), "the waiting buffer, now free, is reused");
    }
}
