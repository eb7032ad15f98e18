//! Wire frames: typed messages ↔ bytes, with hard limits (docs/PROTOCOL.md).
//!
//! Sans-IO: no sockets, no clocks. [`Frame::encode`] appends a frame's bytes;
//! [`decode_frame`] takes one frame off the front of a buffer, returning
//! `Ok(None)` until the whole frame is there. A frame's declared length is
//! checked before the frame is buffered, and every list inside it before its
//! items are, so no input makes the decoder allocate beyond the limits. Bulk
//! data (chunk ciphertext, manifest envelopes, pin lists) is not in frames:
//! it follows its frame as [`Frame::payload_len`] raw bytes.
//!
//! ```
//! use bytes::BytesMut;
//! use p2pfs::wire::{decode_frame, Frame, Ping};
//!
//! let mut out = Vec::new();
//! Frame::Ping(Ping { nonce: 7 }).encode(&mut out)?;
//! let mut buf = BytesMut::from(&out[..3]);
//! assert_eq!(decode_frame(&mut buf)?, None); // not all there yet
//! buf.extend_from_slice(&out[3..]);
//! assert_eq!(decode_frame(&mut buf)?, Some(Frame::Ping(Ping { nonce: 7 })));
//! assert!(buf.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

use codec::CodecError;
pub use codec::{Bounded, BoundedBytes, BoundedString};
/// The signature `Pin`, `Unpin`, `GetHead` and `GetLog` carry: the crate's one
/// signature type, encoded as [`codec::signature`] says.
pub use ed25519_dalek::Signature;

use crate::id::{ChunkId, ManifestId, NodeId, OwnerId};

/// The protocol version every frame carries; also in the ALPN, `p2pfs/1`.
pub const PROTOCOL_VERSION: u8 = 1;
/// The ALPN protocol id.
pub const ALPN: &[u8] = b"p2pfs/1";
/// Bytes before the body: length (4), version (1), type (1).
pub const HEADER_LEN: usize = 6;
/// Largest `length` of a frame (version + type + body).
pub const MAX_FRAME_LEN: usize = 128 * 1024;
/// Largest chunk ciphertext after `PutChunk`/`ChunkData`: a raw chunk of 16 MiB, padded, and its tag.
/// (`sealing::MAX_SEALED_LEN`; a test checks they agree).
pub const MAX_CHUNK_PAYLOAD: u32 = 16 * 1024 * 1024 + 512 * 1024 + 16;
/// Largest manifest envelope after `PutManifest`/`ManifestData`: room for a
/// manifest of `MAX_PIN_CHUNKS` chunks with the longest name (18 MiB).
pub const MAX_MANIFEST_PAYLOAD: u32 = 18 * 1024 * 1024;
/// Most chunk ids after a `Pin`: the most chunks a manifest lists (256 Ki).
pub const MAX_PIN_CHUNKS: u32 = 256 * 1024;
/// Most ids in one `Has`.
pub const MAX_HAS_IDS: usize = 1024;
/// Most peers in one `Peers`.
pub const MAX_PEERS: usize = 64;
/// Most addresses of one peer in `Peers`.
pub const MAX_PEER_ADDRS: usize = 8;
/// Largest log entry in `PutHead`/`Head`.
pub const MAX_LOG_ENTRY_LEN: usize = 64 * 1024;
/// Largest `Error.message`, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Most log entries in one `Log` reply (the frame limit also bounds it).
pub const MAX_LOG_BATCH: usize = 1024;
/// Most owners in one `Status` (the ones storing most bytes first).
pub const MAX_STATUS_OWNERS: usize = 1024;

/// A frame the decoder refuses. Each names what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared length is over [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    Oversize(u32),
    /// The declared length cannot hold a version and a type.
    #[error("frame length {0} is too short to hold a version and a type")]
    TooShort(u32),
    /// A protocol version this node does not speak.
    #[error("frame of protocol version {0}; this node speaks version {PROTOCOL_VERSION}")]
    UnknownVersion(u8),
    /// A frame type this version does not have.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body ended in the middle of a field.
    #[error("{0:?} frame body ends early")]
    Truncated(FrameType),
    /// The body is not a valid encoding of the frame's fields.
    #[error("{0:?} frame body is malformed")]
    Malformed(FrameType),
    /// The body has bytes after its last field.
    #[error("{frame:?} frame has {count} trailing bytes")]
    TrailingBytes {
        /// The frame's type.
        frame: FrameType,
        /// How many bytes were left over.
        count: usize,
    },
    /// A list, string or declared payload is over its limit.
    #[error("{frame:?} frame exceeds a protocol limit of {limit}")]
    LimitExceeded {
        /// The frame's type.
        frame: FrameType,
        /// The limit broken.
        limit: u64,
    },
}

/// A frame that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would be over [`MAX_FRAME_LEN`].
    #[error("{frame:?} frame would be {len} bytes, over the {MAX_FRAME_LEN}-byte limit")]
    Oversize {
        /// The frame's type.
        frame: FrameType,
        /// Its encoded length.
        len: usize,
    },
    /// A declared payload is over its limit.
    #[error("{frame:?} frame declares a payload over the limit of {limit}")]
    LimitExceeded {
        /// The frame's type.
        frame: FrameType,
        /// The limit broken.
        limit: u64,
    },
    /// Fields that must agree do not (an erasure `Pin` whose id count is
    /// not a multiple of K + M + 1).
    #[error("{0:?} frame's fields do not agree")]
    Inconsistent(FrameType),
}

