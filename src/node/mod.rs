//! `p2pfs serve`: a storage node.
//!
//! The node owns its home (the lock) for its lifetime. It accepts QUIC
//! connections and answers every request of docs/PROTOCOL.md from its store,
//! one request per stream ([`handler`]). What anyone can make it spend is
//! bounded, in this order:
//!
//! - A connection that has not proved membership ([`admission`]): a small
//!   pool of its own with a per-address cap, QUIC Retry under pressure, one
//!   stream, a 64 KiB window and a 2 s `Hello` deadline.
//! - A member's connection ([`members`]): a slot among 256 (8 per NodeId),
//!   closed when idle or when the node needs room, and a share of the QUIC
//!   receive memory.
//! - A member's requests: 128 streams per connection, deadlines on every
//!   frame, payload and reply, and payload bytes held in memory taken from
//!   a node-wide budget of which one address group gets at most half.
//!
//! Every chunk it stores is checked against its id now and then ([`scrub`]),
//! at a fixed, low rate; requests serve chunks without hashing them, since
//! the client verifies each one. What no pin needs any more is collected
//! while it serves, after a grace period, and a quota caps its chunk bytes
//! ([`gc`]).
//! the client verifies each one. A bad copy is quarantined and fetched again
//! from a replica, and every chunk held for a pin is kept on its R
//! best-placed live nodes ([`repair`]).
//!
//! Shutdown is a future passed in ([`Node::serve`]): when it completes the
//! node stops accepting, closes every connection and returns. Nothing is
//! lost by that: a request is acknowledged only after its effect is
//! durable, and whatever was not acknowledged the sender will send again.

mod admission;
mod buffers;
mod gc;
mod handler;
pub mod mdns;
mod members;
mod repair;
#[cfg(any(test, fuzzing))]
pub mod request_model;
mod requests;
mod scrub;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::home::Home;
use crate::home::peers::{self, KnownPeer, PeerTable};
use crate::id::NodeId;
use crate::net::{Net, NetError, Tuning};
use crate::wire::{ErrorCode, PeerInfo};
use admission::{Admission, Decision};
use members::Members;

pub use admission::{MAX_PENDING, MAX_PENDING_PER_IP};
pub use gc::{DEFAULT_GC_GRACE, StoragePolicy, gc_period};
pub use members::{BUDGET_SHARE, MAX_CONNECTIONS_PER_NODE, MAX_MEMBER_CONNECTIONS, MEMBER_IDLE_TIMEOUT};
pub use repair::{
    DEFAULT_REPAIR_INTERVAL, DEFAULT_REPAIR_RATE, DEFAULT_REPLICAS, Health, IDS_PER_BATCH, PINS_PER_BATCH,
    RepairConfig, UNREACHABLE_AFTER,
};
pub use scrub::{SCRUB_FIRST_DELAY, SCRUB_INTERVAL, SCRUB_RATE};

/// Most payload bytes (chunks, manifests, pin lists) a node holds in memory
/// at once, over all requests.
pub const PAYLOAD_BUDGET: usize = 96 << 20;
/// How long a request may wait for room in the payload budget before it is
/// refused with `Busy` (retry later).
pub const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// How often a node exchanges peer lists with the peers it knows.
pub const PEER_EXCHANGE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a peer may take to answer a peer exchange.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most peers a node dials at once during an exchange round.
const EXCHANGE_CONCURRENCY: usize = 8;
/// How often a changed peer table is written to `peers.json`.
const PEERS_FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// The shortest time between two rounds that check addresses heard of.
const VERIFY_GAP: Duration = Duration::from_secs(2);
/// Most peers one such round dials: a member cannot turn a node into a
/// source of handshakes aimed at addresses of its choosing.
const VERIFY_PER_ROUND: usize = 16;
/// Most peers a node tells at once when it has verified a new member, picked
/// at random among those it has verified: each of them does the same, so
/// news of a member spreads through the network in a few such rounds.
pub const GOSSIP_FANOUT: usize = 8;
/// The shortest time between two such rounds, and how long a node waits
/// after a change before it tells (so that several changes go in one round).
const GOSSIP_GAP: Duration = Duration::from_secs(1);

/// The file a running node writes into its home: who it is, where it listens.
pub const SERVE_FILE: &str = "serve.json";

/// What `serve.json` holds while a node runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeInfo {
    /// The serving process.
    pub pid: u32,
    /// Its NodeId.
    pub node: NodeId,
    /// The addresses it listens on.
    pub addrs: Vec<SocketAddr>,
}

impl ServeInfo {
    /// The info a home's running (or last) node left, if any.
    pub fn read(home: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(home.join(SERVE_FILE)).ok()?).ok()
    }
}

