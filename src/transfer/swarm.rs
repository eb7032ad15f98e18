//! The peers one push, pull or removal talks to.
//!
//! A [`Swarm`] is every known peer that answered at the start: each a
//! verified QUIC connection that also answered a peer exchange within
//! [`EXCHANGE_TIMEOUT`], so a member that connects and then stays silent
//! costs a command that long and no more. The pipelines' worker threads
//! call into it through the one blocking facade ([`Client`]), so each worker
//! is one request in flight, on its own stream.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use super::TransferError;
use super::placement;
use crate::home::peers::{Backoff, KnownPeer};
use crate::id::{ManifestId, NodeId};
use crate::net::{Client, NetError, Peer};
use crate::wire::{ErrorCode, PeerInfo};

/// How long a peer may take to answer the peer exchange that admits it to a swarm.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a request a node refused with `Busy` is sent again, and the
/// pause before each: the node has already waited for room by then.
const BUSY_RETRIES: u32 = 2;
const BUSY_PAUSE: Duration = Duration::from_millis(500);

/// One peer of a swarm, and what this transfer did with it.
pub(super) struct Member {
    node: NodeId,
    /// The connection; a new one replaces it if the peer closes it as idle.
    peer: Mutex<Peer>,
    /// Held while one worker makes that new connection, so the others wait
    /// and share it instead of each making one.
    reconnecting: tokio::sync::Mutex<()>,
    addr: SocketAddr,
    gone: AtomicBool,
    failure: Mutex<Option<String>>,
    pub(super) chunks_sent: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) chunks_fetched: AtomicU64,
}

impl Member {
    /// The peer's current connection.
    pub(super) fn peer(&self) -> Peer {
        self.peer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The peer's NodeId.
    pub(super) fn node(&self) -> NodeId {
        self.node
    }
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
    client: Client,
    members: Vec<Member>,
    nodes: Vec<NodeId>,
    /// Peers that could not be reached at the start, and why; a peer in
    /// backoff that was not dialled is here too, its reason starting with
    /// [`SKIPPED`].
    pub unreachable: Vec<(NodeId, String)>,
    /// The peers not dialled because they are in backoff.
    pub skipped: Vec<NodeId>,
    /// Those peers, dialled only if a chunk or manifest is found nowhere
    /// else ([`spares`](Self::spares)): one that came back since its last
    /// failure can still give what only it holds.
    held_back: Vec<KnownPeer>,
    spares: Mutex<Option<Vec<Peer>>>,
    /// Peers the others told of (by peer exchange), unverified, to remember.
    pub learned: Vec<PeerInfo>,
}

/// How the reason of a peer in backoff, not dialled, begins.
pub const SKIPPED: &str = "skipped: ";

impl Swarm {
    /// Connects to every peer of `known` at once (every address of each in
    /// turn); the ones that answer, and answer a peer exchange in time, are
    /// the swarm. Then connects to the peers they told of too (one round).
    pub fn connect(client: &Client, known: &[KnownPeer]) -> Swarm {
        Self::connect_deferring(client, known, &[])
    }