/// `Error.code` values (docs/PROTOCOL.md, "Error codes"). Unknown codes are
/// kept as they are and treated as [`ErrorCode::INTERNAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The decoder rejected a frame; the stream is closed.
    pub const BAD_FRAME: Self = Self(1);
    /// No valid membership proof on this connection.
    pub const NOT_MEMBER: Self = Self(2);
    /// A pin, unpin or head not signed by the owner it names.
    pub const BAD_SIGNATURE: Self = Self(3);
    /// The node is at its storage quota.
    pub const STORAGE_FULL: Self = Self(4);
    /// Too many requests in flight.
    pub const BUSY: Self = Self(5);
    /// A head whose sequence number is not newer than the one held.
    pub const STALE_HEAD: Self = Self(6);
    /// The node failed (an I/O error).
    pub const INTERNAL: Self = Self(7);
    /// An `AppendLog` entry does not follow the log the node holds.
    pub const LOG_CONFLICT: Self = Self(8);
    /// A request frame, its payload or its reply missed its deadline.
    pub const TIMEOUT: Self = Self(9);
    /// A `Pin` of a manifest its owner has unpinned: that pin stays gone.
    pub const UNPINNED: Self = Self(10);
    /// (Connection close) the connection was idle and made room for others.
    pub const IDLE: Self = Self(11);
}

macro_rules! frames {
    ($( $(#[$doc:meta])* $code:literal => $name:ident ),* $(,)?) => {
        /// The type byte of a frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $( $(#[$doc])* $name = $code, )*
        }

        impl FrameType {
            /// Every frame type, in type-byte order.
            pub const ALL: &[FrameType] = &[$( FrameType::$name ),*];

            /// The type with this byte, if there is one.
            pub fn from_byte(byte: u8) -> Option<Self> {
                match byte {
                    $( $code => Some(Self::$name), )*
                    _ => None,
                }
            }
        }

        /// One message of the protocol.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub enum Frame {
            $( $(#[$doc])* $name($name), )*
        }

        impl Frame {
            /// This frame's type.
            pub fn frame_type(&self) -> FrameType {
                match self {
                    $( Frame::$name(_) => FrameType::$name, )*
                }
            }

            fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                match self {
                    $( Frame::$name(body) => codec::encode_into(body, out), )*
                }
            }

            fn decode_body(frame: FrameType, body: &[u8]) -> Result<Self, CodecError> {
                match frame {
                    $( FrameType::$name => codec::decode::<$name>(body).map(Frame::$name), )*
                }
            }
        }
    };
}

frames! {
    /// Membership proof, first on a connection.
    0x01 => Hello,
    /// Peer exchange.
    0x02 => Peers,
    /// Which of these chunks do you have?
    0x03 => Has,
    /// The answer to `Has`, as a bitmap.
    0x04 => HasReply,
    /// Store this chunk; its ciphertext follows.
    0x05 => PutChunk,
    /// What was sent is durable.
    0x06 => Ack,
    /// Send me this chunk.
    0x07 => GetChunk,
    /// A chunk; its ciphertext follows.
    0x08 => ChunkData,
    /// The chunk or manifest asked for is not here.
    0x09 => NotFound,
    /// Store this manifest envelope; it follows.
    0x0a => PutManifest,
    /// Send me this manifest envelope.
    0x0b => GetManifest,
    /// A manifest envelope; it follows.
    0x0c => ManifestData,
    /// Keep a manifest's chunks for an owner; the chunk ids follow.
    0x0d => Pin,
    /// Stop keeping a manifest's chunks for an owner.
    0x0e => Unpin,
    /// Store an owner's newest log entry.
    0x0f => PutHead,
    /// Send me an owner's newest log entry.
    0x10 => GetHead,
    /// An owner's newest log entry, if held.
    0x11 => Head,
    /// Are you there?
    0x12 => Ping,
    /// Yes.
    0x13 => Pong,
    /// A request failed.
    0x14 => Error,
    /// Append this entry to its owner's log.
    0x15 => AppendLog,
    /// Send me an owner's log entries from a sequence number on.
    0x16 => GetLog,
    /// Log entries, in sequence order.
    0x17 => Log,
    /// What do you store?
    0x18 => GetStatus,
    /// What a node stores.
    0x19 => Status,
}

/// Fields of `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Hello {
    /// The sender's NodeId.
    pub node: NodeId,
    /// BLAKE3-keyed(network key, TLS exporter secret ‖ node).
    pub proof: [u8; 32],
}

/// A peer's address as the wire carries it: IP and port. An IPv6 flow label
/// and scope id mean nothing on another host, so they are not sent (and
/// serde's own `SocketAddr` encoding would drop them silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PeerAddr {
    /// IPv4 address and port.
    V4([u8; 4], u16),
    /// IPv6 address and port.
    V6([u8; 16], u16),
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => Self::V4(v4.ip().octets(), v4.port()),
            SocketAddr::V6(v6) => Self::V6(v6.ip().octets(), v6.port()),
        }
    }
}

impl From<PeerAddr> for SocketAddr {
    fn from(addr: PeerAddr) -> Self {
        match addr {
            PeerAddr::V4(ip, port) => SocketAddr::from((ip, port)),
            PeerAddr::V6(ip, port) => SocketAddr::from((ip, port)),
        }
    }
}

/// One peer in `Peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PeerInfo {
    /// Its NodeId.
    pub node: NodeId,
    /// Where it listens.
    pub addrs: Bounded<PeerAddr, MAX_PEER_ADDRS>,
}

/// Fields of `Peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Peers {
    /// Known peers.
    pub peers: Bounded<PeerInfo, MAX_PEERS>,
}

