//! Push to peers: each chunk on the R best-placed live peers.
//!
//! A chunk goes to the R live peers that rank highest for it (rendezvous
//! order); a peer that fails is dropped and the chunk goes to the next one
//! in that order. A chunk counts only when acked, and a peer acks only once
//! the chunk is durable. Chunks of the name's previous version are asked
//! about first (batched `Has`), and a peer that says it has one counts only
//! if it is one the chunk would be placed on: a peer elsewhere in the order
//! cannot make the push skip the peers that should hold it. Once every
//! chunk is placed, the version's manifest and pin go to every peer, and
//! each peer holding a chunk of it must confirm its pin.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::TransferError;
use super::push::{Destination, Published};
use super::record;
use super::swarm::Swarm;
use crate::crypto::OwnerKeys;
use crate::id::{ChunkId, ManifestId, NodeId};
use crate::wire::ErrorCode;

/// Push to peers: R replicas per chunk.
pub struct Replicate<'a> {
    swarm: &'a Swarm,
    owner: &'a OwnerKeys,
    /// Replicas wanted per chunk.
    pub replicas: usize,
    /// The members that said they hold each chunk of the previous version.
    said_held: HashMap<ChunkId, Vec<usize>>,
    /// The members holding each chunk sent in this push (they acked it, or
    /// were placed for it and had it).
    holders: Mutex<HashMap<ChunkId, Vec<usize>>>,
    /// Sent chunks' buffers, for reuse.
    buffers: Recycler,
    /// When the chunks acked so far were last asked about ([`Replicate::keep_alive`]).
    refreshed: Mutex<Instant>,
}

/// How often a push asks its peers about the chunks they acked, so that
/// none is collected before the pin arrives: well under the default
/// `--gc-grace` (1 h). A node whose grace is shorter than this can still
/// collect some; the check after the pin then fails the push, and a rerun
/// sends them again.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10 * 60);

impl<'a> Replicate<'a> {
    /// Replication to `replicas` peers per chunk (capped by the swarm's size).
    /// `previous` are chunks likely to be there already (the name's previous
    /// version); every live peer is asked about them in batched `Has` requests.
    pub fn new(swarm: &'a Swarm, owner: &'a OwnerKeys, replicas: usize, previous: &[ChunkId]) -> Self {
        let replicas = replicas.clamp(1, swarm.len().max(1));
        let mut said_held: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        if !previous.is_empty() {
            let live = swarm.live_members();
            let asks = live.iter().map(|&i| swarm.with_retry(i, |peer| async move { peer.has(previous).await }));
            for (&index, answer) in live.iter().zip(swarm.client().run_all(asks)) {
                match answer {
                    Ok(present) => {
                        for (id, _) in previous.iter().zip(present).filter(|(_, p)| *p) {
                            said_held.entry(*id).or_default().push(index);
                        }
                    }
                    Err(e) => swarm.drop_member(index, &e),
                }
            }
        }
        Self {
            swarm,
            owner,
            replicas,
            said_held,
            holders: Mutex::new(HashMap::new()),
            buffers: Recycler::default(),
            refreshed: Mutex::new(Instant::now()),
        }
    }

    /// The members a chunk is placed on, if every one of them said it has it.
    fn placed_and_held(&self, id: &ChunkId) -> Option<Vec<usize>> {
        let said = self.said_held.get(id)?;
        let placed: Vec<usize> = self.swarm.ranked(id.as_bytes()).into_iter().take(self.replicas).collect();
        (placed.len() == self.replicas && placed.iter().all(|i| said.contains(i))).then_some(placed)
    }

