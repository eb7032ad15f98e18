//! QUIC between nodes: the endpoint, pinned mutual TLS, the membership
//! handshake, and framed request streams.
//!
//! - [`tls`]: certificates from `node.key`, and the verifiers that pin keys.
//! - [`Net`]: one quinn endpoint; [`Net::connect`] dials a NodeId at an
//!   address and [`Net::handshake`] accepts one, both ending with a verified
//!   peer whose membership (the `Hello` proof) has been checked. An accepted
//!   connection gets the admission transport (one stream, a 64 KiB window)
//!   until the node welcomes it as a member ([`Candidate::welcome`]).
//! - [`Peer`]: the requests of docs/PROTOCOL.md, one bidirectional stream
//!   each, every one with deadlines.
//! - [`Client`]: the network for threads that block: the one place they wait on it.
//! - [`stream`]: reading and writing frames and their payloads on a stream.
//!
//! Nothing here knows about stores or files: `node` answers requests and
//! `transfer` makes them.

mod client;
mod peer;
pub mod stream;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};

pub use client::Client;
pub use peer::{Peer, REPLY_TIMEOUT, owner_proof_holds};
pub use tls::Identity;

use crate::id::NodeId;
use crate::wire::{self, DecodeError, ErrorCode, Frame, Hello};

/// The TLS exporter label the membership proof is computed over.
pub const MEMBERSHIP_LABEL: &[u8] = b"p2pfs/1 membership";
/// How long a dial and its TLS handshake may take, once the peer answered.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dial waits for the peer's first handshake reply: a dead peer
/// costs this much and no more. It lets one lost packet each way through
/// (quinn resends a handshake packet after about 300 ms, three times
/// [`INITIAL_RTT`]) on a path of up to ~200 ms round trip.
pub const FIRST_REPLY_TIMEOUT: Duration = Duration::from_millis(750);
/// How long the `Hello` exchange may take once TLS is done, on either side:
/// a connection that has not proved membership by then is closed.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may be silent before it is dead (keep-alives run at a third of it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a connection that has not passed `Hello` may make a node buffer:
/// its whole flow-control window, over all its streams.
pub const ADMISSION_WINDOW: u32 = 64 * 1024;
/// The largest receive (and send) window of a member's connection: room for
/// 16 chunks of 1 MiB in flight twice over. A node gives less when many
/// members are connected, so that their sum stays bounded.
pub const MEMBER_RECEIVE_WINDOW: u32 = 32 << 20;