    /// [`connect`](Self::connect), but the peers of `deferred` (in backoff:
    /// they failed lately) are dialled only if none of `known` answers, and
    /// otherwise reported as skipped.
    pub fn connect_deferring(client: &Client, known: &[KnownPeer], deferred: &[(KnownPeer, Backoff)]) -> Swarm {
        let mut swarm = Swarm {
            client: client.clone(),
            members: Vec::new(),
            nodes: Vec::new(),
            unreachable: Vec::new(),
            skipped: Vec::new(),
            held_back: Vec::new(),
            spares: Mutex::new(None),
            learned: Vec::new(),
        };
        let mut told = swarm.dial(known);
        if swarm.members.is_empty() && !deferred.is_empty() {
            tracing::info!("no other peer answered: trying the {} in backoff", deferred.len());
            let peers: Vec<KnownPeer> = deferred.iter().map(|(peer, _)| peer.clone()).collect();
            told.extend(swarm.dial(&peers));
        } else {
            for (peer, backoff) in deferred {
                swarm.skipped.push(peer.node);
                swarm.held_back.push(peer.clone());
                swarm.unreachable.push((peer.node, format!("{SKIPPED}{backoff}")));
            }
        }
        let me = client.node_id();
        let mut learned: HashMap<NodeId, PeerInfo> = HashMap::new();
        for info in told {
            let new = info.node != me
                && !swarm.nodes.contains(&info.node)
                && !swarm.unreachable.iter().any(|(n, _)| *n == info.node);
            if new {
                learned.insert(info.node, info);
            }
        }
        let more: Vec<KnownPeer> = learned.values().map(KnownPeer::from_wire).collect();
        swarm.dial(&more);
        swarm.learned = learned.into_values().collect();
        swarm
    }

    /// Dials `known`, keeps those that answer a peer exchange in time, and
    /// returns the peers they told of.
    fn dial(&mut self, known: &[KnownPeer]) -> Vec<PeerInfo> {
        let net = self.client.net().clone();
        let attempts = known.iter().map(|peer| {
            let net = net.clone();
            async move {
                let (conn, addr) = net.connect_any(peer.node, &peer.addrs).await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(EXCHANGE_TIMEOUT, conn.exchange_peers(Vec::new())).await {
                    Ok(Ok(told)) => Ok((conn, addr, told)),
                    Ok(Err(e)) => Err(format!("connected, but the peer exchange failed: {e}")),
                    Err(_) => Err(format!(
                        "connected, but it did not answer a peer exchange within {} s",
                        EXCHANGE_TIMEOUT.as_secs()
                    )),
                }
            }
        });
        let mut told = Vec::new();
        for (peer, result) in known.iter().zip(self.client.run_all(attempts)) {
            match result {
                Ok((conn, addr, peers)) => {
                    told.extend(peers);
                    self.nodes.push(conn.node_id());
                    self.members.push(Member {
                        node: conn.node_id(),
                        peer: Mutex::new(conn),
                        reconnecting: tokio::sync::Mutex::new(()),
                        addr,
                        gone: AtomicBool::new(false),
                        failure: Mutex::new(None),
                        chunks_sent: AtomicU64::new(0),
                        bytes_sent: AtomicU64::new(0),
                        chunks_fetched: AtomicU64::new(0),
                    });
                }
                Err(why) => self.unreachable.push((peer.node, why)),
            }
        }
        told
    }

    /// The peers held back in backoff, dialled (in parallel, once per
    /// transfer, on first call) for what no member had: the ones that answer.
    pub(super) fn spares(&self) -> Vec<Peer> {
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        spares
            .get_or_insert_with(|| {
                if self.held_back.is_empty() {
                    return Vec::new();
                }
                tracing::info!("asking the {} peers in backoff too", self.held_back.len());
                let net = self.client.net().clone();
                let dials = self.held_back.iter().map(|peer| {
                    let net = net.clone();
                    async move { net.connect_any(peer.node, &peer.addrs).await.map(|(conn, _)| conn) }
                });
                self.client.run_all(dials).into_iter().filter_map(Result::ok).collect()
            })
            .clone()
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

    /// Where each member answered, to remember as verified addresses.
    pub fn answered(&self) -> Vec<(NodeId, SocketAddr)> {
        self.members.iter().map(|m| (m.node, m.addr)).collect()
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    /// Indices of the members still usable.
    pub(super) fn live_members(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| !self.members[i].gone.load(Ordering::Relaxed)).collect()
    }

    /// Live members' indices, best-placed first for `id`.
    pub(super) fn ranked(&self, id: &[u8; 32]) -> Vec<usize> {
        placement::rank(&self.nodes, id)
            .into_iter()
            .filter(|&i| !self.members[i].gone.load(Ordering::Relaxed))
            .collect()
    }

    /// Every peer known at the start (members and those that did not
    /// answer), best-placed first for `id`: each a member's index if it is
    /// still usable, else `None`. Position i is where a push with all of
    /// them live put shard i.
    pub(super) fn ranked_all(&self, id: &[u8; 32]) -> Vec<Option<usize>> {
        let mut all = self.nodes.clone();
        all.extend(self.unreachable.iter().map(|(node, _)| *node));
        placement::rank(&all, id)
            .into_iter()
            .map(|i| (i < self.members.len() && !self.members[i].gone.load(Ordering::Relaxed)).then_some(i))
            .collect()
    }

    /// Whether member `index` is still usable.
    pub(super) fn is_live(&self, index: usize) -> bool {
        !self.members[index].gone.load(Ordering::Relaxed)
    }

    /// Drops a member for the rest of this transfer.
    pub(super) fn drop_member(&self, index: usize, why: &NetError) {
        let member = &self.members[index];
        if !member.gone.swap(true, Ordering::Relaxed) {
            tracing::info!("dropping peer {}: {why}", member.node.short(16));
            *member.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_string());
        }
    }