/// A serve failure at startup.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The endpoint could not be created.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The home's files could not be written.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What every request handler shares.
pub(crate) struct NodeState {
    pub(crate) home: Home,
    pub(crate) net: Net,
    pub(crate) me: PeerInfo,
    pub(crate) table: Mutex<PeerTable>,
    pub(crate) budget: Semaphore,
    pub(crate) members: Arc<Members>,
    /// Buffers chunk replies are read into, used again.
    pub(crate) reply_buffers: Arc<buffers::ReplyBuffers>,
    /// Repair's settings and what its last pass found.
    pub(crate) repair: repair::RepairState,
    /// Raised when the table gains an address to verify.
    heard_of: Notify,
    /// Raised when a peer is verified for the first time.
    newly_verified: Notify,
    /// The grace of live collection and the quota.
    pub(crate) storage: StoragePolicy,
    /// Asks the collector for a pass after unpins.
    pub(crate) gc_trigger: gc::GcTrigger,
}

impl NodeState {
    /// The store's side of the data requests, under this node's quota.
    pub(crate) fn requests(&self) -> requests::StoreRequests<'_> {
        requests::StoreRequests::new(self.home.store(), self.storage.max_storage)
    }

    /// Learns peers from a `Peers` frame: unverified, until a connection
    /// to them succeeds (the exchange task tries soon). The table is
    /// written later, off the runtime.
    pub(crate) fn learn(&self, peers: &[PeerInfo]) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.learn_all_unverified(peers, self.net.node_id()) {
            self.heard_of.notify_one();
        }
    }

    /// Records that `node` answered at `addr`; a peer verified for the
    /// first time is news the other peers hear of soon.
    fn verified(&self, node: NodeId, addr: SocketAddr) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let new = !table.is_verified(&node);
        table.learn_verified(node, addr);
        if new && table.is_verified(&node) {
            self.newly_verified.notify_one();
        }
    }

    /// This node and every peer it has verified, as a `Peers` frame carries them.
    pub(crate) fn known(&self) -> Vec<PeerInfo> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(self.me.clone()).chain(table.verified_peers().iter().map(KnownPeer::to_wire)).collect()
    }

    /// Writes the peer table if it changed, on the blocking pool.
    async fn flush_peer_table(self: &Arc<Self>) {
        let state = Arc::clone(self);
        let written = tokio::task::spawn_blocking(move || {
            let (path, changes) = {
                let mut table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
                (table.path().to_owned(), table.take_changes())
            };
            let result = match changes {
                Ok(Some(json)) => peers::write_table(&path, &json),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                warn!("saving the peer table {}: {e}", path.display());
                state.table.lock().unwrap_or_else(PoisonError::into_inner).mark_dirty();
            }
        });
        let _ = written.await;
    }
}

/// How a node runs: `p2pfs serve`'s options.
#[derive(Debug, Clone)]
pub struct Config {
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// Peers to dial at start.
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
    /// Announce this node and find members on the LAN by multicast DNS ([`mdns`]).
    pub mdns: bool,
    /// Live collection and the quota (`--gc-grace`, `--max-storage`).
    pub storage: StoragePolicy,
    /// Repair and scrub: replicas, interval, rate.
    pub repair: RepairConfig,
}

impl Config {
    /// A node listening on `listen`, with no bootstrap peers and no mDNS.
    pub fn listening_on(listen: SocketAddr) -> Self {
        Self {
            listen,
            bootstrap: Vec::new(),
            mdns: false,
            storage: StoragePolicy::default(),
            repair: RepairConfig::default(),
        }
    }
}

/// A bound node, ready to serve.
pub struct Node {
    state: Arc<NodeState>,
    bootstrap: Vec<(NodeId, SocketAddr)>,
    /// Where to announce the node by mDNS (the bound address), if asked to.
    mdns: Option<SocketAddr>,
}