/// Fields of `Has`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Has {
    /// The chunks asked about.
    pub ids: Bounded<ChunkId, MAX_HAS_IDS>,
}

/// Fields of `HasReply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HasReply {
    /// Bit `i % 8` of byte `i / 8` is set if the `i`th id asked about is stored.
    pub present: BoundedBytes<{ MAX_HAS_IDS / 8 }>,
}

impl HasReply {
    /// The reply for `present[i]` flags.
    pub fn from_flags(present: &[bool]) -> Option<Self> {
        let mut bitmap = vec![0u8; present.len().div_ceil(8)];
        for (i, _) in present.iter().enumerate().filter(|(_, p)| **p) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
        BoundedBytes::new(bitmap).map(|present| Self { present })
    }

    /// Whether the `i`th id asked about is stored.
    pub fn is_present(&self, i: usize) -> bool {
        self.present.get(i / 8).is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }
}

/// Fields of `PutChunk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PutChunk {
    /// The chunk's id; the receiver checks the bytes against it.
    pub id: ChunkId,
    /// Ciphertext bytes that follow, at most [`MAX_CHUNK_PAYLOAD`].
    pub len: u32,
}

/// Fields of `Ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Ack {
    /// What is now durable: a chunk or manifest id, or a log entry's hash.
    pub id: [u8; 32],
}

/// Fields of `GetChunk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GetChunk {
    /// The chunk wanted.
    pub id: ChunkId,
}

/// Fields of `ChunkData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ChunkData {
    /// The chunk's id.
    pub id: ChunkId,
    /// Ciphertext bytes that follow, at most [`MAX_CHUNK_PAYLOAD`].
    pub len: u32,
}

/// Fields of `NotFound`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NotFound {
    /// The chunk or manifest id asked for.
    pub id: [u8; 32],
}

/// Fields of `PutManifest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PutManifest {
    /// The manifest's id; the receiver checks the bytes against it.
    pub id: ManifestId,
    /// Envelope bytes that follow, at most [`MAX_MANIFEST_PAYLOAD`].
    pub len: u32,
}

/// Fields of `GetManifest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GetManifest {
    /// The manifest wanted.
    pub id: ManifestId,
}

/// Fields of `ManifestData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ManifestData {
    /// The manifest's id.
    pub id: ManifestId,
    /// Envelope bytes that follow, at most [`MAX_MANIFEST_PAYLOAD`].
    pub len: u32,
}

/// Fields of `Pin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pin {
    /// Who pins.
    pub owner: OwnerId,
    /// What is pinned.
    pub manifest: ManifestId,
    /// Chunk ids that follow (32 bytes each), at most [`MAX_PIN_CHUNKS`].
    pub chunks: u32,
    /// The owner's signature (docs/PROTOCOL.md, "Signatures").
    #[serde(with = "codec::signature")]
    #[cfg_attr(feature = "arbitrary", arbitrary(with = codec::signature::arbitrary))]
    pub signature: Signature,
    /// For an erasure-coded manifest, its code: the ids that follow are
    /// stripes, each a chunk's id (which ranks the nodes its shards belong
    /// on; no node holds it) then its K + M shard ids in shard order, so
    /// `chunks` is a multiple of K + M + 1 and the pin keeps the shards.
    /// `None`: the ids are whole chunks, all kept.
    pub erasure: Option<Stripes>,
}

/// Most shards per stripe in a `Pin` (the same as `erasure::MAX_SHARDS`; a test holds them equal).
pub const MAX_STRIPE_SHARDS: u8 = 32;

/// The erasure code of a `Pin`: K data and M parity shards per stripe.
/// Decoding refuses K = 0, M = 0 and K + M over [`MAX_STRIPE_SHARDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "(u8, u8)", into = "(u8, u8)")]
pub struct Stripes {
    data: u8,
    parity: u8,
}

impl Stripes {
    /// K data and M parity shards per stripe, if the decoder would take them.
    pub fn new(data: u8, parity: u8) -> Option<Self> {
        let fits = data >= 1 && parity >= 1 && u16::from(data) + u16::from(parity) <= u16::from(MAX_STRIPE_SHARDS);
        fits.then_some(Self { data, parity })
    }

    /// K.
    pub fn data(&self) -> u8 {
        self.data
    }

    /// M.
    pub fn parity(&self) -> u8 {
        self.parity
    }

    /// K + M: shards per stripe.
    pub fn total(&self) -> u32 {
        u32::from(self.data) + u32::from(self.parity)
    }

    /// Ids per stripe in a `Pin`: the chunk's, then its K + M shards'.
    pub fn stride(&self) -> u32 {
        self.total() + 1
    }

    /// The ids of a pin's list that the pin keeps: every shard id, not the
    /// chunk ids that lead each stripe.
    pub fn kept(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        ids.chunks(self.stride() as usize).flat_map(|stripe| stripe.iter().skip(1).copied()).collect()
    }
}

impl TryFrom<(u8, u8)> for Stripes {
    type Error = &'static str;

    fn try_from((data, parity): (u8, u8)) -> Result<Self, Self::Error> {
        Stripes::new(data, parity).ok_or("an erasure code needs K >= 1, M >= 1, K + M <= 32")
    }
}

impl From<Stripes> for (u8, u8) {
    fn from(s: Stripes) -> Self {
        (s.data, s.parity)
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Stripes {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let data = u.int_in_range(1..=MAX_STRIPE_SHARDS - 1)?;
        let parity = u.int_in_range(1..=MAX_STRIPE_SHARDS - data)?;
        Ok(Stripes { data, parity })
    }
}

/// Fields of `Unpin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Unpin {
    /// Who unpins.
    pub owner: OwnerId,
    /// What is unpinned.
    pub manifest: ManifestId,
    /// The owner's signature.
    #[serde(with = "codec::signature")]
    #[cfg_attr(feature = "arbitrary", arbitrary(with = codec::signature::arbitrary))]
    pub signature: Signature,
}

