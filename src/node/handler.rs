//! Answers one request per stream, as docs/PROTOCOL.md "Replies" says.
//!
//! A frame the decoder rejects gets an `Error{BadFrame}` and that stream is
//! closed; the connection and every other stream carry on. A request that
//! fails gets an `Error` naming what failed. Store work (fsync, reads) runs
//! on the blocking pool, and a payload is read only after its bytes are
//! reserved from the node's budget.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tokio::sync::SemaphorePermit;
use tracing::debug;

use super::NodeState;
use crate::crypto;
use crate::id::{ChunkId, ManifestId};
use crate::manifest::log::LogEntry;
use crate::net::Peer;
use crate::net::stream::{FrameReader, StreamError, write_frame, write_frame_owned};
use crate::store::{Appended, PinRecord, StoreError};
use crate::wire::{
    self, Ack, BoundedBytes, BoundedString, ChunkData, Error, ErrorCode, Frame, HasReply, Head, Log, ManifestData,
    NotFound, Peers, Pong, Status,
};

/// Log entry bytes in one `Log` reply: with the largest entry on top, still
/// under `MAX_FRAME_LEN`; a reply holds at most `MAX_LOG_BATCH` entries.
const LOG_REPLY_BYTES: usize = wire::MAX_FRAME_LEN - wire::MAX_LOG_ENTRY_LEN - 1024;

/// Serves a connection's request streams until it closes.
pub(super) async fn serve_connection(state: Arc<NodeState>, peer: Peer) {
    let mut requests = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            stream = peer.accept_stream() => {
                let Ok((send, recv)) = stream else { break };
                requests.spawn(serve_stream(Arc::clone(&state), peer.clone(), send, recv));
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    requests.abort_all();
    while requests.join_next().await.is_some() {}
}

/// Why a request could not be served: the code and message of its `Error` reply.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        let full = e
            .io_error()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded));
        if full {
            Refusal::new(ErrorCode::STORAGE_FULL, format!("this node's disk is full ({e}); try another node"))
        } else {
            Refusal::new(ErrorCode::INTERNAL, format!("{e:#}"))
        }
    }
}

async fn serve_stream(state: Arc<NodeState>, peer: Peer, mut send: SendStream, mut recv: RecvStream) {
    let mut reader = FrameReader::new(&mut recv);
    let result = match reader.next_frame().await {
        Ok(frame) => answer(&state, frame, &mut reader, &mut send).await,
        Err(StreamError::Decode(e)) => {
            Err(Refusal::new(ErrorCode::BAD_FRAME, format!("{e}; this stream is closed, the connection is not")))
        }
        Err(e) => {
            debug!("{peer:?}: request stream failed: {e}");
            return;
        }
    };
    if let Err(refusal) = result {
        debug!("{peer:?}: refused a request: {}", refusal.message);
        let error = Frame::Error(Error { code: refusal.code, message: BoundedString::truncating(&refusal.message) });
        let _ = write_frame(&mut send, &error, &[]).await;
        // Stop the peer's side, so a refused payload is not sent in vain.
        let _ = recv.stop(quinn::VarInt::from(refusal.code.0));
    }
    let _ = send.finish();
}

async fn reply(send: &mut SendStream, frame: Frame, payload: &[u8]) -> Result<(), Refusal> {
    write_frame(send, &frame, payload).await.map_err(|e| Refusal::new(ErrorCode::INTERNAL, e.to_string()))
}

/// Reserves `len` payload bytes from the node's budget; refuses `Busy` if
/// they could never fit.
async fn reserve(state: &NodeState, len: u64) -> Result<SemaphorePermit<'_>, Refusal> {
    let busy = || Refusal::new(ErrorCode::BUSY, format!("a {len}-byte payload is over this node's memory budget"));
    let permits = u32::try_from(len).ok().filter(|&n| n as usize <= super::PAYLOAD_BUDGET).ok_or_else(busy)?;
    state.budget.acquire_many(permits).await.map_err(|_| busy())
}

async fn read_payload(reader: &mut FrameReader<'_>, len: u64) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    reader
        .payload(len as usize, &mut out)
        .await
        .map_err(|e| Refusal::new(ErrorCode::BAD_FRAME, format!("reading the payload: {e}")))?;
    Ok(out)
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    state: &Arc<NodeState>,
    work: impl FnOnce(&NodeState) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|e| Refusal::new(ErrorCode::INTERNAL, format!("request task failed: {e}")))?
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