impl Node {
    /// Binds `config.listen` and writes `serve.json`. Must run inside a tokio runtime.
    pub fn bind(home: Home, config: Config) -> Result<Self, ServeError> {
        let Config { listen, bootstrap, mdns, storage, repair } = config;
        let keys = home.keys();
        let net = Net::bind(listen, &keys.node, keys.network, Tuning::from_env(), true)?;
        let bound = net.local_addr().map_err(|source| NetError::Bind { addr: listen, source })?;
        let advertised = advertised_addr(bound);
        let table_io = |source| ServeError::Io {
            what: "reading the peer table",
            path: home.path().join(peers::PEERS_FILE),
            source,
        };
        let table = PeerTable::load(home.path()).map_err(table_io)?;
        // Count the store's chunks now, before any request can write one.
        if let Err(e) = home.store().chunk_usage() {
            warn!("counting the store's chunks: {e:#}");
        }
        let info = ServeInfo { pid: std::process::id(), node: net.node_id(), addrs: vec![advertised] };
        let serve_file = home.path().join(SERVE_FILE);
        let json = serde_json::to_vec_pretty(&info).expect("serve info always encodes");
        crate::store::write_durably(home.path(), &serve_file, &json).map_err(|source| ServeError::Io {
            what: "writing serve.json",
            path: serve_file.clone(),
            source,
        })?;
        let me = KnownPeer { node: net.node_id(), addrs: vec![advertised] }.to_wire();
        let state = Arc::new(NodeState {
            home,
            net,
            me,
            table: Mutex::new(table),
            budget: Semaphore::new(PAYLOAD_BUDGET),
            members: Arc::new(Members::default()),
            reply_buffers: Arc::new(buffers::ReplyBuffers::default()),
            repair: repair::RepairState::new(repair),
            heard_of: Notify::new(),
            newly_verified: Notify::new(),
            storage,
            gc_trigger: gc::GcTrigger::default(),
        });
        Ok(Self { state, bootstrap, mdns: mdns.then_some(bound) })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.state.net.node_id()
    }

    /// The address peers can reach it at.
    pub fn addr(&self) -> SocketAddr {
        self.state.me.addrs.first().map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |&a| a.into())
    }

    /// Serves until `shutdown` completes, then closes every connection and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        let mut background = tokio::task::JoinSet::new();
        background.spawn(exchange_peers(Arc::clone(&state), self.bootstrap));
        background.spawn(flush_peer_table_now_and_then(Arc::clone(&state)));
        background.spawn(scrub::scrub_now_and_then(Arc::clone(&state)));
        if let Some(bound) = self.mdns {
            background.spawn(mdns::announce_and_browse(Arc::clone(&state), bound.ip(), bound.port()));
        }
        background.spawn(gc::collect_now_and_then(Arc::clone(&state)));
        background.spawn(repair::repair_now_and_then(Arc::clone(&state)));
        background.spawn(repair::watch_peers(Arc::clone(&state)));
        background.spawn(repair::fetch_quarantined(Arc::clone(&state)));
        let admission = Admission::default();
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = state.net.accept() => {
                    let Some(incoming) = incoming else { break };
                    let ip = incoming.remote_address().ip().to_canonical();
                    match admission.consider(ip, incoming.remote_address_validated()) {
                        Decision::Handshake(slot) => {
                            tasks.spawn(connection(Arc::clone(&state), incoming, slot));
                        }
                        Decision::Retry if incoming.may_retry() => {
                            if let Err(e) = incoming.retry() {
                                e.into_incoming().refuse();
                            }
                        }
                        Decision::Retry => incoming.refuse(),
                        Decision::Refuse(why) => {
                            debug!("refused a connection from {ip}: {why}");
                            incoming.refuse();
                        }
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        info!("shutting down");
        background.abort_all();
        state.net.shutdown().await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        while background.join_next().await.is_some() {}
        state.flush_peer_table().await;
        let _ = std::fs::remove_file(state.home.path().join(SERVE_FILE));
    }
}

/// One accepted connection: its handshake and `Hello` (holding a pending
/// slot), then, once it has a member's place, its requests.
async fn connection(state: Arc<NodeState>, incoming: quinn::Incoming, slot: admission::Slot) {
    let from = incoming.remote_address();
    let candidate = tokio::select! {
        result = state.net.handshake(incoming) => match result {
            Ok(candidate) => candidate,
            Err(e) => {
                info!("refused a connection from {from}: {e}");
                return;
            }
        },
        // Dropping the handshake closes the connection.
        () = slot.given_away() => {
            debug!("an unproven connection from {from} gave way to a newcomer");
            return;
        }
    };
    drop(slot);
    let (window, membership) = match state.members.join(candidate.peer()) {
        Ok(joined) => joined,
        Err(why) => {
            info!("refused member {} at {from}: {why}", candidate.peer().node_id().short(16));
            candidate.refuse(ErrorCode::BUSY, why);
            return;
        }
    };
    match candidate.welcome(window).await {
        Ok(peer) => handler::serve_connection(state, peer, membership).await,
        Err(e) => debug!("member at {from} left during its Hello: {e}"),
    }
}

/// The address to advertise for a bound socket: an unspecified IP becomes
/// loopback (pass `--listen` a concrete address, or `invite --addr`, to
/// advertise another).
fn advertised_addr(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        let ip =
            if bound.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    }
}

