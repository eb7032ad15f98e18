//! Answers one request per stream, as docs/PROTOCOL.md "Replies" says.
//!
//! A frame the decoder rejects gets an `Error{BadFrame}` and that stream is
//! closed; the connection and every other stream carry on. A request that
//! fails gets an `Error` naming what failed, never a path on this node's
//! disk (the node's own log has the details). Every request keeps its
//! deadlines (docs/PROTOCOL.md, "Deadlines"): its frame within 5 s, its
//! payload at a minimum pace, room in the payload budget within
//! [`BUDGET_WAIT`](super::BUDGET_WAIT) (else `Busy`), and a reply with a
//! payload is held in the budget until the peer has acknowledged it. Store
//! work (fsync, reads) runs on the blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tracing::debug;

use super::NodeState;
use super::members::{BUDGET_SHARE, MEMBER_IDLE_TIMEOUT, Membership, RequestGuard};
use super::requests::{Refusal, StoreRequests, hash_parts};
use crate::crypto;
use crate::id::ManifestId;
use crate::manifest::log::LogEntry;
use crate::net::stream::{self, FrameReader, Pace, StreamError, write_frame};
use crate::net::{Peer, owner_proof_holds};
use crate::store::{Appended, StoreError};
use crate::wire::{
    self, Ack, BoundedBytes, BoundedString, Error, ErrorCode, Frame, Head, Log, ManifestData, NotFound, OwnerBytes,
    Peers, Pong, Status,
};

/// Log entry bytes in one `Log` reply: with the largest entry on top, still
/// under `MAX_FRAME_LEN`; a reply holds at most `MAX_LOG_BATCH` entries.
const LOG_REPLY_BYTES: usize = wire::MAX_FRAME_LEN - wire::MAX_LOG_ENTRY_LEN - 1024;