    /// Whether an error means the peer should not be asked again in this
    /// transfer: it is gone, or it sent something that cannot be trusted.
    pub(super) fn disqualifies(e: &NetError) -> bool {
        e.peer_is_gone()
            || matches!(e, NetError::Corrupt { .. } | NetError::Decode { .. } | NetError::Unexpected { .. })
            || e.remote_code() == Some(ErrorCode::STORAGE_FULL.0)
    }

    /// Runs `request` against member `index`, sending it again (after a
    /// pause) while the node answers `Busy`: it had no room for the
    /// payload in time, which means "retry later", not "gone". A connection
    /// the node closed as idle (after a long pause in the input, say) is
    /// made again, once.
    pub(super) async fn with_retry<T, Fut>(&self, index: usize, request: impl Fn(Peer) -> Fut) -> Result<T, NetError>
    where
        Fut: Future<Output = Result<T, NetError>>,
    {
        let member = &self.members[index];
        let (mut busy, mut reconnected) = (0, false);
        loop {
            match request(member.peer()).await {
                Err(e) if e.remote_code() == Some(ErrorCode::BUSY.0) && busy < BUSY_RETRIES => {
                    busy += 1;
                    tokio::time::sleep(BUSY_PAUSE * busy).await;
                }
                Err(e) if e.closed_as_idle() && !reconnected => {
                    reconnected = true;
                    let _turn = member.reconnecting.lock().await;
                    if member.peer().close_reason().is_some() {
                        let peer = self.client.net().connect(member.node, member.addr).await?;
                        *member.peer.lock().unwrap_or_else(PoisonError::into_inner) = peer;
                    }
                }
                other => return other,
            }
        }
    }

    /// What each peer did in this transfer.
    pub fn report(&self) -> Vec<MemberReport> {
        for m in &self.members {
            let peer = m.peer();
            let stats = peer.connection().stats();
            tracing::debug!(
                "{:?}: mtu {} ({} probes, {} lost, {} black holes), rtt {:?}, {} datagrams out in {} sends, {} in; \
                 {} acks out, {} in; lost {}",
                peer,
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
                node: m.node,
                addr: m.addr,
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
        for index in self.ranked(id.as_bytes()) {
            let member = &self.members[index];
            match self.client.run(self.with_retry(index, |peer| async move { peer.get_manifest(*id).await })) {
                Ok(Some(envelope)) => return Ok(envelope),
                Ok(None) => reasons.push(format!("{}: not there", member.node.short(16))),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        for peer in self.spares() {
            if let Ok(Some(envelope)) = self.client.run(peer.get_manifest(*id)) {
                return Ok(envelope);
            }
        }
        Err(TransferError::ManifestUnavailable {
            manifest: *id,
            peers: self.members.len(),
            reasons: reasons.join("; "),
        })
    }
}
