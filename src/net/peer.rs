//! A verified connection to one peer, and the requests of the protocol.
//!
//! Every request has deadlines (docs/PROTOCOL.md, "Deadlines"): its frame
//! and payload must leave at [`stream::SENDER_RATE`] or better, the reply
//! frame must arrive within [`REPLY_TIMEOUT`] after that, and a reply
//! payload keeps the same pace. A peer that misses one is reported as
//! [`NetError::Timeout`], which callers treat as the peer being gone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};

use super::NetError;
use super::stream::{self, FrameReader, Pace, StreamError, write_frame};
use crate::crypto::OwnerKeys;
use crate::id::{ChunkId, ManifestId, NodeId, OwnerId};
use crate::wire::{
    self, Ack, AppendLog, Bounded, BoundedBytes, ChunkData, ErrorCode, Frame, FrameType, GetChunk, GetHead, GetLog,
    GetManifest, GetStatus, Has, ManifestData, PeerInfo, Peers, Pin, Ping, PutChunk, PutHead, PutManifest, Signature,
    Status, Unpin,
};

/// How long a peer may take to answer once a request is sent, beyond the
/// time its payload may take to travel: the node may wait for room in its
/// memory budget, then store and fsync.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One peer whose key and membership are verified.
#[derive(Clone)]
pub struct Peer {
    node: NodeId,
    conn: Connection,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({}@{})", self.node.short(16), super::canonical_addr(self.conn.remote_address()))
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