/// Dials the bootstrap peers at start, then every known peer now and then
/// (a few at once, every address of each in turn, none in backoff), and
/// exchanges peer lists with each that answers. Between those rounds:
/// addresses heard of are checked soon after they arrive (at most one such
/// round per [`VERIFY_GAP`]), and a peer verified for the first time is
/// told to [`GOSSIP_FANOUT`] random peers at once (at most one such round
/// per [`GOSSIP_GAP`]), so a new member is known to all within seconds.
/// After a round in which some peer answered (so this node's own network
/// works), peers unseen for [`peers::PEER_MAX_AGE`] are dropped.
async fn exchange_peers(state: Arc<NodeState>, bootstrap: Vec<(NodeId, SocketAddr)>) {
    for (node, addr) in bootstrap {
        state.verified(node, addr);
    }
    let mut next_round = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_round) => {
                let (ready, deferred) = {
                    let table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
                    table.dial_plan(peers::unix_now())
                };
                if !deferred.is_empty() {
                    debug!("{} peers in backoff are not dialled this round", deferred.len());
                }
                let answered = exchange_round(&state, ready, false).await;
                if answered > 0 {
                    let gone = state.table.lock().unwrap_or_else(PoisonError::into_inner).age_out(peers::unix_now());
                    for node in gone {
                        info!("forgot peer {}: unseen for {} days", node.short(16), peers::PEER_MAX_AGE.as_secs() / 86_400);
                    }
                }
                next_round = tokio::time::Instant::now() + PEER_EXCHANGE_INTERVAL;
            }
            () = state.heard_of.notified() => {
                let mut heard = state.table.lock().unwrap_or_else(PoisonError::into_inner).unverified_peers();
                // In no order anyone can choose: made-up NodeIds must not always go first.
                heard.shuffle(&mut rand::rng());
                if heard.len() > VERIFY_PER_ROUND {
                    heard.truncate(VERIFY_PER_ROUND);
                    // The rest wait for the next round.
                    state.heard_of.notify_one();
                }
                exchange_round(&state, heard, true).await;
                tokio::time::sleep(VERIFY_GAP).await;
            }
            () = state.newly_verified.notified() => {
                // Let the changes of a moment gather into one round.
                tokio::time::sleep(GOSSIP_GAP).await;
                let mut told = {
                    let table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
                    table.dial_plan(peers::unix_now()).0
                };
                told.retain(|peer| state.table.lock().unwrap_or_else(PoisonError::into_inner).is_verified(&peer.node));
                told.shuffle(&mut rand::rng());
                told.truncate(GOSSIP_FANOUT);
                exchange_round(&state, told, false).await;
            }
        }
    }
}

/// Exchanges peers with each of `peers`, a few at once, and returns how
/// many answered. With `verifying`, the addresses are ones heard of, and
/// those that do not answer are dropped; a known peer that does not answer
/// is in backoff.
async fn exchange_round(state: &Arc<NodeState>, peers: Vec<KnownPeer>, verifying: bool) -> usize {
    let answered = std::sync::atomic::AtomicUsize::new(0);
    futures_util::stream::iter(peers)
        .for_each_concurrent(EXCHANGE_CONCURRENCY, |peer| {
            let state = Arc::clone(state);
            let answered = &answered;
            async move {
                if exchange_with(&state, &peer, verifying).await {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await;
    state.flush_peer_table().await;
    answered.into_inner()
}

/// One exchange; whether the peer answered.
async fn exchange_with(state: &NodeState, peer: &KnownPeer, verifying: bool) -> bool {
    let short = peer.node.short(16);
    let (conn, addr) = match state.net.connect_any(peer.node, &peer.addrs).await {
        Ok(connected) => connected,
        Err(e) => {
            debug!("peer {short} unreachable: {e}");
            let mut table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
            if verifying {
                table.drop_unverified(&peer.node, &peer.addrs);
            } else {
                table.record_failure(&peer.node, peers::unix_now());
            }
            return false;
        }
    };
    state.verified(peer.node, addr);
    match tokio::time::timeout(EXCHANGE_TIMEOUT, conn.exchange_peers(state.known())).await {
        Ok(Ok(theirs)) => state.learn(&theirs),
        Ok(Err(e)) => debug!("peer exchange with {short}: {e}"),
        Err(_) => debug!("peer exchange with {short} timed out"),
    }
    conn.close(ErrorCode(0), "peer exchange done");
    true
}

async fn flush_peer_table_now_and_then(state: Arc<NodeState>) {
    loop {
        tokio::time::sleep(PEERS_FLUSH_INTERVAL).await;
        state.flush_peer_table().await;
    }
}