/// Fields of `PutHead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PutHead {
    /// A stored log entry (docs/FORMAT.md).
    pub entry: BoundedBytes<MAX_LOG_ENTRY_LEN>,
}

/// Fields of `GetHead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GetHead {
    /// Whose log.
    pub owner: OwnerId,
    /// The owner's signature over this connection ([`owner_read_message`]).
    #[serde(with = "codec::signature")]
    #[cfg_attr(feature = "arbitrary", arbitrary(with = codec::signature::arbitrary))]
    pub proof: Signature,
}

/// Fields of `Head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Head {
    /// The newest log entry held for the owner, if any.
    pub entry: Option<BoundedBytes<MAX_LOG_ENTRY_LEN>>,
}

/// Fields of `Ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Ping {
    /// Echoed by the `Pong`.
    pub nonce: u64,
}

/// Fields of `Pong`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pong {
    /// The `Ping`'s nonce.
    pub nonce: u64,
}

/// Fields of `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Error {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For people: what failed and what to try.
    pub message: BoundedString<MAX_ERROR_MESSAGE_LEN>,
}

/// Fields of `AppendLog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AppendLog {
    /// A stored log entry (docs/FORMAT.md): the next one of its owner's log.
    pub entry: BoundedBytes<MAX_LOG_ENTRY_LEN>,
}

/// Fields of `GetLog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GetLog {
    /// Whose log.
    pub owner: OwnerId,
    /// The first sequence number wanted.
    pub from: u64,
    /// The owner's signature over this connection ([`owner_read_message`]).
    #[serde(with = "codec::signature")]
    #[cfg_attr(feature = "arbitrary", arbitrary(with = codec::signature::arbitrary))]
    pub proof: Signature,
}

/// Fields of `Log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Log {
    /// Consecutive entries from the one asked for (none if the node holds none).
    pub entries: Bounded<BoundedBytes<MAX_LOG_ENTRY_LEN>, MAX_LOG_BATCH>,
    /// Whether the node holds more after these: ask again from the next one.
    pub more: bool,
}

/// Fields of `GetStatus` (none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct GetStatus {}

/// Fields of `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Status {
    /// Chunk files stored.
    pub chunks: u64,
    /// Their bytes on disk.
    pub chunk_bytes: u64,
    /// Pins held, over every owner.
    pub pins: u64,
    /// Member connections open, the asker's included.
    pub connections: u64,
    /// Chunks this node holds that its last repair pass found with fewer
    /// than R replicas on their best-placed live nodes.
    pub under_replicated: u64,
    /// Copies its last repair pass sent.
    pub repaired: u64,
    /// Whether a repair pass is running.
    pub repairing: bool,
    /// When its last repair pass ended (ms since the Unix epoch; 0: none yet).
    pub last_repair_ms: u64,
    /// The most chunk bytes the node stores (`serve --max-storage`), if it has a quota.
    pub max_storage: Option<u64>,
    /// Chunk bytes per owner, the most first: only for the node's own home
    /// (a connection with the node's own NodeId); empty for anyone else.
    pub owners: Bounded<OwnerBytes, MAX_STATUS_OWNERS>,
    /// Owners left out of `owners` (more than [`MAX_STATUS_OWNERS`]).
    pub owners_omitted: u64,
}

/// One owner's chunks on a node, in `Status`: the distinct chunks its pins
/// reference that the node holds. A chunk two owners pin counts for each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnerBytes {
    /// The owner.
    pub owner: OwnerId,
    /// Its chunks held.
    pub chunks: u64,
    /// Their bytes on disk.
    pub bytes: u64,
}

/// The signature domain of `Pin` (docs/PROTOCOL.md, "Signatures").
pub const PIN_DOMAIN: &str = "p2pfs pin v1";
/// The signature domain of `Unpin`.
pub const UNPIN_DOMAIN: &str = "p2pfs unpin v1";

/// What a `Pin`'s owner signs: `owner ‖ manifest ‖ chunks as u32 LE ‖ BLAKE3(chunk id bytes)`.
pub fn pin_message(owner: &OwnerId, manifest: &ManifestId, chunks: &[ChunkId]) -> Vec<u8> {
    let mut ids = blake3::Hasher::new();
    for id in chunks {
        ids.update(id.as_bytes());
    }
    let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    let mut message = Vec::with_capacity(32 + 32 + 4 + 32);
    message.extend_from_slice(owner.as_bytes());
    message.extend_from_slice(manifest.as_bytes());
    message.extend_from_slice(&count.to_le_bytes());
    message.extend_from_slice(ids.finalize().as_bytes());
    message
}

/// The signature domain of a `Pin` of an erasure-coded manifest.
pub const ERASURE_PIN_DOMAIN: &str = "p2pfs erasure pin v1";

/// What a `Pin`'s owner signs, and under which domain: [`pin_message`]
/// under [`PIN_DOMAIN`] for whole chunks; for shards, the same followed by
/// K and M (one byte each) under [`ERASURE_PIN_DOMAIN`].
pub fn pin_signing(
    owner: &OwnerId,
    manifest: &ManifestId,
    ids: &[ChunkId],
    erasure: Option<Stripes>,
) -> (&'static str, Vec<u8>) {
    let mut message = pin_message(owner, manifest, ids);
    match erasure {
        None => (PIN_DOMAIN, message),
        Some(stripes) => {
            message.extend_from_slice(&[stripes.data, stripes.parity]);
            (ERASURE_PIN_DOMAIN, message)
        }
    }
}