async fn answer(
    state: &Arc<NodeState>,
    frame: Frame,
    reader: &mut FrameReader<'_>,
    send: &mut SendStream,
) -> Result<(), Refusal> {
    match frame {
        Frame::Ping(ping) => reply(send, Frame::Pong(Pong { nonce: ping.nonce }), &[]).await,
        Frame::Peers(peers) => {
            state.learn(&peers.peers);
            let known = state.known().into_iter().take(wire::MAX_PEERS).collect();
            let peers = wire::Bounded::new(known).expect("at most MAX_PEERS were taken");
            reply(send, Frame::Peers(Peers { peers }), &[]).await
        }
        Frame::Has(has) => {
            let ids = has.ids.into_inner();
            let present =
                blocking(state, move |s| Ok(ids.iter().map(|id| s.home.store().has_chunk(id)).collect())).await?;
            let reply_frame: Vec<bool> = present;
            let bitmap = HasReply::from_flags(&reply_frame).expect("as many flags as ids, within MAX_HAS_IDS");
            reply(send, Frame::HasReply(bitmap), &[]).await
        }
        Frame::PutChunk(put) => {
            let _permit = reserve(state, u64::from(put.len)).await?;
            // The pieces quinn received, hashed and written as they are: no copy.
            let parts = reader
                .payload_parts(put.len as usize)
                .await
                .map_err(|e| Refusal::new(ErrorCode::BAD_FRAME, format!("reading the payload: {e}")))?;
            let id = put.id;
            blocking(state, move |s| {
                let mut hasher = blake3::Hasher::new();
                parts.iter().for_each(|part| {
                    hasher.update(part);
                });
                if ChunkId(*hasher.finalize().as_bytes()) != id {
                    return Err(Refusal::new(ErrorCode::BAD_FRAME, format!("chunk bytes do not hash to {id}")));
                }
                s.home.store().put_chunk_parts(&id, &parts)?;
                Ok(())
            })
            .await?;
            reply(send, Frame::Ack(Ack { id: id.0 }), &[]).await
        }
        Frame::GetChunk(get) => {
            // Chunk files are at most 16 MiB + tag: reserve that much up front.
            let _permit = reserve(state, u64::from(wire::MAX_CHUNK_PAYLOAD)).await?;
            let id = get.id;
            let found = blocking(state, move |s| {
                let mut buf = Vec::new();
                match s.home.store().read_chunk_ciphertext(&id, &mut buf) {
                    Ok(true) => Ok(Some(buf)),
                    Ok(false) => Ok(None),
                    // A corrupted copy was quarantined: for the peer it is simply not here.
                    Err(StoreError::ChunkCorrupted { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
            match found {
                Some(bytes) => {
                    let len = u32::try_from(bytes.len()).expect("chunk files are within MAX_CHUNK_PAYLOAD");
                    write_frame_owned(send, &Frame::ChunkData(ChunkData { id, len }), bytes.into())
                        .await
                        .map_err(|e| Refusal::new(ErrorCode::INTERNAL, e.to_string()))
                }
                None => reply(send, Frame::NotFound(NotFound { id: id.0 }), &[]).await,
            }
        }
        Frame::PutManifest(put) => {
            let _permit = reserve(state, u64::from(put.len)).await?;
            let envelope = read_payload(reader, u64::from(put.len)).await?;
            let id = put.id;
            blocking(state, move |s| {
                if ManifestId::of(&envelope) != id {
                    return Err(Refusal::new(ErrorCode::BAD_FRAME, format!("manifest bytes do not hash to {id}")));
                }
                Ok(s.home.store().put_manifest(&id, &envelope)?)
            })
            .await?;
            reply(send, Frame::Ack(Ack { id: id.0 }), &[]).await
        }
        Frame::GetManifest(get) => {
            let id = get.id;
            let found = blocking(state, move |s| match s.home.store().read_manifest(&id) {
                Ok(envelope) => Ok(Some(envelope)),
                Err(StoreError::ManifestMissing(_)) => Ok(None),
                Err(e) => Err(e.into()),
            })
            .await?;
            match found {
                Some(envelope) if ManifestId::of(&envelope) == id => {
                    let len = u32::try_from(envelope.len()).unwrap_or(u32::MAX);
                    reply(send, Frame::ManifestData(ManifestData { id, len }), &envelope).await
                }
                _ => reply(send, Frame::NotFound(NotFound { id: id.0 }), &[]).await,
            }
        }
        Frame::Pin(pin) => {
            let len = u64::from(pin.chunks) * 32;
            let _permit = reserve(state, len).await?;
            let payload = read_payload(reader, len).await?;
            let chunks: Vec<ChunkId> = payload
                .chunks_exact(32)
                .map(|id| ChunkId(id.try_into().expect("chunks_exact yields 32 bytes")))
                .collect();
            let message = wire::pin_message(&pin.owner, &pin.manifest, &chunks);
            crypto::verify(&pin.owner, wire::PIN_DOMAIN, &message, &pin.signature.0).map_err(|_| {
                Refusal::new(ErrorCode::BAD_SIGNATURE, format!("pin of {} is not signed by its owner", pin.manifest))
            })?;
            let (owner, manifest) = (pin.owner, pin.manifest);
            blocking(state, move |s| {
                if let Some(held) = s.home.store().meta().pin(&manifest)?
                    && held.owner != owner
                {
                    return Err(Refusal::new(ErrorCode::BAD_SIGNATURE, "another owner pinned that manifest"));
                }
                Ok(s.home.store().meta().commit(&[], &[(manifest, PinRecord { owner, chunks })], &[], &[])?)
            })
            .await?;
            reply(send, Frame::Ack(Ack { id: manifest.0 }), &[]).await
        }
        Frame::Unpin(unpin) => {
            let message = wire::unpin_message(&unpin.owner, &unpin.manifest);
            crypto::verify(&unpin.owner, wire::UNPIN_DOMAIN, &message, &unpin.signature.0).map_err(|_| {
                Refusal::new(
                    ErrorCode::BAD_SIGNATURE,
                    format!("unpin of {} is not signed by its owner", unpin.manifest),
                )
            })?;
            let (owner, manifest) = (unpin.owner, unpin.manifest);
            blocking(state, move |s| {
                match s.home.store().meta().pin(&manifest)? {
                    Some(held) if held.owner != owner => {
                        return Err(Refusal::new(ErrorCode::BAD_SIGNATURE, "that manifest is pinned by another owner"));
                    }
                    Some(_) => s.home.store().meta().commit(&[], &[], &[manifest], &[])?,
                    None => {}
                }
                Ok(())
            })
            .await?;
            reply(send, Frame::Ack(Ack { id: manifest.0 }), &[]).await
        }
        Frame::PutHead(put) => {
            let entry = signed_entry(&put.entry)?;
            let hash = entry.hash();
            let stored = blocking(state, move |s| Ok(s.home.store().meta().put_head(&entry)?)).await?;
            if !stored {
                return Err(Refusal::new(ErrorCode::STALE_HEAD, "this node holds a newer head for that owner"));
            }
            reply(send, Frame::Ack(Ack { id: hash }), &[]).await
        }
        Frame::GetHead(get) => {
            let owner = get.owner;
            let entry = blocking(state, move |s| Ok(s.home.store().meta().head(&owner)?)).await?;
            let entry = entry.and_then(BoundedBytes::new);
            reply(send, Frame::Head(Head { entry }), &[]).await
        }
        Frame::AppendLog(append) => {
            let entry = signed_entry(&append.entry)?;
            let (hash, seq) = (entry.hash(), entry.seq);
            match blocking(state, move |s| Ok(s.home.store().meta().append_log(&entry)?)).await? {
                Appended::Appended | Appended::AlreadyHeld => reply(send, Frame::Ack(Ack { id: hash }), &[]).await,
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
            let (owner, from) = (get.owner, get.from);
            let (entries, more) = blocking(state, move |s| {
                Ok(s.home.store().meta().log_from(&owner, from, wire::MAX_LOG_BATCH, LOG_REPLY_BYTES)?)
            })
            .await?;
            let entries = entries.into_iter().map(BoundedBytes::new).collect::<Option<Vec<_>>>();
            let entries = entries
                .and_then(wire::Bounded::new)
                .ok_or_else(|| Refusal::new(ErrorCode::INTERNAL, "a stored log entry is over the wire's limits"))?;
            reply(send, Frame::Log(Log { entries, more }), &[]).await
        }
        Frame::GetStatus(_) => {
            let status = blocking(state, |s| {
                let store = s.home.store();
                let (chunk_bytes, chunks) = store.chunk_usage()?;
                Ok(Status { chunks, chunk_bytes, pins: store.meta().pin_count()? })
            })
            .await?;
            reply(send, Frame::Status(status), &[]).await
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
