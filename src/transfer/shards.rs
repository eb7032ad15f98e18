//! Push to peers, erasure coded: each chunk as K data + M parity shards
//! ([`crate::erasure`]) on K + M distinct nodes.
//!
//! Shard i of a chunk goes to the i-th live peer in the chunk's rendezvous
//! order (scores over the `ChunkId`); a peer that fails is dropped and the
//! shard goes to the next peer in that order not used by the stripe, so no
//! node holds two shards of one chunk. A shard counts only when acked
//! durable. The stripes of the name's previous version are asked about
//! first (batched `Has` of their shard ids): a chunk whose every shard sits
//! on the peer it is placed on is neither sealed again nor sent. Once every
//! chunk is placed, the version's manifest and pin (its shard ids, stripe
//! by stripe, each led by the chunk's id) go to every peer, and each peer
//! holding a shard must confirm it still holds it under the pin.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use super::TransferError;
use super::push::{Destination, Published};
use super::record;
use super::replicate::KEEP_ALIVE;
use super::swarm::Swarm;
use crate::crypto::OwnerKeys;
use crate::erasure::{self, MAX_SHARDS, Shape};
use crate::id::{ChunkId, ManifestId, NodeId};
use crate::manifest::{Erasure, Stripe};

/// Push to peers: K + M shards per chunk, one per node.
pub struct Shards<'a> {
    swarm: &'a Swarm,
    owner: &'a OwnerKeys,
    shape: Shape,
    /// The stripes of chunks pushed before (the name's previous version).
    previous: HashMap<ChunkId, Stripe>,
    /// The members that said they hold each shard of those stripes.
    said_held: HashMap<ChunkId, Vec<usize>>,
    /// Stripes made in this push, and the member holding each shard.
    sent: Mutex<HashMap<ChunkId, (Stripe, Vec<usize>)>>,
    /// When the shards acked so far were last asked about.
    refreshed: Mutex<Instant>,
}

