//! A verified connection to one peer, and the requests of the protocol.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};

use super::NetError;
use super::stream::{FrameReader, StreamError, write_frame_owned};
use crate::id::{ChunkId, ManifestId, NodeId, OwnerId};
use crate::wire::{
    self, Ack, AppendLog, Bounded, BoundedBytes, ChunkData, ErrorCode, Frame, FrameType, GetChunk, GetHead, GetLog,
    GetManifest, GetStatus, Has, ManifestData, PeerInfo, Peers, Pin, Ping, PutChunk, PutHead, PutManifest, Status,
    Unpin,
};

/// One peer whose key and membership are verified.
#[derive(Clone)]
pub struct Peer {
    node: NodeId,
    conn: Connection,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({}@{})", self.node.short(16), self.conn.remote_address())
    }
}

impl Peer {
    pub(super) fn new(node: NodeId, conn: Connection) -> Self {
        Self { node, conn }
    }

    /// The peer's NodeId (from its certificate).
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The peer's address as this connection sees it.
    pub fn remote_addr(&self) -> std::net::SocketAddr {
        self.conn.remote_address()
    }

    /// The underlying quinn connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// quinn's current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Closes the connection with a protocol error code and a reason.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.conn.close(VarInt::from(code.0), reason.as_bytes());
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.conn.close_reason()
    }

    pub(crate) fn short(&self) -> String {
        self.node.short(16)
    }

    /// Opens a request stream.
    pub async fn open(&self) -> Result<(SendStream, RecvStream), NetError> {
        self.conn.open_bi().await.map_err(|e| self.connection_err(e))
    }

    /// Accepts the peer's next request stream.
    pub async fn accept_stream(&self) -> Result<(SendStream, RecvStream), NetError> {
        self.conn.accept_bi().await.map_err(|e| self.connection_err(e))
    }

    fn connection_err(&self, e: quinn::ConnectionError) -> NetError {
        super::closed_or(e, &self.short(), |_| NetError::Connection {
            node: self.short(),
            source: self.conn.close_reason().unwrap_or(quinn::ConnectionError::LocallyClosed),
        })
    }

    /// A stream failure as a `NetError` naming this peer.
    pub fn stream_err(&self, e: StreamError) -> NetError {
        match e {
            StreamError::Decode(source) => NetError::Decode { node: self.short(), source },
            StreamError::Connection(c) => self.connection_err(c),
            other => NetError::Stream { node: self.short(), reason: other.to_string() },
        }
    }

    fn unexpected(&self, asked: FrameType, reply: Frame) -> NetError {
        match reply {
            Frame::Error(e) => NetError::Remote { node: self.short(), code: e.code.0, message: e.message.to_string() },
            other => NetError::Unexpected { node: self.short(), asked, got: other.frame_type() },
        }
    }

    /// Sends one request (frame and payload) on a new stream and returns the
    /// stream to read the reply from. The payload goes to quinn as it is.
    async fn send(&self, frame: &Frame, payload: Bytes) -> Result<RecvStream, NetError> {
        let (mut send, recv) = self.open().await?;
        write_frame_owned(&mut send, frame, payload).await.map_err(|e| self.stream_err(e))?;
        // The stream may already be reset by a peer that refused early; the reply says why.
        let _ = send.finish();
        Ok(recv)
    }

    async fn call(&self, frame: &Frame, payload: Bytes) -> Result<Frame, NetError> {
        let mut recv = self.send(frame, payload).await?;
        FrameReader::new(&mut recv).next_frame().await.map_err(|e| self.stream_err(e))
    }

    /// Expects an `Ack` of `id`.
    async fn call_for_ack(&self, frame: &Frame, payload: Bytes, id: [u8; 32]) -> Result<(), NetError> {
        match self.call(frame, payload).await? {
            Frame::Ack(Ack { id: acked }) if acked == id => Ok(()),
            other => Err(self.unexpected(frame.frame_type(), other)),
        }
    }

    /// Ping; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, NetError> {
        let nonce: u64 = rand::random();
        let started = Instant::now();
        match self.call(&Frame::Ping(Ping { nonce }), Bytes::new()).await? {
            Frame::Pong(pong) if pong.nonce == nonce => Ok(started.elapsed()),
            other => Err(self.unexpected(FrameType::Ping, other)),
        }
    }

    /// Peer exchange: tells the peer `ours`, returns the peers it knows.
    pub async fn exchange_peers(&self, ours: Vec<PeerInfo>) -> Result<Vec<PeerInfo>, NetError> {
        let peers =
            Bounded::new(ours.into_iter().take(wire::MAX_PEERS).collect()).expect("at most MAX_PEERS were taken");
        match self.call(&Frame::Peers(Peers { peers }), Bytes::new()).await? {
            Frame::Peers(reply) => Ok(reply.peers.into_inner()),
            other => Err(self.unexpected(FrameType::Peers, other)),
        }
    }

    /// Which of `ids` the peer stores, in batches of [`wire::MAX_HAS_IDS`].
    pub async fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, NetError> {
        let mut present = Vec::with_capacity(ids.len());
        for batch in ids.chunks(wire::MAX_HAS_IDS) {
            let request = Has { ids: Bounded::new(batch.to_vec()).expect("batches are at most MAX_HAS_IDS") };
            match self.call(&Frame::Has(request), Bytes::new()).await? {
                Frame::HasReply(reply) => present.extend((0..batch.len()).map(|i| reply.is_present(i))),
                other => return Err(self.unexpected(FrameType::Has, other)),
            }
        }
        Ok(present)
    }

    /// Stores a chunk; returns once the peer acks it durable.
    ///
    /// The ciphertext is handed to quinn as it is (no copy): quinn holds a
    /// reference until the peer has acknowledged the bytes, so the caller can
    /// reclaim the buffer once this returns (see `Bytes::try_into_mut`).
    pub async fn put_chunk(&self, id: ChunkId, ciphertext: Bytes) -> Result<(), NetError> {
        let len = payload_len(ciphertext.len(), wire::MAX_CHUNK_PAYLOAD);
        self.call_for_ack(&Frame::PutChunk(PutChunk { id, len }), ciphertext, id.0).await
    }

    /// Fetches a chunk into `out`, verified against its id. `Ok(false)` if
    /// the peer does not have it.
    pub async fn get_chunk(&self, id: ChunkId, out: &mut Vec<u8>) -> Result<bool, NetError> {
        let mut recv = self.send(&Frame::GetChunk(GetChunk { id }), Bytes::new()).await?;
        let mut reader = FrameReader::new(&mut recv);
        match reader.next_frame().await.map_err(|e| self.stream_err(e))? {
            Frame::ChunkData(ChunkData { id: got, len }) if got == id => {
                reader.payload(len as usize, out).await.map_err(|e| self.stream_err(e))?;
                if ChunkId::of(out) != id {
                    return Err(NetError::Corrupt { node: self.short(), what: format!("chunk {id}") });
                }
                Ok(true)
            }
            Frame::NotFound(_) => Ok(false),
            other => Err(self.unexpected(FrameType::GetChunk, other)),
        }
    }

    /// Stores a manifest envelope.
    pub async fn put_manifest(&self, id: ManifestId, envelope: &[u8]) -> Result<(), NetError> {
        let len = payload_len(envelope.len(), wire::MAX_MANIFEST_PAYLOAD);
        self.call_for_ack(&Frame::PutManifest(PutManifest { id, len }), Bytes::copy_from_slice(envelope), id.0).await
    }

    /// Fetches a manifest envelope, verified against its id.
    pub async fn get_manifest(&self, id: ManifestId) -> Result<Option<Vec<u8>>, NetError> {
        let mut recv = self.send(&Frame::GetManifest(GetManifest { id }), Bytes::new()).await?;
        let mut reader = FrameReader::new(&mut recv);
        match reader.next_frame().await.map_err(|e| self.stream_err(e))? {
            Frame::ManifestData(ManifestData { id: got, len }) if got == id => {
                let mut out = Vec::new();
                reader.payload(len as usize, &mut out).await.map_err(|e| self.stream_err(e))?;
                if ManifestId::of(&out) != id {
                    return Err(NetError::Corrupt { node: self.short(), what: format!("manifest {id}") });
                }
                Ok(Some(out))
            }
            Frame::NotFound(_) => Ok(None),
            other => Err(self.unexpected(FrameType::GetManifest, other)),
        }
    }

    /// Pins a manifest's chunks for its owner (`pin.chunks` = `chunks.len()`).
    pub async fn pin(&self, pin: Pin, chunks: &[ChunkId]) -> Result<(), NetError> {
        let mut payload = Vec::with_capacity(chunks.len() * 32);
        for id in chunks {
            payload.extend_from_slice(id.as_bytes());
        }
        let manifest = pin.manifest;
        self.call_for_ack(&Frame::Pin(pin), payload.into(), manifest.0).await
    }

    /// Removes an owner's pin of a manifest.
    pub async fn unpin(&self, unpin: Unpin) -> Result<(), NetError> {
        let manifest = unpin.manifest;
        self.call_for_ack(&Frame::Unpin(unpin), Bytes::new(), manifest.0).await
    }

    /// Stores an owner's newest log entry (its encoded bytes).
    pub async fn put_head(&self, entry: Vec<u8>, entry_hash: [u8; 32]) -> Result<(), NetError> {
        let entry = BoundedBytes::new(entry)
            .ok_or_else(|| NetError::Stream { node: self.short(), reason: "log entry over the frame limit".into() })?;
        self.call_for_ack(&Frame::PutHead(PutHead { entry }), Bytes::new(), entry_hash).await
    }

    /// The newest log entry the peer holds for `owner`.
    pub async fn get_head(&self, owner: OwnerId) -> Result<Option<Vec<u8>>, NetError> {
        match self.call(&Frame::GetHead(GetHead { owner }), Bytes::new()).await? {
            Frame::Head(head) => Ok(head.entry.map(|e| e.to_vec())),
            other => Err(self.unexpected(FrameType::GetHead, other)),
        }
    }

    /// Appends an encoded log entry to its owner's log on the peer. Acked
    /// once durable; refused with `LogConflict` if it does not follow the
    /// peer's copy of the log.
    pub async fn append_log(&self, entry: Vec<u8>, entry_hash: [u8; 32]) -> Result<(), NetError> {
        let entry = BoundedBytes::new(entry)
            .ok_or_else(|| NetError::Stream { node: self.short(), reason: "log entry over the frame limit".into() })?;
        self.call_for_ack(&Frame::AppendLog(AppendLog { entry }), Bytes::new(), entry_hash).await
    }

    /// Every log entry the peer holds for `owner`, encoded, in order.
    pub async fn get_log(&self, owner: OwnerId) -> Result<Vec<Vec<u8>>, NetError> {
        let mut entries = Vec::new();
        loop {
            let from = entries.len() as u64;
            match self.call(&Frame::GetLog(GetLog { owner, from }), Bytes::new()).await? {
                Frame::Log(log) => {
                    let got = log.entries.len();
                    entries.extend(log.entries.into_inner().into_iter().map(|e| e.to_vec()));
                    // A peer saying "more" must make progress, or this would never end.
                    if !log.more || got == 0 {
                        return Ok(entries);
                    }
                }
                other => return Err(self.unexpected(FrameType::GetLog, other)),
            }
        }
    }

    /// What the peer stores.
    pub async fn status(&self) -> Result<Status, NetError> {
        match self.call(&Frame::GetStatus(GetStatus {}), Bytes::new()).await? {
            Frame::Status(status) => Ok(status),
            other => Err(self.unexpected(FrameType::GetStatus, other)),
        }
    }
}

/// A payload length as the frame declares it. Callers hold payloads within
/// the protocol's limits (chunks ≤ 16 MiB + tag, manifests ≤ 256 MiB);
/// anything longer is clamped so the peer refuses the frame, never a panic here.
fn payload_len(len: usize, limit: u32) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).min(limit.saturating_add(1))
}