    /// Sends one chunk until `replicas` peers hold it, in rendezvous order.
    /// Returns whether it was sent to any.
    fn replicate(&self, id: &ChunkId, ciphertext: &Bytes) -> Result<bool, TransferError> {
        let swarm = self.swarm;
        let said = self.said_held.get(id);
        let mut holders = Vec::with_capacity(self.replicas);
        let mut tried = vec![false; swarm.len()];
        let mut failures = Vec::new();
        let mut sent = false;
        while holders.len() < self.replicas {
            let batch: Vec<usize> = swarm
                .ranked(id.as_bytes())
                .into_iter()
                .filter(|&i| !tried[i])
                .take(self.replicas - holders.len())
                .collect();
            if batch.is_empty() {
                break;
            }
            let mut to_send = Vec::with_capacity(batch.len());
            for index in batch {
                tried[index] = true;
                if said.is_some_and(|s| s.contains(&index)) {
                    holders.push(index);
                } else {
                    to_send.push(index);
                }
            }
            let puts = to_send.iter().map(|&index| {
                swarm.with_retry(index, |peer| {
                    let ciphertext = ciphertext.clone();
                    async move { peer.put_chunk(*id, ciphertext).await }
                })
            });
            for (&index, result) in to_send.iter().zip(swarm.client().run_all(puts)) {
                let member = swarm.member(index);
                match result {
                    Ok(()) => {
                        holders.push(index);
                        sent = true;
                        member.chunks_sent.fetch_add(1, Ordering::Relaxed);
                        member.bytes_sent.fetch_add(ciphertext.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if Swarm::disqualifies(&e) {
                            swarm.drop_member(index, &e);
                        }
                        failures.push(e.to_string());
                    }
                }
            }
        }
        let acked = holders.len();
        self.holders.lock().unwrap_or_else(PoisonError::into_inner).insert(*id, holders);
        if acked < self.replicas {
            return Err(TransferError::Replication {
                chunk: *id,
                acked,
                wanted: self.replicas,
                reasons: failures.join("; "),
            });
        }
        Ok(sent)
    }

    /// The members holding `id` for this push.
    fn holders_of(&self, id: &ChunkId, sent: &HashMap<ChunkId, Vec<usize>>) -> Vec<usize> {
        sent.get(id).cloned().or_else(|| self.placed_and_held(id)).unwrap_or_default()
    }

    /// Takes back the pins of a version that failed to publish, from the
    /// members that took them (best effort: what fails is only a leak).
    fn unpin(&self, manifest: ManifestId, pinned: &HashSet<usize>) {
        let only: HashSet<NodeId> = pinned.iter().map(|&i| self.swarm.member(i).node()).collect();
        let retracted = record::send_unpins(self.swarm, self.owner, &[manifest], Some(&only));
        for (node, why) in retracted.unconfirmed {
            tracing::info!("the pin of unpublished manifest {manifest} stays on {}: {why}", node.short(16));
        }
    }

    /// Every [`KEEP_ALIVE`], asks each member about the chunks it acked in
    /// this push: a node counts a chunk as new again when asked (`Has`), so
    /// its live collection spares them until the pin arrives, however long
    /// the push takes.
    fn keep_alive(&self) {
        {
            let mut last = self.refreshed.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < KEEP_ALIVE {
                return;
            }
            *last = Instant::now();
        }
        let mut by_member: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for (id, holders) in self.holders.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            for &index in holders {
                by_member.entry(index).or_default().push(*id);
            }
        }
        let by_member: Vec<(usize, Vec<ChunkId>)> = by_member.into_iter().collect();
        let asks = by_member
            .iter()
            .map(|(index, ids)| self.swarm.with_retry(*index, move |peer| async move { peer.has(ids).await }));
        for ((index, _), result) in by_member.iter().zip(self.swarm.client().run_all(asks)) {
            if let Err(e) = result {
                tracing::debug!(
                    "keeping {}'s chunks of this push alive: {e}",
                    self.swarm.member(*index).node().short(16)
                );
            }
        }
    }
}