/// What an `Unpin`'s owner signs: `owner ‖ manifest`.
pub fn unpin_message(owner: &OwnerId, manifest: &ManifestId) -> Vec<u8> {
    [owner.as_bytes().as_slice(), manifest.as_bytes()].concat()
}

/// The signature domain of the owner's proof in `GetLog` and `GetHead`.
pub const OWNER_READ_DOMAIN: &str = "p2pfs owner-read v1";
/// The TLS exporter label that binds that proof to one connection.
pub const OWNER_READ_LABEL: &[u8] = b"p2pfs/1 owner-read";

/// What an owner signs to read its own log on a node: the 32-byte TLS
/// exporter secret of this connection (label [`OWNER_READ_LABEL`]) ‖ owner.
/// The exporter makes the proof worthless on any other connection.
pub fn owner_read_message(exporter: &[u8; 32], owner: &OwnerId) -> Vec<u8> {
    [exporter.as_slice(), owner.as_bytes()].concat()
}

impl Frame {
    /// Raw bytes that follow this frame on its stream.
    pub fn payload_len(&self) -> u64 {
        match self {
            Frame::PutChunk(PutChunk { len, .. })
            | Frame::ChunkData(ChunkData { len, .. })
            | Frame::PutManifest(PutManifest { len, .. })
            | Frame::ManifestData(ManifestData { len, .. }) => u64::from(*len),
            Frame::Pin(Pin { chunks, .. }) => u64::from(*chunks) * 32,
            _ => 0,
        }
    }

    /// The limit a declared payload breaks, if it breaks one.
    fn payload_limit_broken(&self) -> Option<u64> {
        let (declared, limit) = match self {
            Frame::PutChunk(PutChunk { len, .. }) | Frame::ChunkData(ChunkData { len, .. }) => {
                (*len, MAX_CHUNK_PAYLOAD)
            }
            Frame::PutManifest(PutManifest { len, .. }) | Frame::ManifestData(ManifestData { len, .. }) => {
                (*len, MAX_MANIFEST_PAYLOAD)
            }
            Frame::Pin(Pin { chunks, .. }) => (*chunks, MAX_PIN_CHUNKS),
            _ => return None,
        };
        (declared > limit).then_some(u64::from(limit))
    }

    /// Whether fields that depend on each other agree: an erasure `Pin`
    /// lists whole stripes (K + M + 1 ids each).
    fn consistent(&self) -> bool {
        match self {
            Frame::Pin(Pin { chunks, erasure: Some(stripes), .. }) => chunks % stripes.stride() == 0,
            _ => true,
        }
    }

    /// Appends this frame's bytes to `out`. On error `out` is unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let frame = self.frame_type();
        if let Some(limit) = self.payload_limit_broken() {
            return Err(EncodeError::LimitExceeded { frame, limit });
        }
        if !self.consistent() {
            return Err(EncodeError::Inconsistent(frame));
        }
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&[PROTOCOL_VERSION, frame as u8]);
        // Bodies hold only bounded lists, fixed arrays and integers, which always encode.
        let encoded = self.encode_body(out);
        let len = out.len() - start - 4;
        if encoded.is_err() || len > MAX_FRAME_LEN {
            out.truncate(start);
            return Err(EncodeError::Oversize { frame, len: len + 4 });
        }
        // len ≤ MAX_FRAME_LEN, which fits in a u32.
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }
}

/// Takes one whole frame off the front of `buf`. `Ok(None)`: not all of it
/// is there yet (nothing is consumed). After an error the stream is unusable.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some((frame, used)) = decode(buf)? else { return Ok(None) };
    buf.advance(used);
    Ok(Some(frame))
}

/// Decodes the frame at the front of `bytes` without consuming it: the frame
/// and how many bytes it took, or `Ok(None)` if it is not all there yet.
pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(prefix) = bytes.first_chunk::<4>() else { return Ok(None) };
    let declared = u32::from_le_bytes(*prefix);
    // Checked before waiting for (and so before buffering) the rest.
    if declared as usize > MAX_FRAME_LEN {
        return Err(DecodeError::Oversize(declared));
    }
    if declared < 2 {
        return Err(DecodeError::TooShort(declared));
    }
    let total = 4 + declared as usize;
    let Some(whole) = bytes.get(..total) else { return Ok(None) };
    if whole[4] != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion(whole[4]));
    }
    let frame_type = FrameType::from_byte(whole[5]).ok_or(DecodeError::UnknownType(whole[5]))?;
    let frame = Frame::decode_body(frame_type, &whole[HEADER_LEN..]).map_err(|e| match e {
        CodecError::Truncated => DecodeError::Truncated(frame_type),
        CodecError::Malformed => DecodeError::Malformed(frame_type),
        CodecError::TrailingBytes(count) => DecodeError::TrailingBytes { frame: frame_type, count },
        CodecError::LimitExceeded(limit) => DecodeError::LimitExceeded { frame: frame_type, limit: limit as u64 },
    })?;
    if let Some(limit) = frame.payload_limit_broken() {
        return Err(DecodeError::LimitExceeded { frame: frame_type, limit });
    }
    if !frame.consistent() {
        return Err(DecodeError::Malformed(frame_type));
    }
    Ok(Some((frame, total)))
}

