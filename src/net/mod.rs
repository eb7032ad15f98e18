//! QUIC between nodes: the endpoint, pinned mutual TLS, the membership
//! handshake, and framed request streams.
//!
//! - [`tls`]: certificates from `node.key`, and the verifiers that pin keys.
//! - [`Net`]: one quinn endpoint; [`Net::connect`] dials a NodeId at an
//!   address and [`Net::admit`] accepts one, both ending with a verified
//!   [`Peer`] whose membership (the `Hello` proof) has been checked.
//! - [`Peer`]: the requests of docs/PROTOCOL.md, one bidirectional stream each.
//! - [`stream`]: reading and writing frames and their payloads on a stream.
//!
//! Nothing here knows about stores or files: `node` answers requests and
//! `transfer` makes them.

mod peer;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};

pub use peer::Peer;
pub use tls::Identity;

use crate::id::NodeId;
use crate::wire::{self, DecodeError, ErrorCode, Frame, Hello};

/// The TLS exporter label the membership proof is computed over.
pub const MEMBERSHIP_LABEL: &[u8] = b"p2pfs/1 membership";
/// How long a dial, a handshake or a `Hello` may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may be silent before it is dead (keep-alives run at a third of it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A network operation that failed. Each says which peer and what to try.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
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
    #[error("node {0} did not answer in time")]
    Timeout(String),
}

impl NetError {
    /// Whether the peer itself is unusable (dead, unreachable, refusing us),
    /// as opposed to one request failing.
    pub fn peer_is_gone(&self) -> bool {
        matches!(
            self,
            NetError::Unreachable { .. }
                | NetError::Refused { .. }
                | NetError::NotMember(_)
                | NetError::Connection { .. }
                | NetError::Timeout(_)
        )
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

    /// The transport for a connection; `loopback` when the peer is this host.
    fn transport(self, loopback: bool) -> quinn::TransportConfig {
        let mut config = quinn::TransportConfig::default();
        config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("10 s is a valid idle timeout")));
        config.keep_alive_interval(Some(IDLE_TIMEOUT / 3));
        config.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
        config.max_concurrent_uni_streams(VarInt::from_u32(0));
        if self == Tuning::QuinnDefaults {
            return config;
        }
        // A whole chunk (up to 16 MiB) fits in one stream's window, and the
        // connection window holds many chunks in flight.
        config.stream_receive_window(VarInt::from_u32(24 << 20));
        config.receive_window(VarInt::from_u32(96 << 20));
        config.send_window(96 << 20);
        if loopback {
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
    transport: Arc<quinn::TransportConfig>,
    loopback_transport: Arc<quinn::TransportConfig>,
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
        let transport = Arc::new(tuning.transport(false));
        let loopback_transport = Arc::new(tuning.transport(true));
        let (server, loopback_server) = if accept {
            let crypto = Arc::new(
                QuicServerConfig::try_from(tls::server_config(&identity)?)
                    .map_err(|e| tls::TlsError::Config(rustls::Error::General(e.to_string())))?,
            );
            let mut server = quinn::ServerConfig::with_crypto(crypto);
            let mut loopback = server.clone();
            server.transport_config(Arc::clone(&transport));
            loopback.transport_config(Arc::clone(&loopback_transport));
            (Some(server), Some(Arc::new(loopback)))
        } else {
            (None, None)
        };
        let socket = udp_socket(addr, tuning.socket_buffer()).map_err(|source| NetError::Bind { addr, source })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| NetError::Bind { addr, source: std::io::Error::other("no async runtime") })?;
        let endpoint = quinn::Endpoint::new(tuning.endpoint(), server, socket, runtime)
            .map_err(|source| NetError::Bind { addr, source })?;
        Ok(Self { endpoint, identity, node, network_key, transport, loopback_transport, loopback_server })
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
        let transport = if is_loopback(addr) { &self.loopback_transport } else { &self.transport };
        config.transport_config(Arc::clone(transport));
        let connecting =
            self.endpoint.connect_with(config, addr, tls::SERVER_NAME).map_err(|e| unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Err(_) => return Err(unreachable("timed out".into())),
            Ok(Err(e)) => return Err(closed_or(e, &short, unreachable)),
            Ok(Ok(conn)) => conn,
        };
        let peer = Peer::new(node, conn);
        let hello = async {
            let (mut send, mut recv) = peer.open().await?;
            let mine = self.hello(&peer)?;
            stream::write_frame(&mut send, &Frame::Hello(mine), &[]).await.map_err(|e| peer.stream_err(e))?;
            let _ = send.finish();
            let reply = stream::FrameReader::new(&mut recv).next_frame().await.map_err(|e| peer.stream_err(e))?;
            match reply {
                Frame::Hello(theirs) if theirs.node == node && theirs.proof == self.proof(&peer, &node)? => Ok(()),
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
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello).await {
            Err(_) => Err(NetError::Timeout(short)),
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

    /// The next incoming connection attempt, or `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Completes an incoming connection: TLS, then the client's `Hello`
    /// checked and answered. A peer that fails the proof is closed with
    /// `NotMember` before anything else is read from it.
    pub async fn admit(&self, incoming: quinn::Incoming) -> Result<Peer, NetError> {
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
            let (mut send, mut recv) = peer.accept_stream().await?;
            let frame = stream::FrameReader::new(&mut recv).next_frame().await.map_err(|e| peer.stream_err(e))?;
            let valid = matches!(&frame, Frame::Hello(h) if h.node == node && h.proof == self.proof(&peer, &node)?);
            if !valid {
                return Err(NetError::NotMember(short.clone()));
            }
            let mine = self.hello(&peer)?;
            stream::write_frame(&mut send, &Frame::Hello(mine), &[]).await.map_err(|e| peer.stream_err(e))?;
            let _ = send.finish();
            Ok(())
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello).await {
            Err(_) => {
                peer.close(ErrorCode::NOT_MEMBER, "no Hello in time");
                Err(NetError::Timeout(short))
            }
            Ok(Err(e)) => {
                peer.close(ErrorCode::NOT_MEMBER, "not a member of this network: your Hello proof is wrong");
                Err(e)
            }
            Ok(Ok(())) => Ok(peer),
        }
    }

    /// Stops accepting, closes every connection, and waits (briefly) for the
    /// close to reach peers.
    pub async fn shutdown(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    fn hello(&self, peer: &Peer) -> Result<Hello, NetError> {
        Ok(Hello { node: self.node, proof: self.proof(peer, &self.node)? })
    }

    /// `BLAKE3-keyed(network key, TLS exporter secret ‖ node)` for this connection.
    fn proof(&self, peer: &Peer, node: &NodeId) -> Result<[u8; 32], NetError> {
        let mut secret = [0u8; 32];
        peer.connection()
            .export_keying_material(&mut secret, MEMBERSHIP_LABEL, &[])
            .map_err(|_| NetError::Stream { node: peer.short(), reason: "TLS exporter unavailable".into() })?;
        let mut hasher = blake3::Hasher::new_keyed(&self.network_key);
        hasher.update(&secret);
        hasher.update(node.as_bytes());
        Ok(*hasher.finalize().as_bytes())
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