/// A network operation that failed. Each says which peer and what to try.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The connection could not be made (address unreachable, handshake refused, timeout).
    #[error("no connection to node {node} at {addr}: {reason}; is `p2pfs serve` running there?")]
    Unreachable {
        /// The node dialled (short form).
        node: String,
        /// Where.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// No address is known for the peer.
    #[error("no address is known for node {0}; `p2pfs peers` lists what is known")]
    NoAddress(String),
    /// The peer closed the connection with a p2pfs error code.
    #[error("node {node} closed the connection: {reason} (code {code})")]
    Refused {
        /// The peer (short form).
        node: String,
        /// The error code.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// The peer's membership proof is wrong: it does not hold this network's key.
    #[error("node {0} is not a member of this network (its Hello proof is wrong)")]
    NotMember(String),
    /// The connection failed during a request.
    #[error("connection to node {node} lost: {source}")]
    Connection {
        /// The peer (short form).
        node: String,
        /// quinn's reason.
        source: ConnectionError,
    },
    /// A stream failed during a request.
    #[error("stream to node {node} failed: {reason}")]
    Stream {
        /// The peer (short form).
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("node {node} sent a bad frame: {source}")]
    Decode {
        /// The peer (short form).
        node: String,
        /// The decoder's verdict.
        source: DecodeError,
    },
    /// The peer answered with a frame that does not answer the request.
    #[error("node {node} answered {got:?} to a {asked:?} request")]
    Unexpected {
        /// The peer (short form).
        node: String,
        /// What we asked.
        asked: wire::FrameType,
        /// What came back.
        got: wire::FrameType,
    },
    /// The peer answered with an `Error` frame.
    #[error("node {node} refused the request: {message} (code {code})")]
    Remote {
        /// The peer (short form).
        node: String,
        /// The error code.
        code: u16,
        /// The peer's message.
        message: String,
    },
    /// The peer sent data that does not match what it claims to be.
    #[error("node {node} sent {what} whose bytes do not match its id")]
    Corrupt {
        /// The peer (short form).
        node: String,
        /// Which object.
        what: String,
    },
    /// The peer did not answer in time.
    #[error("node {node} did not answer in time: {what} timed out")]
    Timeout {
        /// The peer (short form).
        node: String,
        /// What took too long.
        what: &'static str,
    },
}

impl NetError {
    /// Whether the two ends hold different network keys: the peer refused
    /// our membership proof, or we refused its.
    pub fn is_other_network(&self) -> bool {
        match self {
            NetError::Refused { code, .. } => *code == u64::from(ErrorCode::NOT_MEMBER.0),
            NetError::NotMember(_) => true,
            _ => false,
        }
    }

    /// Whether the peer itself is unusable (dead, unreachable, refusing us),
    /// as opposed to one request failing.
    pub fn peer_is_gone(&self) -> bool {
        matches!(
            self,
            NetError::Unreachable { .. }
                | NetError::NoAddress(_)
                | NetError::Refused { .. }
                | NetError::NotMember(_)
                | NetError::Connection { .. }
                | NetError::Timeout { .. }
        )
    }

    /// Whether the peer closed the connection because it was idle (or to
    /// make room): a new connection will do.
    pub fn closed_as_idle(&self) -> bool {
        matches!(self, NetError::Refused { code, .. } if *code == u64::from(ErrorCode::IDLE.0))
    }

    /// The error code a peer sent, if it sent one.
    pub fn remote_code(&self) -> Option<u16> {
        match self {
            NetError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How the QUIC transport is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tuning {
    /// Windows, buffers and stream limits sized for bulk transfer (the default).
    #[default]
    Throughput,
    /// quinn's own defaults, kept for comparison (`P2PFS_TRANSPORT=default`).
    QuinnDefaults,
}

impl Tuning {
    /// The tuning `P2PFS_TRANSPORT` asks for: `default` means quinn's defaults.
    pub fn from_env() -> Self {
        match std::env::var("P2PFS_TRANSPORT").as_deref() {
            Ok("default") => Tuning::QuinnDefaults,
            _ => Tuning::Throughput,
        }
    }

    /// What every connection shares: idle timeout and keep-alives, no
    /// unidirectional streams, no datagrams, and (over loopback, tuned)
    /// large packets.
    fn base_transport(self, loopback: bool) -> quinn::TransportConfig {
        let mut config = quinn::TransportConfig::default();
        config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("10 s is a valid idle timeout")));
        config.keep_alive_interval(Some(IDLE_TIMEOUT / 3));
        config.max_concurrent_uni_streams(VarInt::from_u32(0));
        config.datagram_receive_buffer_size(None);
        config.datagram_send_buffer_size(0);
        // Until the first RTT sample, a lost handshake packet is resent
        // after 3 × this: 300 ms rather than quinn's 1 s (as Chromium's
        // QUIC does), so a handshake over a lossy link is not held up for
        // seconds. A slower path costs at most a spurious resend.
        config.initial_rtt(INITIAL_RTT);
        if self == Tuning::Throughput {
            // A whole chunk (up to 16 MiB) fits in one stream's window.
            config.stream_receive_window(VarInt::from_u32(24 << 20));
        }
        if loopback && self == Tuning::Throughput {
            // Loopback carries 64 KiB datagrams, and per-packet work (crypto,
            // acks, syscalls) is most of the cost: start at 16 KiB packets,
            // never fall below, and let MTU discovery go higher. Segmentation
            // offload stays off: quinn would batch up to 64 segments into one
            // send, and the kernel refuses a batch over 64 KiB, which then
            // looks like a black hole.
            config.initial_mtu(LOOPBACK_MTU);
            config.min_mtu(LOOPBACK_MTU);
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(MAX_UDP_PAYLOAD);
            config.mtu_discovery_config(Some(mtu));
            config.enable_segmentation_offload(false);
            let mut cubic = quinn::congestion::CubicConfig::default();
            cubic.initial_window(10 * u64::from(LOOPBACK_MTU));
            config.congestion_controller_factory(Arc::new(cubic));
        }
        config
    }

    /// The transport of connections this node dials: the peer it dialled
    /// is pinned, so it gets the full windows, but may open no streams.
    fn client_transport(self, loopback: bool) -> quinn::TransportConfig {
        let mut config = self.base_transport(loopback);
        config.max_concurrent_bidi_streams(VarInt::from_u32(0));
        let (receive, send) = self.member_windows();
        config.receive_window(VarInt::from_u32(receive));
        config.send_window(send);
        config
    }

    /// The transport of a connection a node accepts, until it passes
    /// `Hello`: one stream (the Hello) and [`ADMISSION_WINDOW`] bytes in
    /// flight each way. [`Candidate::welcome`] opens it up.
    fn admission_transport(self, loopback: bool) -> quinn::TransportConfig {
        let mut config = self.base_transport(loopback);
        config.max_concurrent_bidi_streams(VarInt::from_u32(1));
        config.receive_window(VarInt::from_u32(ADMISSION_WINDOW));
        config.send_window(u64::from(ADMISSION_WINDOW));
        config
    }

    /// Receive and send windows of a member's connection, at most.
    fn member_windows(self) -> (u32, u64) {
        match self {
            // The connection window holds many chunks in flight.
            Tuning::Throughput => (MEMBER_RECEIVE_WINDOW, u64::from(MEMBER_RECEIVE_WINDOW)),
            // quinn's own send window; its receive window is unbounded, which a node cannot allow.
            Tuning::QuinnDefaults => (MEMBER_RECEIVE_WINDOW, 10_000_000),
        }
    }

    fn endpoint(self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::default();
        if self == Tuning::Throughput {
            config.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("within the QUIC limit of 65527");
        }
        config
    }

    fn socket_buffer(self) -> Option<usize> {
        (self == Tuning::Throughput).then_some(4 << 20)
    }
}

/// The largest UDP payload the tuned transport accepts, and what MTU
/// discovery may reach over loopback (whose MTU is 64 KiB). Other paths keep
/// quinn's discovery bound (1452: Ethernet less IP and UDP headers), so
/// segmentation offload never builds a batch the kernel refuses.
pub const MAX_UDP_PAYLOAD: u16 = 65000;
/// The round-trip time assumed before the first sample.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// The packet size a loopback connection starts with and never goes below.
pub const LOOPBACK_MTU: u16 = 16 * 1024;

/// Most requests a peer may have open on one connection at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// This node's QUIC endpoint and the secrets it proves itself with.
#[derive(Clone)]
pub struct Net {
    endpoint: quinn::Endpoint,
    identity: Arc<Identity>,
    node: NodeId,
    network_key: [u8; 32],
    tuning: Tuning,
    client: Arc<quinn::TransportConfig>,
    loopback_client: Arc<quinn::TransportConfig>,
    loopback_server: Option<Arc<quinn::ServerConfig>>,
}

/// Whether `addr` is this host (IPv4 or IPv6 loopback, or IPv4 loopback mapped into IPv6).
fn is_loopback(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(v4) => v4.ip().is_loopback(),
        SocketAddr::V6(v6) => v6.ip().is_loopback() || v6.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl Net {
    /// Binds a UDP socket at `addr`; with `accept`, peers may connect to it.
    /// Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        node_key: &[u8; 32],
        network_key: [u8; 32],
        tuning: Tuning,
        accept: bool,
    ) -> Result<Self, NetError> {
        let identity = Arc::new(Identity::from_node_key(node_key)?);
        let node = NodeId(ed25519_dalek::SigningKey::from_bytes(node_key).verifying_key().to_bytes());
        let (server, loopback_server) = if accept {
            let crypto = Arc::new(
                QuicServerConfig::try_from(tls::server_config(&identity)?)
                    .map_err(|e| tls::TlsError::Config(rustls::Error::General(e.to_string())))?,
            );
            let mut server = quinn::ServerConfig::with_crypto(crypto);
            let mut loopback = server.clone();
            server.transport_config(Arc::new(tuning.admission_transport(false)));
            loopback.transport_config(Arc::new(tuning.admission_transport(true)));
            (Some(server), Some(Arc::new(loopback)))
        } else {
            (None, None)
        };
        let socket = udp_socket(addr, tuning.socket_buffer()).map_err(|source| NetError::Bind { addr, source })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| NetError::Bind { addr, source: std::io::Error::other("no async runtime") })?;
        let endpoint = quinn::Endpoint::new(tuning.endpoint(), server, socket, runtime)
            .map_err(|source| NetError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            identity,
            node,
            network_key,
            tuning,
            client: Arc::new(tuning.client_transport(false)),
            loopback_client: Arc::new(tuning.client_transport(true)),
            loopback_server,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Dials `node` at `addr`: TLS pinned to `node`, then `Hello` both ways.
    pub async fn connect(&self, node: NodeId, addr: SocketAddr) -> Result<Peer, NetError> {
        let short = node.short(16);
        let unreachable = |reason: String| NetError::Unreachable { node: short.clone(), addr, reason };
        let crypto = QuicClientConfig::try_from(tls::client_config(&self.identity, node)?)
            .map_err(|e| tls::TlsError::Config(rustls::Error::General(e.to_string())))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let transport = if is_loopback(addr) { &self.loopback_client } else { &self.client };
        config.transport_config(Arc::clone(transport));
        // A node whose pool of unproven connections is full refuses the
        // attempt; it takes a moment to drain, so try again until the deadline.
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut pause = Duration::from_millis(100);
        let conn = loop {
            let mut connecting = self
                .endpoint
                .connect_with(config.clone(), addr, tls::SERVER_NAME)
                .map_err(|e| unreachable(e.to_string()))?;
            // The server's first flight carries its handshake data: until
            // that arrives, nobody may be there at all. (A failed handshake
            // is the connection's error: awaiting it below returns it.)
            let first_reply = deadline.min(tokio::time::Instant::now() + FIRST_REPLY_TIMEOUT);
            if tokio::time::timeout_at(first_reply, connecting.handshake_data()).await.is_err() {
                return Err(unreachable(format!("no reply within {} ms", FIRST_REPLY_TIMEOUT.as_millis())));
            }
            match tokio::time::timeout_at(deadline, connecting).await {
                Err(_) => return Err(unreachable("timed out".into())),
                Ok(Err(ConnectionError::ConnectionClosed(close)))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Ok(Err(e)) => return Err(closed_or(e, &short, unreachable)),
                Ok(Ok(conn)) => break conn,
            }
        };
        let peer = Peer::new(node, conn);
        let hello = async {
            let (mut send, recv) = peer.open().await?;
            let mine = self.hello(&peer)?;
            stream::write_frame(
                &mut send,
                &Frame::Hello(mine),
                Bytes::new(),
                stream::Pace::at_rate(stream::SENDER_RATE),
            )
            .await
            .map_err(|e| peer.stream_err(e))?;
            let _ = send.finish();
            let reply = stream::FrameReader::new(recv).next_frame().await.map_err(|e| peer.stream_err(e))?;
            match reply {
                Frame::Hello(theirs) if theirs.node == node && self.proves_membership(&peer, &theirs)? => Ok(()),
                Frame::Hello(_) => Err(NetError::NotMember(short.clone())),
                Frame::Error(e) => {
                    Err(NetError::Remote { node: short.clone(), code: e.code.0, message: e.message.to_string() })
                }
                other => Err(NetError::Unexpected {
                    node: short.clone(),
                    asked: wire::FrameType::Hello,
                    got: other.frame_type(),
                }),
            }
        };
        // The server answers at once; allow for a lost packet or two.
        match tokio::time::timeout(HELLO_TIMEOUT * 2, hello).await {
            Err(_) => Err(NetError::Timeout { node: short, what: "the Hello exchange" }),
            Ok(Err(e)) => {
                if matches!(e, NetError::NotMember(_)) {
                    peer.close(
                        ErrorCode::NOT_MEMBER,
                        "your Hello proof is wrong: you are not a member of this network",
                    );
                    return Err(e);
                }
                // A server refusing us resets the Hello stream and closes the
                // connection; the close (with its reason) may arrive second.
                let conn = peer.connection().clone();
                match tokio::time::timeout(Duration::from_secs(1), conn.closed()).await {
                    Ok(closed @ ConnectionError::ApplicationClosed(_)) => Err(closed_or(closed, &short, |_| e)),
                    _ => Err(e),
                }
            }
            Ok(Ok(())) => Ok(peer),
        }
    }

    /// Dials `node` at every one of `addrs` at once and keeps the first
    /// that answers (the others are dropped), so a dead or made-up address
    /// costs no more time than a live one; returns the peer and the address
    /// that answered, or why none did.
    pub async fn connect_any(&self, node: NodeId, addrs: &[SocketAddr]) -> Result<(Peer, SocketAddr), NetError> {
        let mut attempts: futures_util::stream::FuturesUnordered<_> =
            addrs.iter().map(|&addr| async move { (addr, self.connect(node, addr).await) }).collect();
        let mut failure = None;
        while let Some((addr, result)) = futures_util::StreamExt::next(&mut attempts).await {
            match result {
                Ok(peer) => return Ok((peer, addr)),
                // A refusal says more than a timeout elsewhere: keep it.
                Err(e @ (NetError::Refused { .. } | NetError::NotMember(_))) => failure = Some(e),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| NetError::NoAddress(node.short(16))))
    }

    /// The next incoming connection attempt, or `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// The first half of admitting a connection: TLS (within
    /// [`HANDSHAKE_TIMEOUT`]), then the client's `Hello` checked (within
    /// [`HELLO_TIMEOUT`]). Until [`Candidate::welcome`], the connection keeps
    /// the admission transport: one stream and [`ADMISSION_WINDOW`] bytes.
    /// A peer that fails the proof, or is too slow, is closed with
    /// `NotMember` before anything else is read from it.
    pub async fn handshake(&self, incoming: quinn::Incoming) -> Result<Candidate, NetError> {
        let addr = incoming.remote_address();
        let unreachable = |reason: String| NetError::Unreachable { node: "?".into(), addr, reason };
        let loopback = self.loopback_server.as_ref().filter(|_| is_loopback(addr)).map(Arc::clone);
        let accepting = async {
            match loopback {
                Some(config) => incoming.accept_with(config)?.await,
                None => incoming.accept()?.await,
            }
        };
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
            Err(_) => return Err(unreachable("handshake timed out".into())),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(conn)) => conn,
        };
        let node = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(tls::node_id_of))
            .ok_or_else(|| unreachable("the client presented no node certificate".into()))?;
        let peer = Peer::new(node, conn);
        let short = node.short(16);
        let hello = async {
            let (send, recv) = peer.accept_stream().await?;
            let frame = stream::FrameReader::new(recv).next_frame().await.map_err(|e| peer.stream_err(e))?;
            let valid = match &frame {
                Frame::Hello(hello) => hello.node == node && self.proves_membership(&peer, hello)?,
                _ => false,
            };
            if !valid {
                return Err(NetError::NotMember(short.clone()));
            }
            Ok(send)
        };
        match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
            Err(_) => {
                peer.close(ErrorCode::NOT_MEMBER, "no Hello in time");
                Err(NetError::Timeout { node: short, what: "the Hello" })
            }
            Ok(Err(e)) => {
                peer.close(ErrorCode::NOT_MEMBER, "not a member of this network: your Hello proof is wrong");
                Err(e)
            }
            Ok(Ok(send)) => Ok(Candidate { peer, send, net: self.clone() }),
        }
    }

    /// Stops accepting, closes every connection, and waits (briefly) for the
    /// close to reach peers, so that they free what they hold for us at once.
    pub async fn shutdown(&self) {
        self.close(Duration::from_secs(2)).await;
    }

    /// Closes every connection and waits at most `wait` for the closes to
    /// be delivered.
    pub async fn close(&self, wait: Duration) {
        self.endpoint.close(VarInt::from_u32(0), b"closing");
        let _ = tokio::time::timeout(wait, self.endpoint.wait_idle()).await;
    }

    fn hello(&self, peer: &Peer) -> Result<Hello, NetError> {
        Ok(Hello { node: self.node, proof: *self.proof(peer, &self.node)?.as_bytes() })
    }

    /// Whether `hello` carries the right proof for this connection. The
    /// comparison takes the same time whatever the bytes (`blake3::Hash`'s
    /// equality is constant-time).
    fn proves_membership(&self, peer: &Peer, hello: &Hello) -> Result<bool, NetError> {
        Ok(self.proof(peer, &hello.node)? == blake3::Hash::from(hello.proof))
    }

    /// `BLAKE3-keyed(network key, TLS exporter secret ‖ node)` for this connection.
    fn proof(&self, peer: &Peer, node: &NodeId) -> Result<blake3::Hash, NetError> {
        let secret = peer.exporter(MEMBERSHIP_LABEL)?;
        let mut hasher = blake3::Hasher::new_keyed(&self.network_key);
        hasher.update(&secret);
        hasher.update(node.as_bytes());
        Ok(hasher.finalize())
    }
}