/// Decodes `input` three ways (whole, one byte at a time, and split at a
/// point the input's first byte picks) and panics unless all three agree
/// and every frame decoded re-encodes to itself. The `decode_frame` fuzz
/// target and the corpus replay test both run this, so an input that once
/// crashed the fuzzer fails `cargo test` too once it is committed.
///
/// Not public API: it exists only in this crate's unit tests and under
/// `--cfg fuzzing`, which cargo-fuzz sets for every crate it builds.
#[cfg(any(test, fuzzing))]
pub fn check_decoder(input: &[u8]) {
    let whole = decode_all(input, input.len().max(1));
    let bytewise = decode_all(input, 1);
    assert_eq!(whole, bytewise, "decoding must not depend on how input is split");
    let at = input.first().map_or(1, |&b| usize::from(b) % input.len() + 1);
    assert_eq!(whole, decode_all(input, at), "decoding must not depend on how input is split");
    for frame in whole.iter().filter_map(|r| r.as_ref().ok()) {
        let mut again = Vec::new();
        frame.encode(&mut again).expect("a decoded frame is within the limits, so it encodes");
        assert_eq!(decode(&again).expect("a re-encoded frame decodes"), Some((frame.clone(), again.len())));
    }
}

/// Feeds `input` to [`decode_frame`] `step` bytes at a time; returns every
/// frame and the first error.
#[cfg(any(test, fuzzing))]
fn decode_all(input: &[u8], step: usize) -> Vec<Result<Frame, DecodeError>> {
    let mut buf = BytesMut::new();
    let mut results = Vec::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&mut buf) {
                Ok(Some(frame)) => results.push(Ok(frame)),
                Ok(None) => break,
                Err(e) => {
                    results.push(Err(e));
                    return results;
                }
            }
        }
    }
    results
}

/// One valid frame of every type, in [`FrameType::ALL`] order: for the unit
/// tests, the fuzz seeds and the fuzz targets (not public API: see
/// [`check_decoder`]).
#[cfg(any(test, fuzzing))]
pub fn sample_frames() -> Vec<Frame> {
    let id = [0xab; 32];
    let addr: SocketAddr = "127.0.0.1:7070".parse().expect("a valid literal address");
    let addr6: SocketAddr = "[::1]:7071".parse().expect("a valid literal address");
    let message = BoundedString::truncating("chunk store is full: try another node");
    vec![
        Frame::Hello(Hello { node: NodeId(id), proof: [1; 32] }),
        Frame::Peers(Peers {
            peers: Bounded::new(vec![PeerInfo {
                node: NodeId(id),
                addrs: Bounded::new(vec![addr.into(), addr6.into()]).expect("2 ≤ MAX_PEER_ADDRS"),
            }])
            .expect("1 ≤ MAX_PEERS"),
        }),
        Frame::Has(Has { ids: Bounded::new(vec![ChunkId(id), ChunkId([2; 32])]).expect("2 ≤ MAX_HAS_IDS") }),
        Frame::HasReply(HasReply::from_flags(&[true, false]).expect("2 flags fit")),
        Frame::PutChunk(PutChunk { id: ChunkId(id), len: 1 << 20 }),
        Frame::Ack(Ack { id }),
        Frame::GetChunk(GetChunk { id: ChunkId(id) }),
        Frame::ChunkData(ChunkData { id: ChunkId(id), len: 1 << 20 }),
        Frame::NotFound(NotFound { id }),
        Frame::PutManifest(PutManifest { id: ManifestId(id), len: 4096 }),
        Frame::GetManifest(GetManifest { id: ManifestId(id) }),
        Frame::ManifestData(ManifestData { id: ManifestId(id), len: 4096 }),
        Frame::Pin(Pin {
            owner: OwnerId(id),
            manifest: ManifestId(id),
            chunks: 4,
            signature: Signature::from_bytes(&[9; 64]),
            erasure: Stripes::new(2, 1),
        }),
        Frame::Unpin(Unpin {
            owner: OwnerId(id),
            manifest: ManifestId(id),
            signature: Signature::from_bytes(&[9; 64]),
        }),
        Frame::PutHead(PutHead { entry: BoundedBytes::new(vec![1, 2, 3]).expect("3 bytes fit") }),
        Frame::GetHead(GetHead { owner: OwnerId(id), proof: Signature::from_bytes(&[8; 64]) }),
        Frame::Head(Head { entry: None }),
        Frame::Ping(Ping { nonce: u64::MAX }),
        Frame::Pong(Pong { nonce: 0 }),
        Frame::Error(Error { code: ErrorCode::STORAGE_FULL, message }),
        Frame::AppendLog(AppendLog { entry: BoundedBytes::new(vec![4, 5, 6]).expect("3 bytes fit") }),
        Frame::GetLog(GetLog { owner: OwnerId(id), from: 3, proof: Signature::from_bytes(&[8; 64]) }),
        Frame::Log(Log {
            entries: Bounded::new(vec![BoundedBytes::new(vec![1, 2]).expect("2 bytes fit")]).expect("1 entry fits"),
            more: true,
        }),
        Frame::GetStatus(GetStatus {}),
        Frame::Status(Status {
            chunks: 2,
            chunk_bytes: 1 << 30,
            pins: 1,
            connections: 3,
            max_storage: Some(10 << 30),
            owners: Bounded::new(vec![OwnerBytes { owner: OwnerId(id), chunks: 2, bytes: 1 << 30 }])
                .expect("1 ≤ MAX_STATUS_OWNERS"),
            owners_omitted: 0,
            under_replicated: 4,
            repaired: 5,
            repairing: true,
            last_repair_ms: 1_700_000_000_000,
        }),
    ]
}