impl Destination for Replicate<'_> {
    fn holds(&self, id: &ChunkId) -> bool {
        self.placed_and_held(id).is_some()
    }

    fn put(&self, id: &ChunkId, ciphertext: &mut Vec<u8>) -> Result<bool, TransferError> {
        if self.holds(id) {
            return Ok(false);
        }
        // Every replica's stream shares this one buffer; quinn copies it only
        // into packets. It comes back to the pipeline once quinn lets go.
        let capacity = ciphertext.capacity();
        let shared = Bytes::from(std::mem::take(ciphertext));
        let result = self.replicate(id, &shared);
        *ciphertext = self.buffers.reclaim(shared, capacity);
        self.keep_alive();
        result
    }

    /// Every live peer keeps the manifest, the pin and the head (the
    /// manifest is small, and any of them can then serve a pull by id);
    /// every peer holding a chunk of the version must confirm, so that no
    /// chunk counts as a replica on a node that would not keep it.
    fn publish(&self, version: &Published<'_>) -> Result<(), TransferError> {
        let swarm = self.swarm;
        let sent = self.holders.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let holders: Vec<Vec<usize>> = version.chunks.iter().map(|id| self.holders_of(id, &sent)).collect();
        let mut targets: Vec<usize> = swarm.live_members();
        targets.extend(holders.iter().flatten().copied());
        targets.sort_unstable();
        targets.dedup();

        let (pinned, mut failures) = publish_to(swarm, self.owner, version, &targets);
        // A pin keeps only what the node still holds: one whose --gc-grace
        // is shorter than this push took may have collected a chunk before
        // the pin arrived. So each holder is asked about its chunks, now
        // pinned, and a chunk it lacks is no replica.
        let mut on_node: Vec<(usize, Vec<ChunkId>)> = Vec::new();
        for &index in &pinned {
            let mut ids: Vec<ChunkId> = version
                .chunks
                .iter()
                .zip(&holders)
                .filter(|(_, holders)| holders.contains(&index))
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if !ids.is_empty() {
                on_node.push((index, ids));
            }
        }
        let checks =
            on_node.iter().map(|(index, ids)| swarm.with_retry(*index, move |peer| async move { peer.has(ids).await }));
        let mut lost: HashSet<(usize, ChunkId)> = HashSet::new();
        for ((index, ids), result) in on_node.iter().zip(swarm.client().run_all(checks)) {
            let node = swarm.member(*index).node().short(16);
            match result {
                Ok(present) => {
                    let missing: Vec<ChunkId> =
                        ids.iter().zip(present).filter(|(_, here)| !here).map(|(id, _)| *id).collect();
                    if !missing.is_empty() {
                        failures.push(format!(
                            "{node} no longer has {} it acknowledged: it collected them before the pin arrived (its \
                             --gc-grace is shorter than this push took); run the push again",
                            if missing.len() == 1 { "1 chunk".to_owned() } else { format!("{} chunks", missing.len()) }
                        ));
                    }
                    lost.extend(missing.into_iter().map(|id| (*index, id)));
                }
                Err(e) => {
                    failures.push(format!("{node}, asked what it holds after the pin: {e}"));
                    lost.extend(ids.iter().map(|id| (*index, *id)));
                }
            }
        }
        for (id, holders) in version.chunks.iter().zip(&holders) {
            let kept = holders.iter().filter(|i| pinned.contains(i) && !lost.contains(&(**i, *id))).count();
            if kept < self.replicas {
                // The version is not recorded: its pins would keep its chunks for ever.
                self.unpin(version.manifest, &pinned);
                return Err(TransferError::Replication {
                    chunk: *id,
                    acked: kept,
                    wanted: self.replicas,
                    reasons: format!(
                        "the version's pin did not reach every peer holding this chunk: {}",
                        if failures.is_empty() { "no peer holds it".to_owned() } else { failures.join("; ") }
                    ),
                });
            }
        }
        if pinned.is_empty() {
            return Err(TransferError::Unpublished { manifest: version.manifest, reasons: failures.join("; ") });
        }
        Ok(())
    }
}

/// Sent chunk buffers on their way back to the push pipeline.
///
/// quinn keeps a reference to a stream's data until the peer acknowledges
/// the packets, which can be a moment after the peer's `Ack` frame arrives.
/// A buffer still held then waits here, and the next chunk takes any waiting
/// buffer quinn has let go of, so the pipeline reuses a few allocations
/// instead of faulting in new pages for most chunks.
#[derive(Default)]
struct Recycler {
    waiting: Mutex<Vec<Bytes>>,
}