/// A connection that passed TLS and proved membership, not yet answered.
/// It still has the admission transport; the node decides whether it may
/// stay ([`Candidate::welcome`]) or not ([`Candidate::refuse`]).
pub struct Candidate {
    peer: Peer,
    send: quinn::SendStream,
    net: Net,
}

impl Candidate {
    /// The peer, verified: its NodeId is its certificate's key.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Opens the member transport (streams, and windows of at most
    /// `receive_window` bytes) and answers with this node's `Hello`.
    pub async fn welcome(mut self, receive_window: u32) -> Result<Peer, NetError> {
        let (max_receive, send_window) = self.net.tuning.member_windows();
        let conn = self.peer.connection();
        conn.set_receive_window(VarInt::from_u32(receive_window.min(max_receive)));
        conn.set_send_window(send_window);
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
        let mine = Frame::Hello(self.net.hello(&self.peer)?);
        let written =
            stream::write_frame(&mut self.send, &mine, Bytes::new(), stream::Pace::at_rate(stream::SENDER_RATE));
        tokio::time::timeout(HELLO_TIMEOUT, written)
            .await
            .map_err(|_| NetError::Timeout { node: self.peer.short(), what: "the Hello reply" })?
            .map_err(|e| self.peer.stream_err(e))?;
        let _ = self.send.finish();
        Ok(self.peer)
    }