#[cfg(test)]
mod fuzz_corpus;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        out
    }

    fn frame_bytes(version: u8, frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 2) as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&[version, frame_type]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn every_frame_type_round_trips() {
        let samples = sample_frames();
        let types: Vec<FrameType> = samples.iter().map(Frame::frame_type).collect();
        assert_eq!(types, FrameType::ALL, "one sample per type, in order");
        for frame in samples {
            let bytes = encoded(&frame);
            assert_eq!(bytes[4], PROTOCOL_VERSION);
            assert_eq!(bytes[5], frame.frame_type() as u8);
            assert_eq!(decode(&bytes).unwrap(), Some((frame, bytes.len())));
        }
    }

    #[test]
    fn the_header_layout_is_as_documented() {
        let bytes = encoded(&Frame::Ping(Ping { nonce: 1 }));
        assert_eq!(bytes, [3, 0, 0, 0, 1, 0x12, 1]);
    }

    #[test]
    fn each_kind_of_bad_frame_has_its_own_error() {
        let ping = frame_bytes(1, 0x12, &[5]);
        assert!(decode(&ping).unwrap().is_some());
        let oversize = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert_eq!(decode(&oversize), Err(DecodeError::Oversize(MAX_FRAME_LEN as u32 + 1)));
        assert_eq!(decode(&[1, 0, 0, 0, 1]), Err(DecodeError::TooShort(1)));
        assert_eq!(decode(&frame_bytes(2, 0x12, &[5])), Err(DecodeError::UnknownVersion(2)));
        assert_eq!(decode(&frame_bytes(1, 0x7f, &[])), Err(DecodeError::UnknownType(0x7f)));
        assert_eq!(decode(&frame_bytes(1, 0x07, &[0; 31])), Err(DecodeError::Truncated(FrameType::GetChunk)));
        assert_eq!(
            decode(&frame_bytes(1, 0x12, &[5, 6])),
            Err(DecodeError::TrailingBytes { frame: FrameType::Ping, count: 1 })
        );
        // 1025 ids: refused from the length prefix, before any id is decoded.
        let mut has = vec![0x81, 0x08];
        has.resize(2 + 1025 * 32, 0);
        assert_eq!(
            decode(&frame_bytes(1, 0x03, &has)),
            Err(DecodeError::LimitExceeded { frame: FrameType::Has, limit: MAX_HAS_IDS as u64 })
        );
        // A count the body cannot hold is simply a body that ends early.
        assert_eq!(decode(&frame_bytes(1, 0x03, &[0x81, 0x08])), Err(DecodeError::Truncated(FrameType::Has)));
        // A Signature of 3 bytes.
        let mut unpin = vec![0; 64];
        unpin.extend_from_slice(&[3, 1, 2, 3]);
        assert_eq!(decode(&frame_bytes(1, 0x0e, &unpin)), Err(DecodeError::Malformed(FrameType::Unpin)));
    }

    #[test]
    fn declared_payloads_over_their_limit_are_refused_both_ways() {
        let big = Frame::PutChunk(PutChunk { id: ChunkId([0; 32]), len: MAX_CHUNK_PAYLOAD + 1 });
        let limit = u64::from(MAX_CHUNK_PAYLOAD);
        assert_eq!(big.encode(&mut Vec::new()), Err(EncodeError::LimitExceeded { frame: FrameType::PutChunk, limit }));
        let mut body = vec![0; 32];
        body.extend_from_slice(&postcard::to_stdvec(&(MAX_CHUNK_PAYLOAD + 1)).unwrap());
        assert_eq!(
            decode(&frame_bytes(1, 0x05, &body)),
            Err(DecodeError::LimitExceeded { frame: FrameType::PutChunk, limit })
        );
        let pin = Frame::Pin(Pin {
            owner: OwnerId([0; 32]),
            manifest: ManifestId([0; 32]),
            chunks: MAX_PIN_CHUNKS,
            signature: Signature::from_bytes(&[0; 64]),
            erasure: None,
        });
        assert_eq!(pin.payload_len(), u64::from(MAX_PIN_CHUNKS) * 32);
    }

    #[test]
    fn an_erasure_pin_is_signed_apart_from_a_plain_one_and_keeps_only_its_shards() {
        let (owner, manifest) = (OwnerId([1; 32]), ManifestId([2; 32]));
        let ids: Vec<ChunkId> = (0..8u8).map(|i| ChunkId([i; 32])).collect();
        let code = Stripes::new(2, 1);
        let (plain_domain, plain) = pin_signing(&owner, &manifest, &ids, None);
        let (domain, message) = pin_signing(&owner, &manifest, &ids, code);
        assert_eq!((plain_domain, plain.clone()), (PIN_DOMAIN, pin_message(&owner, &manifest, &ids)));
        assert_eq!(domain, ERASURE_PIN_DOMAIN);
        assert_eq!(message, [plain.as_slice(), &[2, 1]].concat(), "K and M are signed");
        assert_ne!(pin_signing(&owner, &manifest, &ids, Stripes::new(1, 2)).1, message);
        // Two stripes of 1 chunk id + 3 shard ids: the pin keeps the shards.
        let kept = code.unwrap().kept(&ids);
        assert_eq!(kept, [&ids[1..4], &ids[5..8]].concat());
    }

    #[test]
    fn an_erasure_pin_lists_whole_stripes_of_a_code_within_the_limits() {
        assert_eq!(usize::from(MAX_STRIPE_SHARDS), crate::erasure::MAX_SHARDS);
        let pin = |chunks, erasure| {
            Frame::Pin(Pin {
                owner: OwnerId([1; 32]),
                manifest: ManifestId([2; 32]),
                chunks,
                signature: Signature::from_bytes(&[3; 64]),
                erasure,
            })
        };
        let whole = encoded(&pin(14, Stripes::new(4, 2)));
        assert!(matches!(decode(&whole), Ok(Some(_))));
        assert_eq!(pin(13, Stripes::new(4, 2)).encode(&mut Vec::new()), Err(EncodeError::Inconsistent(FrameType::Pin)));
        // The same frame with 12 ids declared: refused by the decoder too.
        let mut partial = whole.clone();
        let at = partial.len() - 3 - 65 - 1;
        assert_eq!(partial[at], 14, "the id count's varint");
        partial[at] = 12;
        assert_eq!(decode(&partial), Err(DecodeError::Malformed(FrameType::Pin)));
        for (k, m) in [(0, 2), (4, 0), (30, 3)] {
            assert_eq!(Stripes::new(k, m), None);
            let mut bad = whole.clone();
            let n = bad.len();
            bad[n - 2..].copy_from_slice(&[k, m]);
            assert_eq!(decode(&bad), Err(DecodeError::Malformed(FrameType::Pin)), "{k}+{m}");
        }
    }

    #[test]
    fn a_full_has_fits_in_a_frame_and_one_more_id_does_not_construct() {
        let ids = Bounded::<ChunkId, MAX_HAS_IDS>::new(vec![ChunkId([7; 32]); MAX_HAS_IDS]).unwrap();
        let bytes = encoded(&Frame::Has(Has { ids }));
        assert!(bytes.len() <= 4 + MAX_FRAME_LEN);
        assert!(Bounded::<ChunkId, MAX_HAS_IDS>::new(vec![ChunkId([7; 32]); MAX_HAS_IDS + 1]).is_none());
        // The largest log entry fits too.
        let entry = BoundedBytes::new(vec![0; MAX_LOG_ENTRY_LEN]).unwrap();
        encoded(&Frame::PutHead(PutHead { entry }));
    }

    #[test]
    fn has_reply_bitmap_matches_its_flags() {
        let flags: Vec<bool> = (0..20).map(|i| i % 3 == 0).collect();
        let reply = HasReply::from_flags(&flags).unwrap();
        for (i, flag) in flags.iter().enumerate() {
            assert_eq!(reply.is_present(i), *flag);
        }
        assert!(!reply.is_present(1000));
    }

    #[test]
    fn decode_frame_consumes_exactly_one_frame() {
        let mut bytes = encoded(&Frame::Ping(Ping { nonce: 1 }));
        bytes.extend(encoded(&Frame::Pong(Pong { nonce: 2 })));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_frame(&mut buf).unwrap(), Some(Frame::Ping(Ping { nonce: 1 })));
        assert_eq!(decode_frame(&mut buf).unwrap(), Some(Frame::Pong(Pong { nonce: 2 })));
        assert_eq!(decode_frame(&mut buf).unwrap(), None);
    }

    /// Regression (found by `frame_roundtrip`): an IPv6 address with a flow
    /// label and scope id did not decode to what was encoded.
    #[test]
    fn peer_addresses_round_trip_exactly() {
        let scoped: SocketAddr = SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 7070, 9, 3));
        let addr = PeerAddr::from(scoped);
        assert_eq!(addr, PeerAddr::V6("fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets(), 7070));
        let frame = Frame::Peers(Peers {
            peers: Bounded::new(vec![PeerInfo { node: NodeId([1; 32]), addrs: Bounded::new(vec![addr]).unwrap() }])
                .unwrap(),
        });
        let bytes = encoded(&frame);
        assert_eq!(decode(&bytes).unwrap(), Some((frame, bytes.len())));
        // The documented encoding: variant 1, 16 address bytes, the port as a varint.
        let body = postcard::to_stdvec(&addr).unwrap();
        assert_eq!((body[0], body.len()), (1, 1 + 16 + 2));
    }

    #[test]
    fn a_bad_frame_after_a_good_one_does_not_hide_it() {
        let mut bytes = encoded(&Frame::Ping(Ping { nonce: 9 }));
        bytes.extend_from_slice(&frame_bytes(1, 0x7f, &[]));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_frame(&mut buf), Ok(Some(Frame::Ping(Ping { nonce: 9 }))));
        assert_eq!(decode_frame(&mut buf), Err(DecodeError::UnknownType(0x7f)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_splits_do_not_matter(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            split in any::<prop::sample::Index>(),
        ) {
            let whole = decode(&bytes);
            // Fed in two pieces, the decoder says "need more" or agrees with the whole.
            let at = split.index(bytes.len() + 1);
            match decode(&bytes[..at]) {
                Ok(None) => {}
                Ok(Some((frame, used))) => prop_assert_eq!(whole, Ok(Some((frame, used)))),
                Err(e) => prop_assert_eq!(whole, Err(e)),
            }
        }

        #[test]
        /// Every sample frame in every case (not one picked at random), so
        /// each frame type, a new one included, is split at many points.
        fn sample_frames_survive_any_split(split in any::<prop::sample::Index>()) {
            for frame in sample_frames() {
                let bytes = encoded(&frame);
                let at = split.index(bytes.len());
                let mut buf = BytesMut::from(&bytes[..at]);
                prop_assert_eq!(decode_frame(&mut buf).unwrap(), None);
                buf.extend_from_slice(&bytes[at..]);
                prop_assert_eq!(decode_frame(&mut buf).unwrap(), Some(frame));
            }
        }
    }
}