    /// 32 bytes exported from this connection's TLS session under `label`:
    /// both ends compute the same, and no other connection has them.
    pub fn exporter(&self, label: &[u8]) -> Result<[u8; 32], NetError> {
        let mut secret = [0u8; 32];
        self.conn
            .export_keying_material(&mut secret, label, &[])
            .map_err(|_| NetError::Stream { node: self.short(), reason: "TLS exporter unavailable".into() })?;
        Ok(secret)
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
            StreamError::TimedOut(what) => NetError::Timeout { node: self.short(), what },
            other => NetError::Stream { node: self.short(), reason: other.to_string() },
        }
    }

    fn unexpected(&self, asked: FrameType, reply: Frame) -> NetError {
        match reply {
            Frame::Error(e) => NetError::Remote { node: self.short(), code: e.code.0, message: e.message.to_string() },
            other => NetError::Unexpected { node: self.short(), asked, got: other.frame_type() },
        }
    }

    /// Sends one request (frame and payload, the payload handed to quinn as
    /// it is) on a new stream, and reads the reply frame, within the
    /// request's deadlines. The reader is left at the reply's payload.
    async fn request(&self, frame: &Frame, payload: Bytes) -> Result<(Frame, FrameReader), NetError> {
        let travel = stream::payload_time_at(payload.len() as u64, stream::SENDER_RATE);
        let opened = tokio::time::timeout(REPLY_TIMEOUT, self.open())
            .await
            .map_err(|_| NetError::Timeout { node: self.short(), what: "opening a stream" })??;
        let (mut send, recv) = opened;
        write_frame(&mut send, frame, payload, Pace::at_rate(stream::SENDER_RATE))
            .await
            .map_err(|e| self.stream_err(e))?;
        // The stream may already be reset by a peer that refused early; the reply says why.
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        // Written is not sent: quinn may still hold the payload, so the reply
        // may take as long as the payload's travel, and the node's work.
        let reply = reader.next_frame_within(travel + REPLY_TIMEOUT).await.map_err(|e| self.stream_err(e))?;
        Ok((reply, reader))
    }

    async fn call(&self, frame: &Frame, payload: Bytes) -> Result<Frame, NetError> {
        Ok(self.request(frame, payload).await?.0)
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
    /// The ciphertext is handed to quinn as it is (no copy). quinn may hold
    /// a reference to it for a moment after this returns (until the peer has
    /// acknowledged the packets), so the caller gets the buffer back only
    /// once no one else holds it (see `Bytes::is_unique`).
    pub async fn put_chunk(&self, id: ChunkId, ciphertext: Bytes) -> Result<(), NetError> {
        let len = payload_len(ciphertext.len(), wire::MAX_CHUNK_PAYLOAD);
        self.call_for_ack(&Frame::PutChunk(PutChunk { id, len }), ciphertext, id.0).await
    }

    /// Fetches a chunk into `out`, verified against its id. `Ok(false)` if
    /// the peer does not have it.
    pub async fn get_chunk(&self, id: ChunkId, out: &mut Vec<u8>) -> Result<bool, NetError> {
        match self.request(&Frame::GetChunk(GetChunk { id }), Bytes::new()).await? {
            (Frame::ChunkData(ChunkData { id: got, len }), mut reader) if got == id => {
                reader.payload(len as usize, out, reply_pace()).await.map_err(|e| self.stream_err(e))?;
                if ChunkId::of(out) != id {
                    return Err(NetError::Corrupt { node: self.short(), what: format!("chunk {id}") });
                }
                Ok(true)
            }
            (Frame::NotFound(_), _) => Ok(false),
            (other, _) => Err(self.unexpected(FrameType::GetChunk, other)),
        }
    }

    /// Stores a manifest envelope.
    pub async fn put_manifest(&self, id: ManifestId, envelope: Bytes) -> Result<(), NetError> {
        let len = payload_len(envelope.len(), wire::MAX_MANIFEST_PAYLOAD);
        self.call_for_ack(&Frame::PutManifest(PutManifest { id, len }), envelope, id.0).await
    }

    /// Fetches a manifest envelope, verified against its id.
    pub async fn get_manifest(&self, id: ManifestId) -> Result<Option<Vec<u8>>, NetError> {
        match self.request(&Frame::GetManifest(GetManifest { id }), Bytes::new()).await? {
            (Frame::ManifestData(ManifestData { id: got, len }), mut reader) if got == id => {
                let mut out = Vec::new();
                reader.payload(len as usize, &mut out, reply_pace()).await.map_err(|e| self.stream_err(e))?;
                if ManifestId::of(&out) != id {
                    return Err(NetError::Corrupt { node: self.short(), what: format!("manifest {id}") });
                }
                Ok(Some(out))
            }
            (Frame::NotFound(_), _) => Ok(None),
            (other, _) => Err(self.unexpected(FrameType::GetManifest, other)),
        }
    }

    /// Pins a manifest's chunks for its owner (`pin.chunks` = `chunks.len()`).
    pub async fn pin(&self, pin: Pin, chunks: &[ChunkId]) -> Result<(), NetError> {
        let payload: Vec<u8> = chunks.iter().flat_map(|id| *id.as_bytes()).collect();
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
        let entry = self.bounded_entry(entry)?;
        self.call_for_ack(&Frame::PutHead(PutHead { entry }), Bytes::new(), entry_hash).await
    }

    /// The newest log entry the peer holds for `owner`, which must be ours.
    pub async fn get_head(&self, owner: &OwnerKeys) -> Result<Option<Vec<u8>>, NetError> {
        let request = GetHead { owner: owner.owner_id(), proof: self.owner_proof(owner)? };
        match self.call(&Frame::GetHead(request), Bytes::new()).await? {
            Frame::Head(head) => Ok(head.entry.map(|e| e.to_vec())),
            other => Err(self.unexpected(FrameType::GetHead, other)),
        }
    }

    /// Appends an encoded log entry to its owner's log on the peer. Acked
    /// once durable; refused with `LogConflict` if it does not follow the
    /// peer's copy of the log.
    pub async fn append_log(&self, entry: Vec<u8>, entry_hash: [u8; 32]) -> Result<(), NetError> {
        let entry = self.bounded_entry(entry)?;
        self.call_for_ack(&Frame::AppendLog(AppendLog { entry }), Bytes::new(), entry_hash).await
    }

    /// Every log entry the peer holds for `owner` (ours: the request proves
    /// it with a signature over this connection), encoded, in order.
    pub async fn get_log(&self, owner: &OwnerKeys) -> Result<Vec<Vec<u8>>, NetError> {
        self.get_log_from(owner, 0).await
    }

    /// The owner's log entries from sequence number `from` on, encoded
    /// (unverified), in as many requests as the peer needs.
    pub async fn get_log_from(&self, owner: &OwnerKeys, from: u64) -> Result<Vec<Vec<u8>>, NetError> {
        let mut entries = Vec::new();
        loop {
            let (page, more) = self.get_log_page(owner, from + entries.len() as u64).await?;
            let got = page.len();
            entries.extend(page);
            // A peer saying "more" must make progress, or this would never end.
            if !more || got == 0 {
                return Ok(entries);
            }
        }
    }

    /// One `Log` reply: the owner's entries from `from` on, as many as the
    /// peer sent (encoded, unverified), and whether more follow.
    pub async fn get_log_page(&self, owner: &OwnerKeys, from: u64) -> Result<(Vec<Vec<u8>>, bool), NetError> {
        let proof = self.owner_proof(owner)?;
        let request = GetLog { owner: owner.owner_id(), from, proof };
        match self.call(&Frame::GetLog(request), Bytes::new()).await? {
            Frame::Log(log) => Ok((log.entries.into_inner().into_iter().map(|e| e.to_vec()).collect(), log.more)),
            other => Err(self.unexpected(FrameType::GetLog, other)),
        }
    }

    /// What the peer stores.
    pub async fn status(&self) -> Result<Status, NetError> {
        match self.call(&Frame::GetStatus(GetStatus {}), Bytes::new()).await? {
            Frame::Status(status) => Ok(status),
            other => Err(self.unexpected(FrameType::GetStatus, other)),
        }
    }

    /// The owner's signature over this connection's exporter secret, which
    /// lets it read its own log here and nowhere else.
    fn owner_proof(&self, owner: &OwnerKeys) -> Result<Signature, NetError> {
        let exporter = self.exporter(wire::OWNER_READ_LABEL)?;
        let message = wire::owner_read_message(&exporter, &owner.owner_id());
        Ok(owner.sign(wire::OWNER_READ_DOMAIN, &message))
    }

    fn bounded_entry(&self, entry: Vec<u8>) -> Result<BoundedBytes<{ wire::MAX_LOG_ENTRY_LEN }>, NetError> {
        BoundedBytes::new(entry)
            .ok_or_else(|| NetError::Stream { node: self.short(), reason: "log entry over the frame limit".into() })
    }
}

/// Whether an owner's proof in `GetLog`/`GetHead` is right for the
/// connection to `peer`: what a node checks before it answers.
pub fn owner_proof_holds(peer: &Peer, owner: &OwnerId, proof: &Signature) -> bool {
    let Ok(exporter) = peer.exporter(wire::OWNER_READ_LABEL) else { return false };
    let message = wire::owner_read_message(&exporter, owner);
    crate::crypto::verify(owner, wire::OWNER_READ_DOMAIN, &message, proof).is_ok()
}

/// The pace a reply's payload must keep: a quarter of `MIN_RATE`
/// (`SENDER_RATE`), since a client has many replies coming from one node at
/// once. (A node that is slow but within it still holds a worker for long;
/// fetching from a second replica when one lags would be the cure.)
fn reply_pace() -> Pace<'static> {
    Pace::at_rate(stream::SENDER_RATE)
}

/// A payload length as the frame declares it. Callers hold payloads within
/// the protocol's limits (chunks ≤ 16 MiB + tag, manifests ≤ 18 MiB);
/// anything longer is clamped so the peer refuses the frame, never a panic here.
fn payload_len(len: usize, limit: u32) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).min(limit.saturating_add(1))
}
