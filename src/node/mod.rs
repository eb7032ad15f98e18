//! `p2pfs serve`: a storage node.
//!
//! The node owns its home (the lock) for its lifetime. It accepts QUIC
//! connections, admits only peers that prove membership ([`Net::admit`]),
//! and answers every request of docs/PROTOCOL.md from its store, one
//! request per stream ([`handler`]). Everything is bounded: connections by
//! a semaphore, streams per connection by the QUIC transport, and payload
//! bytes held in memory by a byte budget shared by all requests.
//!
//! Shutdown is a future passed in ([`serve`]): when it completes the node
//! stops accepting, closes every connection and returns. Nothing is lost by
//! that: a request is acknowledged only after its effect is durable, and
//! whatever was not acknowledged the sender will send again.

mod handler;
pub mod peers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::home::Home;
use crate::id::NodeId;
use crate::net::{Net, NetError, Tuning};
use crate::wire::PeerInfo;
use peers::{KnownPeer, PeerTable};

/// Most peer connections a node serves at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most payload bytes (chunks, manifests, pin lists) a node holds in memory
/// at once, over all requests.
pub const PAYLOAD_BUDGET: usize = 96 << 20;
/// How often a node exchanges peer lists with the peers it knows.
pub const PEER_EXCHANGE_INTERVAL: Duration = Duration::from_secs(60);

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
}

impl NodeState {
    /// Learns peers from a `Peers` frame and saves the table if it changed.
    pub(crate) fn learn(&self, peers: &[PeerInfo]) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.learn_all(peers, self.net.node_id())
            && let Err(e) = table.save()
        {
            warn!("saving the peer table: {e}");
        }
    }

    /// This node and every peer it knows, as a `Peers` frame carries them.
    pub(crate) fn known(&self) -> Vec<PeerInfo> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(self.me.clone()).chain(table.peers().iter().map(KnownPeer::to_wire)).collect()
    }
}

/// A bound node, ready to serve.
pub struct Node {
    state: Arc<NodeState>,
    bootstrap: Vec<(NodeId, SocketAddr)>,
}

impl Node {
    /// Binds `listen` and writes `serve.json`. Must run inside a tokio runtime.
    pub fn bind(home: Home, listen: SocketAddr, bootstrap: Vec<(NodeId, SocketAddr)>) -> Result<Self, ServeError> {
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
        let info = ServeInfo { pid: std::process::id(), node: net.node_id(), addrs: vec![advertised] };
        let serve_file = home.path().join(SERVE_FILE);
        let json = serde_json::to_vec_pretty(&info).expect("serve info always encodes");
        crate::store::write_durably(home.path(), &serve_file, &json).map_err(|source| ServeError::Io {
            what: "writing serve.json",
            path: serve_file.clone(),
            source,
        })?;
        let me = KnownPeer { node: net.node_id(), addrs: vec![advertised] }.to_wire();
        let state =
            Arc::new(NodeState { home, net, me, table: Mutex::new(table), budget: Semaphore::new(PAYLOAD_BUDGET) });
        Ok(Self { state, bootstrap })
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
        let exchange = tokio::spawn(exchange_peers(Arc::clone(&state), self.bootstrap));
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = state.net.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                        incoming.refuse();
                        continue;
                    };
                    let state = Arc::clone(&state);
                    tasks.spawn(async move {
                        match state.net.admit(incoming).await {
                            Ok(peer) => handler::serve_connection(state, peer).await,
                            Err(e) => info!("refused a connection: {e}"),
                        }
                        drop(permit);
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        info!("shutting down");
        exchange.abort();
        state.net.shutdown().await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(state.home.path().join(SERVE_FILE));
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

/// Dials the bootstrap peers at start, then every known peer now and then,
/// and exchanges peer lists with each.
async fn exchange_peers(state: Arc<NodeState>, bootstrap: Vec<(NodeId, SocketAddr)>) {
    for (node, addr) in &bootstrap {
        let mut table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.learn(*node, &[*addr])
            && let Err(e) = table.save()
        {
            warn!("saving the peer table: {e}");
        }
    }
    loop {
        let known = state.table.lock().unwrap_or_else(PoisonError::into_inner).peers();
        for peer in known {
            let Some(&addr) = peer.addrs.first() else { continue };
            match state.net.connect(peer.node, addr).await {
                Ok(conn) => match conn.exchange_peers(state.known()).await {
                    Ok(theirs) => state.learn(&theirs),
                    Err(e) => debug!("peer exchange with {}: {e}", peer.node.short(16)),
                },
                Err(e) => debug!("peer {} unreachable: {e}", peer.node.short(16)),
            }
        }
        tokio::time::sleep(PEER_EXCHANGE_INTERVAL).await;
    }
}