impl<'a> Shards<'a> {
    /// Erasure coding with `shape` over `swarm`, which needs at least
    /// K + M live peers. `previous` are stripes likely to be there already
    /// (the name's previous version): every live peer is asked about their
    /// shards in batched `Has` requests.
    pub fn new(
        swarm: &'a Swarm,
        owner: &'a OwnerKeys,
        shape: Shape,
        previous: Vec<(ChunkId, Stripe)>,
    ) -> Result<Self, TransferError> {
        if swarm.live() < shape.total() {
            return Err(too_few_nodes(shape, swarm.live()));
        }
        let previous: HashMap<ChunkId, Stripe> =
            previous.into_iter().filter(|(_, stripe)| stripe.shards.len() == shape.total()).collect();
        let mut ids: Vec<ChunkId> = previous.values().flat_map(|s| s.shards.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut said_held: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        if !ids.is_empty() {
            let live = swarm.live_members();
            let ids = &ids;
            let asks = live.iter().map(|&i| swarm.with_retry(i, |peer| async move { peer.has(ids).await }));
            for (&index, answer) in live.iter().zip(swarm.client().run_all(asks)) {
                match answer {
                    Ok(present) => {
                        for (id, _) in ids.iter().zip(present).filter(|(_, p)| *p) {
                            said_held.entry(*id).or_default().push(index);
                        }
                    }
                    Err(e) => swarm.drop_member(index, &e),
                }
            }
        }
        Ok(Self {
            swarm,
            owner,
            shape,
            previous,
            said_held,
            sent: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(Instant::now()),
        })
    }

    /// The code.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The members a chunk's previous stripe sits on, shard by shard, if
    /// every shard is on the member it is placed on now.
    fn placed_and_held(&self, id: &ChunkId) -> Option<Vec<usize>> {
        let stripe = self.previous.get(id)?;
        let placed: Vec<usize> = self.swarm.ranked(id.as_bytes()).into_iter().take(self.shape.total()).collect();
        let held = placed.len() == self.shape.total()
            && stripe
                .shards
                .iter()
                .zip(&placed)
                .all(|(shard, m)| self.said_held.get(shard).is_some_and(|s| s.contains(m)));
        held.then_some(placed)
    }

    /// Cuts one chunk into shards and sends shard i to the i-th live peer
    /// of its rendezvous order (the next unused one when a peer fails).
    /// Returns whether any shard was sent.
    fn spread(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<bool, TransferError> {
        let swarm = self.swarm;
        let width = self.shape.total();
        let shards: Vec<Bytes> = erasure::encode(self.shape, ciphertext)?.into_iter().map(Bytes::from).collect();
        let ids: Vec<ChunkId> = shards.iter().map(|s| ChunkId::of(s)).collect();
        let ranking = swarm.ranked(id.as_bytes());
        let mut next = 0;
        let mut holders: Vec<Option<usize>> = vec![None; width];
        let mut pending: Vec<usize> = (0..width).collect();
        let (mut failures, mut sent) = (Vec::new(), false);
        while !pending.is_empty() {
            let mut batch = Vec::with_capacity(pending.len());
            for shard in std::mem::take(&mut pending) {
                while next < ranking.len() && !swarm.is_live(ranking[next]) {
                    next += 1;
                }
                let Some(&member) = ranking.get(next) else { break };
                next += 1;
                batch.push((shard, member));
            }
            if batch.is_empty() {
                break;
            }
            let mut to_send = Vec::with_capacity(batch.len());
            for (shard, member) in batch {
                if self.said_held.get(&ids[shard]).is_some_and(|s| s.contains(&member)) {
                    holders[shard] = Some(member);
                } else {
                    to_send.push((shard, member));
                }
            }
            let puts = to_send.iter().map(|&(shard, member)| {
                let (shard_id, bytes) = (ids[shard], &shards[shard]);
                swarm.with_retry(member, move |peer| {
                    let bytes = bytes.clone();
                    async move { peer.put_chunk(shard_id, bytes).await }
                })
            });
            for (&(shard, index), result) in to_send.iter().zip(swarm.client().run_all(puts)) {
                let member = swarm.member(index);
                match result {
                    Ok(()) => {
                        holders[shard] = Some(index);
                        sent = true;
                        member.chunks_sent.fetch_add(1, Ordering::Relaxed);
                        member.bytes_sent.fetch_add(shards[shard].len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if Swarm::disqualifies(&e) {
                            swarm.drop_member(index, &e);
                        }
                        failures.push(e.to_string());
                        pending.push(shard);
                    }
                }
            }
        }
        let acked = holders.iter().flatten().count();
        let sealed_len = u32::try_from(ciphertext.len()).unwrap_or(u32::MAX);
        let stripe = Stripe { sealed_len, shards: ids };
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*id, (stripe, holders.iter().map(|h| h.unwrap_or(usize::MAX)).collect()));
        if acked < width {
            return Err(TransferError::Replication {
                chunk: *id,
                acked,
                wanted: width,
                reasons: format!(
                    "{acked} of its {width} shards found a node of their own: {}",
                    if failures.is_empty() { "too few peers left".to_owned() } else { failures.join("; ") }
                ),
            });
        }
        Ok(sent)
    }

    /// Each shard of the version (as `(member, shard id)`), from the
    /// stripes sent in this push or, for chunks held from before, where
    /// they are placed.
    fn holdings(&self, chunks: &[ChunkId]) -> Vec<Vec<(usize, ChunkId)>> {
        let sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        chunks
            .iter()
            .map(|id| match sent.get(id) {
                Some((stripe, holders)) => holders.iter().copied().zip(stripe.shards.iter().copied()).collect(),
                None => match (self.placed_and_held(id), self.previous.get(id)) {
                    (Some(placed), Some(stripe)) => placed.into_iter().zip(stripe.shards.iter().copied()).collect(),
                    _ => Vec::new(),
                },
            })
            .collect()
    }

    /// Every [`KEEP_ALIVE`], asks each member about the shards it acked,
    /// so its live collection spares them until the pin arrives.
    fn keep_alive(&self) {
        {
            let mut last = self.refreshed.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() < KEEP_ALIVE {
                return;
            }
            *last = Instant::now();
        }
        let mut by_member: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for (stripe, holders) in self.sent.lock().unwrap_or_else(PoisonError::into_inner).values() {
            for (&index, shard) in holders.iter().zip(&stripe.shards) {
                if index != usize::MAX {
                    by_member.entry(index).or_default().push(*shard);
                }
            }
        }
        let by_member: Vec<(usize, Vec<ChunkId>)> = by_member.into_iter().collect();
        let asks = by_member
            .iter()
            .map(|(index, ids)| self.swarm.with_retry(*index, move |peer| async move { peer.has(ids).await }));
        for ((index, _), result) in by_member.iter().zip(self.swarm.client().run_all(asks)) {
            if let Err(e) = result {
                tracing::debug!(
                    "keeping {}'s shards of this push alive: {e}",
                    self.swarm.member(*index).node().short(16)
                );
            }
        }
    }

    /// Takes back the pins of a version that failed to publish.
    fn unpin(&self, manifest: ManifestId, pinned: &HashSet<usize>) {
        let only: HashSet<NodeId> = pinned.iter().map(|&i| self.swarm.member(i).node()).collect();
        let retracted = record::send_unpins(self.swarm, self.owner, &[manifest], Some(&only));
        for (node, why) in retracted.unconfirmed {
            tracing::info!("the pin of unpublished manifest {manifest} stays on {}: {why}", node.short(16));
        }
    }
}

/// The error for a swarm of `live` peers, too few for `shape`.
pub fn too_few_nodes(shape: Shape, live: usize) -> TransferError {
    let parity = shape.parity().min(live / 3).max(1);
    let data = live.saturating_sub(parity).max(1);
    TransferError::TooFewNodes { code: shape.to_string(), width: shape.total(), live, hint: format!("{data}+{parity}") }
}

impl Destination for Shards<'_> {
    fn holds(&self, id: &ChunkId) -> bool {
        self.placed_and_held(id).is_some()
    }

    fn put(&self, id: &ChunkId, ciphertext: &mut Vec<u8>) -> Result<bool, TransferError> {
        if self.holds(id) {
            return Ok(false);
        }
        let sent = self.spread(id, ciphertext);
        self.keep_alive();
        sent
    }

    fn erasure(&self, chunks: &[ChunkId]) -> Result<Option<Erasure>, TransferError> {
        let sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let stripes = chunks
            .iter()
            .map(|id| {
                sent.get(id).map(|(stripe, _)| stripe).or_else(|| self.previous.get(id)).cloned().ok_or_else(|| {
                    TransferError::Replication {
                        chunk: *id,
                        acked: 0,
                        wanted: self.shape.total(),
                        reasons: "no stripe of it was made or found".to_owned(),
                    }
                })
            })
            .collect::<Result<Vec<Stripe>, TransferError>>()?;
        // Shape::new bounds both by MAX_SHARDS (32).
        let (data, parity) = (self.shape.data() as u8, self.shape.parity() as u8);
        Ok(Some(Erasure { data, parity, stripes }))
    }

    /// Every live peer keeps the manifest, the pin and the head; every
    /// peer holding a shard of the version must confirm that it still
    /// holds it under the pin, and every stripe must keep all its shards.
    fn publish(&self, version: &Published<'_>) -> Result<(), TransferError> {
        let swarm = self.swarm;
        let width = self.shape.total();
        let chunks: Vec<ChunkId> = version.chunks.chunks(width + 1).filter_map(|s| s.first().copied()).collect();
        let holdings = self.holdings(&chunks);
        let mut targets: Vec<usize> = swarm.live_members();
        targets.extend(holdings.iter().flatten().map(|(m, _)| *m).filter(|&m| m != usize::MAX));
        targets.sort_unstable();
        targets.dedup();

        let (pinned, mut failures) = super::replicate::publish_to(swarm, self.owner, version, &targets);
        // A holder whose --gc-grace is shorter than the push may have
        // collected a shard before the pin arrived: each is asked again.
        let mut on_node: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for &(index, shard) in holdings.iter().flatten() {
            if pinned.contains(&index) {
                on_node.entry(index).or_default().push(shard);
            }
        }
        let on_node: Vec<(usize, Vec<ChunkId>)> = on_node.into_iter().collect();
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
                            "{node} no longer has {} shards it acknowledged: it collected them before the pin \
                             arrived (its --gc-grace is shorter than this push took); run the push again",
                            missing.len()
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
        for (id, shards) in chunks.iter().zip(&holdings) {
            let kept = shards.iter().filter(|(m, s)| pinned.contains(m) && !lost.contains(&(*m, *s))).count();
            if kept < width {
                self.unpin(version.manifest, &pinned);
                return Err(TransferError::Replication {
                    chunk: *id,
                    acked: kept,
                    wanted: width,
                    reasons: format!(
                        "the version's pin did not reach every peer holding a shard of this chunk: {}",
                        if failures.is_empty() { "no peer holds them".to_owned() } else { failures.join("; ") }
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

/// Rebuilds chunk `id`'s ciphertext into `buf` from any K shards of
/// `stripe`, fetched in parallel from the swarm.
///
/// Shard i is asked first of the peer at position i of the chunk's
/// rendezvous order over every peer known (where a push with all of them
/// live put it): the first K shards whose peer is usable, then others as
/// those fail. A peer that sends bytes that do not hash to the shard's id
/// is dropped, like one that fails, and another shard is used. When the
/// order is off (peers came or went since the push), the usable peers are
/// asked which of the missing shards they hold (`Has`), and those are
/// fetched. The rebuilt ciphertext must hash to `id`.
pub(super) fn gather(
    swarm: &Swarm,
    shape: Shape,
    id: &ChunkId,
    stripe: &Stripe,
    buf: &mut Vec<u8>,
) -> Result<(), TransferError> {
    let (width, data) = (shape.total(), shape.data());
    if stripe.shards.len() != width {
        return Err(TransferError::StripeMismatch(*id));
    }
    let order = swarm.ranked_all(id.as_bytes());
    // Shard buffers are this thread's, reused from chunk to chunk (a new
    // allocation for each would fault in fresh pages every time).
    let mut spare = SHARD_BUFFERS.with_borrow_mut(std::mem::take);
    let mut got: Vec<Option<Vec<u8>>> = vec![None; width];
    let mut asked: HashSet<(usize, usize)> = HashSet::new();
    let mut reasons = Vec::new();
    // First the placed peers, then whoever says it has a missing shard.
    let mut placed = true;
    loop {
        let have = got.iter().flatten().count();
        if have >= data {
            break;
        }
        let candidates: Vec<(usize, usize)> = if placed {
            (0..width)
                .filter(|&i| got[i].is_none())
                .filter_map(|i| order.get(i).copied().flatten().map(|m| (i, m)))
                .filter(|&(i, m)| swarm.is_live(m) && !asked.contains(&(i, m)))
                .take(data - have)
                .collect()
        } else {
            holders_of_missing(swarm, stripe, &got, &asked, data - have)
        };
        if candidates.is_empty() {
            if placed {
                placed = false;
                continue;
            }
            break;
        }
        let fetches: Vec<_> = candidates
            .iter()
            .map(|&(shard, member)| {
                let shard_id = stripe.shards[shard];
                let out = std::cell::RefCell::new(spare.pop().unwrap_or_default());
                async move {
                    let result = swarm
                        .with_retry(member, |peer| {
                            let out = &out;
                            async move {
                                let mut buf = out.take();
                                let found = peer.get_chunk(shard_id, &mut buf).await;
                                out.replace(buf);
                                found
                            }
                        })
                        .await;
                    (result, out.into_inner())
                }
            })
            .collect();
        let results: Vec<Result<Option<Vec<u8>>, crate::net::NetError>> = swarm
            .client()
            .run_all(fetches)
            .into_iter()
            .map(|(result, buf)| match result {
                Ok(true) => Ok(Some(buf)),
                other => {
                    spare.push(buf);
                    other.map(|_| None)
                }
            })
            .collect();
        for (&(shard, index), result) in candidates.iter().zip(results) {
            asked.insert((shard, index));
            let member = swarm.member(index);
            match result {
                Ok(Some(bytes)) => {
                    member.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                    got[shard] = Some(bytes);
                }
                Ok(None) => reasons.push(format!("{}: shard {shard} not there", member.node().short(16))),
                Err(e) => {
                    if Swarm::disqualifies(&e) {
                        swarm.drop_member(index, &e);
                    }
                    reasons.push(e.to_string());
                }
            }
        }
    }
    let given: Vec<(usize, &[u8])> = got.iter().enumerate().filter_map(|(i, s)| s.as_deref().map(|s| (i, s))).collect();
    let result = if given.len() < data {
        Err(TransferError::ChunkUnavailable {
            chunk: *id,
            live: swarm.live(),
            reasons: format!("{} of the {data} shards needed were found: {}", given.len(), reasons.join("; ")),
        })
    } else {
        erasure::decode_into(shape, stripe.sealed_len as usize, &given, buf)
            .map_err(TransferError::from)
            .and_then(|()| if ChunkId::of(buf) == *id { Ok(()) } else { Err(TransferError::StripeMismatch(*id)) })
    };
    drop(given);
    spare.extend(got.into_iter().flatten());
    spare.truncate(MAX_SHARDS);
    SHARD_BUFFERS.with_borrow_mut(|pool| *pool = spare);
    result
}

thread_local! {
    /// A pull worker's shard buffers, kept between chunks.
    static SHARD_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Up to `wanted` (shard, member) pairs not asked yet for the shards still
/// missing, from the usable peers' answers to one `Has` each.
fn holders_of_missing(
    swarm: &Swarm,
    stripe: &Stripe,
    got: &[Option<Vec<u8>>],
    asked: &HashSet<(usize, usize)>,
    wanted: usize,
) -> Vec<(usize, usize)> {
    let missing: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_none()).collect();
    let ids: Vec<ChunkId> = missing.iter().map(|&i| stripe.shards[i]).collect();
    let live = swarm.live_members();
    let ids = &ids;
    let asks = live.iter().map(|&m| swarm.with_retry(m, move |peer| async move { peer.has(ids).await }));
    let mut pairs = Vec::new();
    let mut taken = HashSet::new();
    for (&member, answer) in live.iter().zip(swarm.client().run_all(asks)) {
        let Ok(present) = answer else { continue };
        for (&shard, here) in missing.iter().zip(present) {
            if here && !asked.contains(&(shard, member)) && taken.insert(shard) {
                pairs.push((shard, member));
            }
        }
    }
    pairs.truncate(wanted);
    pairs
}