/// Serves a member connection's request streams until it closes, or until
/// it has had no request for [`MEMBER_IDLE_TIMEOUT`] (streams that never
/// send a whole frame do not count).
pub(super) async fn serve_connection(state: Arc<NodeState>, peer: Peer, membership: Membership) {
    let membership = Arc::new(membership);
    let mut requests = tokio::task::JoinSet::new();
    loop {
        let idle_check = membership.idle_at().unwrap_or_else(|| Instant::now() + MEMBER_IDLE_TIMEOUT);
        tokio::select! {
            stream = peer.accept_stream() => {
                let Ok((send, recv)) = stream else { break };
                let request =
                    Request { state: Arc::clone(&state), peer: peer.clone(), membership: Arc::clone(&membership) };
                requests.spawn(request.serve(send, recv));
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            () = tokio::time::sleep_until(idle_check) => {
                if membership.idle_at().is_some_and(|at| at <= Instant::now()) {
                    peer.close(ErrorCode::IDLE, "idle: no request for a minute; connect again when needed");
                    break;
                }
            }
        }
    }
    requests.abort_all();
    while requests.join_next().await.is_some() {}
}

impl Refusal {
    /// A payload that did not arrive whole and in time.
    fn payload(e: StreamError) -> Self {
        match e {
            StreamError::TimedOut(_) => Refusal::new(
                ErrorCode::TIMEOUT,
                format!(
                    "the payload was too slow: it must never stall for {} s, and a connection's payloads \
                     together must keep up {} KiB/s",
                    stream::STALL_TIMEOUT.as_secs(),
                    stream::MIN_RATE / 1024
                ),
            ),
            other => Refusal::new(ErrorCode::BAD_FRAME, format!("reading the payload: {other}")),
        }
    }
}

/// Payload bytes held in memory for one request: from the node's budget and
/// from the member's share of it, given back when dropped.
struct Reservation<'a> {
    _node: SemaphorePermit<'a>,
    _member: OwnedSemaphorePermit,
    on_connection: &'a AtomicU64,
    len: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.on_connection.fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// One request stream and what it may use.
struct Request {
    state: Arc<NodeState>,
    peer: Peer,
    membership: Arc<Membership>,
}

impl Request {
    async fn serve(self, mut send: SendStream, recv: RecvStream) {
        let mut reader = FrameReader::new(recv);
        let result = match reader.next_frame().await {
            Ok(frame) => {
                // In flight from now on: a stream that never sends a whole
                // frame does not keep its connection from counting as idle.
                let _in_flight: RequestGuard = self.membership.request();
                self.answer(frame, &mut reader, &mut send).await
            }
            Err(StreamError::Decode(e)) => {
                Err(Refusal::new(ErrorCode::BAD_FRAME, format!("{e}; this stream is closed, the connection is not")))
            }
            Err(StreamError::TimedOut(_)) => Err(Refusal::new(
                ErrorCode::TIMEOUT,
                format!("no whole request frame within {} s of opening the stream", stream::FRAME_TIMEOUT.as_secs()),
            )),
            Err(e) => {
                debug!("{:?}: request stream failed: {e}", self.peer);
                return;
            }
        };
        if let Err(refusal) = result {
            debug!("{:?}: refused a request: {}", self.peer, refusal.message);
            let error =
                Frame::Error(Error { code: refusal.code, message: BoundedString::truncating(&refusal.message) });
            let _ = write_frame(&mut send, &error, Bytes::new(), Pace::at_rate(stream::SENDER_RATE)).await;
            // Stop the peer's side, so a refused payload is not sent in vain.
            reader.stop(VarInt::from(refusal.code.0));
        }
        let _ = send.finish();
    }

    /// Reserves `len` payload bytes, waiting at most `BUDGET_WAIT` for them.
    async fn reserve(&self, len: u64) -> Result<Reservation<'_>, Refusal> {
        let over = || Refusal::new(ErrorCode::BUSY, format!("a {len}-byte payload is over a member's memory share"));
        let permits = u32::try_from(len).ok().filter(|&n| n as usize <= BUDGET_SHARE).ok_or_else(over)?;
        let share: Arc<Semaphore> = Arc::clone(self.membership.share());
        let wait = async {
            let member = share.acquire_many_owned(permits).await.ok()?;
            let node = self.state.budget.acquire_many(permits).await.ok()?;
            let on_connection = self.membership.reserved();
            on_connection.fetch_add(len, Ordering::Relaxed);
            Some(Reservation { _node: node, _member: member, on_connection, len })
        };
        match tokio::time::timeout(super::BUDGET_WAIT, wait).await {
            Ok(Some(reservation)) => Ok(reservation),
            _ => Err(Refusal::new(
                ErrorCode::BUSY,
                "this node's memory for payloads is taken (or your share of it is); retry later",
            )),
        }
    }

    /// The pace a reserved payload of `len` bytes must keep, either way:
    /// all this connection's reserved payloads together at `MIN_RATE`, each
    /// its part of it, so a client moving many chunks at once over a slow
    /// link is not cut, and one trickling a large payload is.
    fn pace(&self, len: u64) -> Pace<'_> {
        Pace::shared(len, stream::MIN_RATE, self.membership.reserved())
    }

    /// When a reply payload of `len` bytes must have been acknowledged: as
    /// long as this connection's reserved payloads take at `MIN_RATE`, so a
    /// client fetching many chunks at once over a slow link gets them. (The
    /// writes before keep pace, so only a peer whose QUIC stack takes the
    /// bytes and never acknowledges them can hold a reply this long.)
    fn reply_deadline(&self, len: u64) -> Instant {
        let reserved = self.membership.reserved().load(Ordering::Relaxed).max(len);
        Instant::now() + stream::payload_time(reserved)
    }

    /// Runs store work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&NodeState) -> Result<T, Refusal> + Send + 'static,
    ) -> Result<T, Refusal> {
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(|e| Refusal::new(ErrorCode::INTERNAL, format!("request task failed: {e}")))?
    }

    async fn answer(&self, frame: Frame, reader: &mut FrameReader, send: &mut SendStream) -> Result<(), Refusal> {
        match frame {
            Frame::Ping(ping) => reply(send, Frame::Pong(Pong { nonce: ping.nonce })).await,
            Frame::Peers(peers) => {
                self.state.learn(&peers.peers);
                let known = self.state.known().into_iter().take(wire::MAX_PEERS).collect();
                let peers = wire::Bounded::new(known).expect("at most MAX_PEERS were taken");
                reply(send, Frame::Peers(Peers { peers })).await
            }
            Frame::Has(has) => {
                let ids = has.ids.into_inner();
                let answer = self.blocking(move |s| Ok(s.requests().has(&ids))).await?;
                reply(send, answer).await
            }
            Frame::PutChunk(put) => {
                StoreRequests::check_chunk_len(put.len)?;
                let (id, len) = (put.id, put.len);
                // Refused before a byte of the payload is read (the refusal
                // stops the stream); a chunk held already is acked as ever.
                let _space = match self.state.storage.max_storage {
                    Some(_) => self.blocking(move |s| s.requests().reserve_chunk_room(&id, len)).await?,
                    None => None,
                };
                let len = u64::from(len);
                let _held = self.reserve(len).await?;
                // The pieces quinn received, hashed and written as they are: no copy.
                let parts = reader.payload_parts(put.len as usize, self.pace(len)).await.map_err(Refusal::payload)?;
                let answer = self.blocking(move |s| s.requests().put_chunk(&id, &parts)).await?;
                reply(send, answer).await
            }
            Frame::GetChunk(get) => {
                let id = get.id;
                let Some(len) = self.blocking(move |s| Ok(s.home.store().chunk_len(&id))).await? else {
                    return reply(send, Frame::NotFound(NotFound { id: id.0 })).await;
                };
                let len = len.min(u64::from(wire::MAX_CHUNK_PAYLOAD));
                let held = self.reserve(len).await?;
                let (answer, bytes) = self
                    .blocking(move |s| {
                        // Room for the file and the byte that tells it ends there.
                        let buf = s.reply_buffers.take(len as usize + 1);
                        s.requests().get_chunk(&id, buf)
                    })
                    .await?;
                match answer {
                    Frame::ChunkData(_) => {
                        let (pace, acked_by) = (self.pace(bytes.len() as u64), self.reply_deadline(bytes.len() as u64));
                        let bytes = self.state.reply_buffers.share(bytes);
                        reply_with_payload(send, answer, bytes, held, pace, acked_by).await
                    }
                    other => reply(send, other).await,
                }
            }
            Frame::PutManifest(put) => {
                let len = u64::from(put.len);
                if (put.len as usize) < crypto::ENVELOPE_MIN_LEN {
                    return Err(Refusal::new(
                        ErrorCode::BAD_FRAME,
                        format!("{len} bytes cannot be a manifest envelope ({} at least)", crypto::ENVELOPE_MIN_LEN),
                    ));
                }
                let _held = self.reserve(len).await?;
                // Hashed and written as quinn received it, like a chunk: no copy.
                let parts = reader.payload_parts(put.len as usize, self.pace(len)).await.map_err(Refusal::payload)?;
                let id = put.id;
                self.blocking(move |s| {
                    let mut header = Vec::with_capacity(crypto::ENVELOPE_MIN_LEN);
                    for part in &parts {
                        let room = crypto::ENVELOPE_MIN_LEN - header.len();
                        header.extend_from_slice(&part[..room.min(part.len())]);
                    }
                    crypto::check_envelope_form(&header)
                        .map_err(|e| Refusal::new(ErrorCode::BAD_FRAME, format!("not a manifest envelope: {e}")))?;
                    if ManifestId(hash_parts(&parts)) != id {
                        return Err(Refusal::new(ErrorCode::BAD_FRAME, format!("manifest bytes do not hash to {id}")));
                    }
                    Ok(s.home.store().put_manifest_parts(&id, &parts)?)
                })
                .await?;
                reply(send, Frame::Ack(Ack { id: id.0 })).await
            }
            Frame::GetManifest(get) => {
                let id = get.id;
                let Some(len) = self.blocking(move |s| Ok(s.home.store().manifest_len(&id))).await? else {
                    return reply(send, Frame::NotFound(NotFound { id: id.0 })).await;
                };
                let held = self.reserve(len.min(u64::from(wire::MAX_MANIFEST_PAYLOAD))).await?;
                let found = self
                    .blocking(move |s| match s.home.store().read_manifest(&id) {
                        Ok(envelope) => Ok(Some(envelope)),
                        Err(StoreError::ManifestMissing(_)) => Ok(None),
                        Err(e) => Err(e.into()),
                    })
                    .await?;
                match found {
                    Some(envelope) if ManifestId::of(&envelope) == id => {
                        let (pace, acked_by) =
                            (self.pace(envelope.len() as u64), self.reply_deadline(envelope.len() as u64));
                        let len = u32::try_from(envelope.len()).unwrap_or(u32::MAX);
                        let frame = Frame::ManifestData(ManifestData { id, len });
                        reply_with_payload(send, frame, envelope.into(), held, pace, acked_by).await
                    }
                    _ => reply(send, Frame::NotFound(NotFound { id: id.0 })).await,
                }
            }
            Frame::Pin(pin) => {
                let len = u64::from(pin.chunks) * 32;
                // The id list is in memory up to four times over while it
                // is received, signed over, kept as the pin and as signed,
                // sorted and written: count all of it.
                let _held = self.reserve(len * 4).await?;
                let mut payload = Vec::new();
                reader.payload(len as usize, &mut payload, self.pace(len)).await.map_err(Refusal::payload)?;
                let answer = self.blocking(move |s| s.requests().pin(&pin, payload)).await?;
                reply(send, answer).await
            }
            Frame::Unpin(unpin) => {
                let answer = self
                    .blocking(move |s| {
                        let (answer, removed) = s.requests().unpin(&unpin)?;
                        if removed {
                            s.gc_trigger.unpinned();
                        }
                        Ok(answer)
                    })
                    .await?;
                reply(send, answer).await
            }
            Frame::PutHead(put) => {
                let entry = signed_entry(&put.entry)?;
                let hash = entry.hash();
                let stored = self.blocking(move |s| Ok(s.home.store().meta().put_head(&entry)?)).await?;
                if !stored {
                    return Err(Refusal::new(ErrorCode::STALE_HEAD, "this node holds a newer head for that owner"));
                }
                reply(send, Frame::Ack(Ack { id: hash })).await
            }
            Frame::GetHead(get) => {
                self.check_owner_proof(&get.owner, &get.proof)?;
                let owner = get.owner;
                let entry = self.blocking(move |s| Ok(s.home.store().meta().head(&owner)?)).await?;
                let entry = entry.and_then(BoundedBytes::new);
                reply(send, Frame::Head(Head { entry })).await
            }
            Frame::AppendLog(append) => {
                let entry = signed_entry(&append.entry)?;
                let (hash, seq) = (entry.hash(), entry.seq);
                match self.blocking(move |s| Ok(s.home.store().meta().append_log(&entry)?)).await? {
                    Appended::Appended | Appended::AlreadyHeld => reply(send, Frame::Ack(Ack { id: hash })).await,
                    Appended::Conflict { held } => Err(Refusal::new(
                        ErrorCode::LOG_CONFLICT,
                        format!(
                            "log entry {seq} does not follow this node's copy of the log ({held} entries): \
                             read the log again and retry"
                        ),
                    )),
                }
            }
            Frame::GetLog(get) => {
                self.check_owner_proof(&get.owner, &get.proof)?;
                let (owner, from) = (get.owner, get.from);
                let (entries, more) = self
                    .blocking(move |s| {
                        Ok(s.home.store().meta().log_from(&owner, from, wire::MAX_LOG_BATCH, LOG_REPLY_BYTES)?)
                    })
                    .await?;
                let entries = entries.into_iter().map(BoundedBytes::new).collect::<Option<Vec<_>>>();
                let entries = entries
                    .and_then(wire::Bounded::new)
                    .ok_or_else(|| Refusal::new(ErrorCode::INTERNAL, "a stored log entry is over the wire's limits"))?;
                reply(send, Frame::Log(Log { entries, more })).await
            }
            Frame::GetStatus(_) => {
                // Who stores what is the node's own business: only its home's
                // CLI (which connects with the node's key) learns it.
                let own_home = self.peer.node_id() == self.state.net.node_id();
                let status = self
                    .blocking(move |s| {
                        let store = s.home.store();
                        let (chunk_bytes, chunks) = store.chunk_usage()?;
                        let connections = s.members.count() as u64;
                        let mut owners = if own_home { store.owner_usage()? } else { Vec::new() };
                        owners.sort_unstable_by_key(|o| std::cmp::Reverse(o.bytes));
                        let omitted = owners.len().saturating_sub(wire::MAX_STATUS_OWNERS) as u64;
                        owners.truncate(wire::MAX_STATUS_OWNERS);
                        let owners = owners
                            .into_iter()
                            .map(|o| OwnerBytes { owner: o.owner, chunks: o.chunks, bytes: o.bytes })
                            .collect();
                        let repair = s.repair.health();
                        Ok(Status {
                            chunks,
                            chunk_bytes,
                            pins: store.meta().pin_count()?,
                            connections,
                            max_storage: s.storage.max_storage,
                            owners: wire::Bounded::new(owners).expect("truncated to MAX_STATUS_OWNERS"),
                            owners_omitted: omitted,
                            under_replicated: repair.under_replicated,
                            repaired: repair.repaired,
                            repairing: repair.in_progress,
                            last_repair_ms: repair.last_pass_ms,
                        })
                    })
                    .await?;
                reply(send, Frame::Status(status)).await
            }
            Frame::Hello(_) => Err(Refusal::new(ErrorCode::BAD_FRAME, "Hello is sent once, first on a connection")),
            other @ (Frame::HasReply(_)
            | Frame::Ack(_)
            | Frame::ChunkData(_)
            | Frame::NotFound(_)
            | Frame::ManifestData(_)
            | Frame::Head(_)
            | Frame::Pong(_)
            | Frame::Log(_)
            | Frame::Status(_)
            | Frame::Error(_)) => {
                Err(Refusal::new(ErrorCode::BAD_FRAME, format!("{:?} is a reply, not a request", other.frame_type())))
            }
        }
    }

    /// Only an owner reads its own log and head: the request carries its
    /// signature over this connection's exporter secret.
    fn check_owner_proof(&self, owner: &crate::id::OwnerId, proof: &wire::Signature) -> Result<(), Refusal> {
        if owner_proof_holds(&self.peer, owner, proof) {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::BAD_SIGNATURE,
                "only its owner reads a log: sign this connection's exporter secret with the owner key \
                 (docs/PROTOCOL.md, \"Reading a log\")",
            ))
        }
    }
}