    /// Closes the connection with `code` and a reason the peer will see.
    pub fn refuse(self, code: ErrorCode, reason: &str) {
        self.peer.close(code, reason);
    }
}

/// A connection error, as `Refused` when the peer closed it on purpose.
fn closed_or(error: ConnectionError, node: &str, otherwise: impl FnOnce(String) -> NetError) -> NetError {
    match error {
        ConnectionError::ApplicationClosed(close) => NetError::Refused {
            node: node.to_owned(),
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        other => otherwise(other.to_string()),
    }
}

fn udp_socket(addr: SocketAddr, buffer: Option<usize>) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::]; harmless otherwise.
        let _ = socket.set_only_v6(false);
    }
    if let Some(size) = buffer {
        // The kernel caps these at net.core.{r,w}mem_max; asking is enough.
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The group an address counts in for per-address caps: an IPv4 address
/// alone, an IPv6 address by its /56 (what a home or small site is
/// usually given: one host may spread over many /64s).
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[7..].fill(0);
            IpAddr::V6(octets.into())
        }
    }
}

/// `addr` as people write it: an IPv4 address mapped into IPv6
/// (`[::ffff:127.0.0.1]:7070`, what a dual-stack socket reports) as plain IPv4.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_recognised_in_every_spelling_and_nothing_else_is() {
        for addr in ["127.0.0.1:7070", "127.8.9.10:1", "[::1]:7070", "[::ffff:127.0.0.1]:7070"] {
            assert!(is_loopback(addr.parse().unwrap()), "{addr} is loopback");
        }
        for addr in ["192.0.2.1:7070", "0.0.0.0:7070", "[2001:db8::1]:7070", "[::ffff:192.0.2.1]:7070", "[::]:1"] {
            assert!(!is_loopback(addr.parse().unwrap()), "{addr} is not loopback");
        }
    }
}