/// Buffers kept waiting at most; beyond that, quinn frees them when done.
const MAX_WAITING_BUFFERS: usize = 8;

impl Recycler {
    /// An empty buffer of at least `capacity`: `sent`'s own, or one that has
    /// come free since, or a new one.
    fn reclaim(&self, sent: Bytes, capacity: usize) -> Vec<u8> {
        let free = if sent.is_unique() {
            Some(sent)
        } else {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let free = waiting.iter().position(Bytes::is_unique).map(|i| waiting.swap_remove(i));
            if waiting.len() == MAX_WAITING_BUFFERS {
                waiting.remove(0);
            }
            waiting.push(sent);
            free
        };
        // Emptied as a BytesMut: `Bytes::truncate(0)` would let go of the buffer.
        free.and_then(|bytes| bytes.try_into_mut().ok())
            .map(|mut buf| {
                buf.clear();
                Vec::from(buf)
            })
            .filter(|buf| buf.capacity() >= capacity)
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }
}

/// Sends a version's manifest, signed pin and log head to each of
/// `targets`; returns those that took them all, and why the others did not
/// (each of which is dropped from the swarm). A newer head from another
/// machine of this owner is no failure.
pub(super) fn publish_to(
    swarm: &Swarm,
    owner: &OwnerKeys,
    version: &Published<'_>,
    targets: &[usize],
) -> (HashSet<usize>, Vec<String>) {
    let pin = record::signed_pin(owner, version.manifest, version.chunks, version.erasure);
    let envelope = Bytes::copy_from_slice(version.envelope);
    let entry = version.entry.encode();
    let entry_hash = version.entry.hash();
    let calls = targets.iter().map(|&index| {
        let (pin, envelope, entry) = (pin.clone(), envelope.clone(), entry.clone());
        swarm.with_retry(index, move |peer| {
            let (pin, envelope, entry) = (pin.clone(), envelope.clone(), entry.clone());
            async move {
                peer.put_manifest(version.manifest, envelope).await?;
                peer.pin(pin, version.chunks).await?;
                match peer.put_head(entry, entry_hash).await {
                    Err(e) if e.remote_code() == Some(ErrorCode::STALE_HEAD.0) => Ok(()),
                    other => other,
                }
            }
        })
    });
    let mut pinned = HashSet::new();
    let mut failures = Vec::new();
    for (&index, result) in targets.iter().zip(swarm.client().run_all(calls)) {
        match result {
            Ok(()) => {
                pinned.insert(index);
            }
            Err(e) => {
                swarm.drop_member(index, &e);
                failures.push(e.to_string());
            }
        }
    }
    (pinned, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A buffer of capacity 4099 that comes back with capacity 4099 is the
    // same one: a new one would have the 4096 asked for.

    #[test]
    fn a_buffer_nobody_else_holds_comes_back_itself() {
        let mut buf = Vec::with_capacity(4099);
        buf.extend_from_slice(&[7; 1000]);
        let back = Recycler::default().reclaim(Bytes::from(buf), 4096);
        assert_eq!((back.len(), back.capacity()), (0, 4099));
    }

    #[test]
    fn a_buffer_still_held_waits_and_is_reused_once_free() {
        let recycler = Recycler::default();
        let mut buf = Vec::with_capacity(4099);
        buf.extend_from_slice(&[7; 1000]);
        let sent = Bytes::from(buf);
        let quinns = sent.clone();
        let first = recycler.reclaim(sent, 4096);
        assert_eq!((first.len(), first.capacity()), (0, 4096), "a buffer still held is not handed out");
        assert_eq!(&quinns[..], &[7; 1000][..], "the other holder's bytes are untouched");

        drop(quinns);
        let other = Bytes::from(Vec::with_capacity(4096));
        let _still_held = other.clone();
        let second = recycler.reclaim(other, 4096);
        assert_eq!((second.len(), second.capacity()), (0, 4099), "the waiting buffer, now free, is reused");
    }
}