async fn reply(send: &mut SendStream, frame: Frame) -> Result<(), Refusal> {
    write_frame(send, &frame, Bytes::new(), Pace::at_rate(stream::SENDER_RATE))
        .await
        .map_err(|e| Refusal::new(ErrorCode::INTERNAL, e.to_string()))
}

/// Sends a reply and its payload at `pace` (a client that does not read
/// is cut off), and keeps the payload's reservation until the peer has
/// acknowledged every byte (quinn holds them until then), or until
/// `acked_by`, when the stream is reset.
async fn reply_with_payload(
    send: &mut SendStream,
    frame: Frame,
    payload: Bytes,
    held: Reservation<'_>,
    pace: Pace<'_>,
    acked_by: Instant,
) -> Result<(), Refusal> {
    let sent = async {
        tokio::time::timeout_at(acked_by, write_frame(send, &frame, payload, pace))
            .await
            .map_err(|_| StreamError::TimedOut("sending"))??;
        stream::finish_and_wait(send, acked_by).await
    };
    if let Err(e) = sent.await {
        // The peer is gone or too slow: reset the stream so quinn lets go of
        // the payload before the reservation does. No one to send an Error to.
        let _ = send.reset(VarInt::from(ErrorCode::TIMEOUT.0));
        debug!("a reply was not taken in time: {e}");
    }
    drop(held);
    Ok(())
}

/// A log entry from a frame, decoded and checked against its owner's signature.
fn signed_entry(bytes: &[u8]) -> Result<LogEntry, Refusal> {
    let entry =
        LogEntry::decode(0, bytes).map_err(|e| Refusal::new(ErrorCode::BAD_FRAME, format!("not a log entry: {e}")))?;
    entry
        .verify_signature()
        .map_err(|_| Refusal::new(ErrorCode::BAD_SIGNATURE, "log entry not signed by the owner it names"))?;
    Ok(entry)
}
