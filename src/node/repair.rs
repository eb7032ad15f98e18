//! Repair: a node keeps each chunk it holds for a live pin on the chunk's
//! R best-placed live nodes.
//!
//! A pass (every [`RepairConfig::interval`], and soon after a known peer
//! has been unreachable for [`RepairConfig::unreachable_after`]) dials every
//! peer it knows; those that answer, and this node, are the live set. It
//! walks the pins it holds in batches ([`PINS_PER_BATCH`] pins and
//! [`IDS_PER_BATCH`] chunk ids at most), and for each chunk of a batch it
//! holds asks (batched `Has`) the chunk's top-R live nodes, and every node
//! ranked above this one, which of them hold it. Only the best-ranked live
//! holder sends: a node that sees a better-placed holder leaves the chunk to
//! it, so the holders of a chunk do not all send it at once. Each top-R node
//! that lacks it gets first the manifest envelope and the owner's signed
//! `Pin` (as the owner signed it: the node keeps the signature with the
//! pin), so it keeps the chunk as a pinned one and can serve a pull by
//! manifest id, then the chunk, at most [`RepairConfig::rate`] bytes a
//! second over the whole pass. A node whose tombstone refuses the pin
//! (`Unpinned`: its owner removed that version) gets none of that pin's
//! chunks: repair never brings back what an owner removed, and a pin this
//! node holds is never one it has a tombstone for.
//!
//! The pass runs as a background task and does its store work on the
//! blocking pool, one batch at a time, so requests are never held up by it.
//! What it found is kept for `Status` ([`Health`]).
//!
//! The scrub's quarantined chunks come here too ([`fetch_again`]): the
//! node fetches each from a live peer that has it, verified by its id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::NodeState;
use crate::crypto::Signature;
use crate::erasure::{self, Shape};
use crate::id::{ChunkId, ManifestId, NodeId, OwnerId};
use crate::net::Peer;
use crate::store::StoredPin;
use crate::transfer::placement;
use crate::wire::{self, ErrorCode};

/// Replicas per chunk a node repairs to when `serve --replicas` is not
/// given: the same number a push places when `push --replicas` is not.
pub const DEFAULT_REPLICAS: u16 = 3;
/// How often a node checks every chunk it holds when `--repair-interval`
/// is not given.
pub const DEFAULT_REPAIR_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Chunk bytes a repair pass sends per second at most when `--repair-rate`
/// is not given: a quarter of a gigabit link.
pub const DEFAULT_REPAIR_RATE: u64 = 32 << 20;
/// How long a known peer must stay unreachable before a node repairs
/// without waiting for the next interval.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(60);
/// Most pins one batch of a pass holds in memory.
pub const PINS_PER_BATCH: usize = 256;
/// Most chunk ids one batch of a pass holds in memory (about 2 MiB with
/// the signed lists), beyond the first pin's.
pub const IDS_PER_BATCH: usize = 32 * 1024;
/// Chunks a pass sends at once.
const SENDS_IN_FLIGHT: usize = 4;
/// Peers a pass dials (or asks) at once.
const DIAL_CONCURRENCY: usize = 8;
/// Quarantined chunks waiting to be fetched again; more are left to the
/// other holders' repair passes.
const REFETCH_QUEUE: usize = 1024;

/// How a node repairs and scrubs: `serve`'s `--replicas`,
/// `--repair-interval`, `--repair-rate` and the hidden tuning flags.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// Replicas each pinned chunk should have (capped by the live nodes).
    pub replicas: usize,
    /// Time between two passes.
    pub interval: Duration,
    /// Chunk bytes sent per second at most.
    pub rate: u64,
    /// How long a peer is unreachable before a pass starts early.
    pub unreachable_after: Duration,
    /// Time between two scrub passes (the first starts at most a minute after start).
    pub scrub_interval: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            replicas: usize::from(DEFAULT_REPLICAS),
            interval: DEFAULT_REPAIR_INTERVAL,
            rate: DEFAULT_REPAIR_RATE,
            unreachable_after: UNREACHABLE_AFTER,
            scrub_interval: super::SCRUB_INTERVAL,
        }
    }
}

/// What the last repair pass found, for `Status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Chunks this node holds that had fewer than R holders among their
    /// top-R live nodes when the last pass looked.
    pub under_replicated: u64,
    /// Copies the last pass sent.
    pub repaired: u64,
    /// Whether a pass is running now.
    pub in_progress: bool,
    /// When the last pass ended (ms since the Unix epoch; 0: none yet).
    pub last_pass_ms: u64,
}

/// A node's repair settings and what its passes found.
pub(crate) struct RepairState {
    pub(crate) config: RepairConfig,
    health: Mutex<Health>,
    /// Raised to start a pass now.
    wake: Notify,
    /// Quarantined chunks to fetch again.
    refetch: mpsc::Sender<ChunkId>,
    refetch_queue: Mutex<Option<mpsc::Receiver<ChunkId>>>,
}

impl RepairState {
    pub(crate) fn new(config: RepairConfig) -> Self {
        let (refetch, queue) = mpsc::channel(REFETCH_QUEUE);
        Self {
            config,
            health: Mutex::new(Health::default()),
            wake: Notify::new(),
            refetch,
            refetch_queue: Mutex::new(Some(queue)),
        }
    }

    /// What the last pass found.
    pub(crate) fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Asks for `id`, just quarantined, to be fetched again from a replica.
    /// With the queue full it is left to the other holders' repair.
    pub(crate) fn fetch_later(&self, id: ChunkId) {
        if self.refetch.try_send(id).is_err() {
            debug!("not fetching chunk {} again now: the queue is full; repair brings it back", id.short(16));
        }
    }
}

/// Runs a pass every interval, or sooner when [`watch_peers`] finds a peer
/// gone, until the task is aborted (at shutdown).
pub(super) async fn repair_now_and_then(state: Arc<NodeState>) {
    let interval = state.repair.config.interval;
    let mut next = Instant::now() + interval;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = state.repair.wake.notified() => {}
        }
        let started = Instant::now();
        repair_pass(&state).await;
        next = started + interval;
    }
}

/// Dials every known peer now and then ([`RepairConfig::unreachable_after`]
/// / 4, between 1 and 15 s), and starts a repair pass once one has not
/// answered for [`RepairConfig::unreachable_after`] (once per absence).
pub(super) async fn watch_peers(state: Arc<NodeState>) {
    let after = state.repair.config.unreachable_after;
    let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15));
    let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut reported: HashSet<NodeId> = HashSet::new();
    loop {
        tokio::time::sleep(every).await;
        let known = state.table.lock().unwrap_or_else(PoisonError::into_inner).verified_peers();
        let answers: Vec<(NodeId, bool)> = futures_util::stream::iter(known)
            .map(|peer| {
                let state = Arc::clone(&state);
                async move {
                    let up = match state.net.connect_any(peer.node, &peer.addrs).await {
                        Ok((conn, _)) => {
                            conn.close(ErrorCode(0), "liveness probe");
                            true
                        }
                        Err(_) => false,
                    };
                    (peer.node, up)
                }
            })
            .buffer_unordered(DIAL_CONCURRENCY)
            .collect()
            .await;
        let now = Instant::now();
        down_since.retain(|node, _| answers.iter().any(|(n, _)| n == node));
        reported.retain(|node| answers.iter().any(|(n, _)| n == node));
        for (node, up) in answers {
            if up {
                down_since.remove(&node);
                reported.remove(&node);
                continue;
            }
            let since = *down_since.entry(node).or_insert(now);
            if now.duration_since(since) >= after && reported.insert(node) {
                info!(
                    "peer {} unreachable for {} s: checking the replicas of what this node holds",
                    node.short(16),
                    now.duration_since(since).as_secs()
                );
                state.repair.wake.notify_one();
            }
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PassReport {
    /// Pins walked.
    pub(crate) pins: u64,
    /// Chunks held for them (a chunk of two pins counts twice).
    pub(crate) chunks: u64,
    /// Chunks found with fewer than R holders among their top R.
    pub(crate) under_replicated: u64,
    /// Copies sent.
    pub(crate) sent: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// The live nodes of one pass: this one first, then the peers that answered.
struct Live {
    nodes: Vec<NodeId>,
    /// `peers[i - 1]` is the connection to `nodes[i]`.
    peers: Vec<Peer>,
}

impl Live {
    fn peer(&self, index: usize) -> &Peer {
        &self.peers[index - 1]
    }
}

/// Keeps a pass to its byte rate: a chunk of `len` bytes waits until the
/// bytes before it and it would have taken at `rate`.
struct Pacer {
    started: Instant,
    rate: u64,
    bytes: Mutex<u64>,
}

impl Pacer {
    async fn take(&self, len: u64) {
        let due = {
            let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
            *bytes += len;
            self.started + Duration::from_secs_f64(*bytes as f64 / self.rate.max(1) as f64)
        };
        tokio::time::sleep_until(due).await;
    }
}

/// One pass over every pin this node holds.
pub(crate) async fn repair_pass(state: &Arc<NodeState>) -> PassReport {
    state.repair.update(|h| h.in_progress = true);
    let started = Instant::now();
    let live = dial_live(state).await;
    let replicas = state.repair.config.replicas.clamp(1, live.nodes.len());
    let pacer = Pacer { started, rate: state.repair.config.rate, bytes: Mutex::new(0) };
    let mut report = PassReport::default();
    let mut after = None;
    loop {
        let batch = blocking(state, move |s| s.home.store().meta().pins_after(after, PINS_PER_BATCH, IDS_PER_BATCH));
        let batch = match batch.await {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => {
                warn!("repair: reading the pins: {e}");
                break;
            }
            None => break,
        };
        let Some(last) = batch.last() else { break };
        after = Some((last.record.owner, last.record.manifest));
        // An erasure pin's blobs are shards, kept by stripe, not by replicas.
        let (striped, whole): (Vec<StoredPin>, Vec<StoredPin>) =
            batch.into_iter().partition(|p| p.signed.as_ref().is_some_and(|s| s.erasure.is_some()));
        repair_batch(state, &live, replicas, &whole, &pacer, &mut report).await;
        repair_stripes(state, &live, &striped, &pacer, &mut report).await;
    }
    for peer in &live.peers {
        peer.close(ErrorCode(0), "repair pass done");
    }
    let ended_ms = crate::transfer::unix_time_ms();
    state.repair.update(|h| {
        *h = Health {
            under_replicated: report.under_replicated,
            repaired: report.sent,
            in_progress: false,
            last_pass_ms: ended_ms,
        }
    });
    if report.under_replicated > 0 || report.sent > 0 {
        info!(
            "repair: {} pins, {} chunks held, {} under {replicas} replicas, {} copies ({} bytes) sent, {} live \
             nodes, in {:.1} s",
            report.pins,
            report.chunks,
            report.under_replicated,
            report.sent,
            report.bytes,
            live.nodes.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        debug!("repair: {} pins, {} chunks, every one at {replicas} replicas", report.pins, report.chunks);
    }
    report
}

/// Connects to every known peer (a few at once); those that answer are live.
async fn dial_live(state: &Arc<NodeState>) -> Live {
    let known = state.table.lock().unwrap_or_else(PoisonError::into_inner).verified_peers();
    let me = state.net.node_id();
    let peers: Vec<Peer> = futures_util::stream::iter(known.into_iter().filter(|p| p.node != me))
        .map(|peer| {
            let state = Arc::clone(state);
            async move {
                match state.net.connect_any(peer.node, &peer.addrs).await {
                    Ok((conn, _)) => Some(conn),
                    Err(e) => {
                        debug!("repair: peer {} unreachable: {e}", peer.node.short(16));
                        None
                    }
                }
            }
        })
        .buffer_unordered(DIAL_CONCURRENCY)
        .filter_map(|p| async move { p })
        .collect()
        .await;
    let nodes = std::iter::once(me).chain(peers.iter().map(Peer::node_id)).collect();
    Live { nodes, peers }
}

/// Checks and repairs the chunks of one batch of pins.
async fn repair_batch(
    state: &Arc<NodeState>,
    live: &Live,
    replicas: usize,
    batch: &[StoredPin],
    pacer: &Pacer,
    report: &mut PassReport,
) {
    report.pins += batch.len() as u64;
    let mut wanted: Vec<ChunkId> = batch.iter().flat_map(|p| p.record.chunks.iter().copied()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let Some(held) = blocking(state, move |s| {
        wanted.into_iter().filter(|id| s.home.store().has_chunk(id)).collect::<Vec<ChunkId>>()
    })
    .await
    else {
        return;
    };
    report.chunks +=
        batch.iter().flat_map(|p| &p.record.chunks).filter(|id| held.binary_search(id).is_ok()).count() as u64;

    // Whom to ask about each chunk: its top R, and whoever ranks above this node.
    let mut rankings: HashMap<ChunkId, Vec<usize>> = HashMap::with_capacity(held.len());
    let mut asks: HashMap<usize, Vec<ChunkId>> = HashMap::new();
    for id in &held {
        let ranking = placement::rank(&live.nodes, id.as_bytes());
        let mine = ranking.iter().position(|&i| i == 0).unwrap_or(0);
        for &index in &ranking[..replicas.max(mine)] {
            if index != 0 {
                asks.entry(index).or_default().push(*id);
            }
        }
        rankings.insert(*id, ranking);
    }
    let answers: HashMap<usize, HashSet<ChunkId>> = futures_util::stream::iter(asks)
        .map(|(index, ids)| async move {
            match live.peer(index).has(&ids).await {
                Ok(present) => {
                    Some((index, ids.into_iter().zip(present).filter(|(_, p)| *p).map(|(id, _)| id).collect()))
                }
                Err(e) => {
                    debug!("repair: asking {} what it holds: {e}", live.nodes[index].short(16));
                    None
                }
            }
        })
        .buffer_unordered(DIAL_CONCURRENCY)
        .filter_map(|a| async move { a })
        .collect()
        .await;

    // Only the best-ranked holder sends, to the top-R nodes that answered and lack it.
    let holds = |index: usize, id: &ChunkId| index == 0 || answers.get(&index).is_some_and(|h| h.contains(id));
    let mut sends: HashMap<usize, Vec<ChunkId>> = HashMap::new();
    for id in &held {
        let ranking = &rankings[id];
        let top = &ranking[..replicas];
        if top.iter().filter(|&&i| holds(i, id)).count() < replicas {
            report.under_replicated += 1;
        }
        let mine = ranking.iter().position(|&i| i == 0).unwrap_or(0);
        if ranking[..mine].iter().any(|&i| holds(i, id)) {
            continue;
        }
        for &index in top {
            if !holds(index, id) && answers.contains_key(&index) {
                sends.entry(index).or_default().push(*id);
            }
        }
    }
    for (index, ids) in sends {
        send_to(state, live, index, batch, ids, pacer, report).await;
    }
}

/// Gives node `index` the pins of `batch` that need `ids` (manifest, then
/// the signed pin), then those of `ids` it keeps under a pin it took.
async fn send_to(
    state: &Arc<NodeState>,
    live: &Live,
    index: usize,
    batch: &[StoredPin],
    ids: Vec<ChunkId>,
    pacer: &Pacer,
    report: &mut PassReport,
) {
    let peer = live.peer(index);
    let short = live.nodes[index].short(16);
    let wanted: HashSet<ChunkId> = ids.iter().copied().collect();
    let mut covered: HashSet<ChunkId> = HashSet::new();
    for pin in batch.iter().filter(|p| p.record.chunks.iter().any(|id| wanted.contains(id))) {
        let (owner, manifest) = (pin.record.owner, pin.record.manifest);
        let Some((frame, chunks)) = signed_pin(state, pin) else {
            // No signed pin to forward: without one the receiver would only
            // collect the chunks after its grace, and every pass would send
            // them again. They stay where they are (docs/FORMAT.md).
            debug!("repair: no signature held for the pin of {manifest}: not sending its chunks to {short}");
            continue;
        };
        let envelope = blocking(state, move |s| {
            let store = s.home.store();
            store.manifest_len(&manifest).and_then(|_| store.read_manifest(&manifest).ok())
        })
        .await
        .flatten();
        if let Some(envelope) = envelope
            && let Err(e) = peer.put_manifest(manifest, Bytes::from(envelope)).await
        {
            debug!("repair: sending manifest {manifest} to {short}: {e}");
        }
        match peer.pin(frame, &chunks).await {
            Ok(()) => covered.extend(pin.record.chunks.iter().filter(|id| wanted.contains(id))),
            Err(e) if e.remote_code() == Some(ErrorCode::UNPINNED.0) => {
                info!("repair: {short} holds owner {}'s removal of {manifest}: not sending it there", owner.short(16));
            }
            Err(e) => debug!("repair: pinning {manifest} on {short}: {e}"),
        }
    }
    let sent: Vec<Option<u64>> = futures_util::stream::iter(ids.into_iter().filter(|id| covered.contains(id)))
        .map(|id| async move {
            let bytes = blocking(state, move |s| {
                let store = s.home.store();
                let mut buf = Vec::new();
                match store.read_chunk_unverified(&id, &mut buf) {
                    Ok(true) if ChunkId::of(&buf) == id => Some(buf),
                    Ok(true) => {
                        // Gone bad here since the scrub looked: never sent, fetched again.
                        if let Err(e) = store.quarantine(&id) {
                            warn!("repair: quarantining chunk {id}: {e}");
                        }
                        s.repair.fetch_later(id);
                        None
                    }
                    _ => None,
                }
            })
            .await
            .flatten()?;
            let len = bytes.len() as u64;
            pacer.take(len).await;
            match peer.put_chunk(id, Bytes::from(bytes)).await {
                Ok(()) => Some(len),
                Err(e) => {
                    debug!("repair: sending chunk {} to {}: {e}", id.short(16), peer.node_id().short(16));
                    None
                }
            }
        })
        .buffer_unordered(SENDS_IN_FLIGHT)
        .collect()
        .await;
    for len in sent.into_iter().flatten() {
        report.sent += 1;
        report.bytes += len;
    }
}

/// One stripe of an erasure pin held here: the chunk's id (which ranks the
/// nodes), its shards' ids in shard order, and the pin it came with.
struct HeldStripe<'a> {
    chunk: ChunkId,
    shape: Shape,
    shards: &'a [ChunkId],
    pin: &'a StoredPin,
}

/// Repairs the stripes of erasure pins (`pins`, each with its signed list):
/// for each stripe this node holds a shard of, its K + M shards should sit
/// on K + M distinct nodes among the stripe's top K + M live nodes. The
/// top nodes, and every node ranked above this one, are asked (`Has`)
/// which shards they hold; only the best-ranked live holder of any shard
/// acts. Each shard held on no top node goes to a top node holding none:
/// copied if a live node has it, else rebuilt from K shards (fetched,
/// verified by their ids, decoded and encoded again, the result checked
/// against the shard's id), after the manifest and the signed pin.
async fn repair_stripes(
    state: &Arc<NodeState>,
    live: &Live,
    pins: &[StoredPin],
    pacer: &Pacer,
    report: &mut PassReport,
) {
    report.pins += pins.len() as u64;
    let mut stripes: Vec<HeldStripe<'_>> = Vec::new();
    for pin in pins {
        let Some(signed) = &pin.signed else { continue };
        let Some([data, parity]) = signed.erasure else { continue };
        let Ok(shape) = Shape::new(usize::from(data), usize::from(parity)) else { continue };
        for stripe in signed.chunks.chunks_exact(shape.total() + 1) {
            stripes.push(HeldStripe { chunk: stripe[0], shape, shards: &stripe[1..], pin });
        }
    }
    let mut wanted: Vec<ChunkId> = stripes.iter().flat_map(|s| s.shards.iter().copied()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let Some(held) = blocking(state, move |s| {
        wanted.into_iter().filter(|id| s.home.store().has_chunk(id)).collect::<HashSet<ChunkId>>()
    })
    .await
    else {
        return;
    };
    stripes.retain(|s| s.shards.iter().any(|id| held.contains(id)));
    report.chunks += stripes.iter().map(|s| s.shards.iter().filter(|id| held.contains(id)).count() as u64).sum::<u64>();

    // Whom to ask about each stripe: its top K + M, and whoever ranks above this node.
    let mut asks: HashMap<usize, HashSet<ChunkId>> = HashMap::new();
    let rankings: Vec<Vec<usize>> = stripes.iter().map(|s| placement::rank(&live.nodes, s.chunk.as_bytes())).collect();
    for (stripe, ranking) in stripes.iter().zip(&rankings) {
        let mine = ranking.iter().position(|&i| i == 0).unwrap_or(0);
        let reach = stripe.shape.total().max(mine).min(ranking.len());
        for &index in &ranking[..reach] {
            if index != 0 {
                asks.entry(index).or_default().extend(stripe.shards.iter().copied());
            }
        }
    }
    let answers: HashMap<usize, HashSet<ChunkId>> = futures_util::stream::iter(asks)
        .map(|(index, ids)| async move {
            let ids: Vec<ChunkId> = ids.into_iter().collect();
            match live.peer(index).has(&ids).await {
                Ok(present) => {
                    Some((index, ids.into_iter().zip(present).filter(|(_, p)| *p).map(|(id, _)| id).collect()))
                }
                Err(e) => {
                    debug!("repair: asking {} which shards it holds: {e}", live.nodes[index].short(16));
                    None
                }
            }
        })
        .buffer_unordered(DIAL_CONCURRENCY)
        .filter_map(|a| async move { a })
        .collect()
        .await;
    let holds = |index: usize, id: &ChunkId| {
        if index == 0 { held.contains(id) } else { answers.get(&index).is_some_and(|h| h.contains(id)) }
    };

    let mut pinned: HashMap<(usize, OwnerId, ManifestId), bool> = HashMap::new();
    for (stripe, ranking) in stripes.iter().zip(&rankings) {
        let width = stripe.shape.total();
        let top = &ranking[..width.min(ranking.len())];
        // Each top node counts for one shard at most: distinct nodes.
        let mut placed: Vec<Option<usize>> = vec![None; width];
        let mut used: HashSet<usize> = HashSet::new();
        for (shard, id) in stripe.shards.iter().enumerate() {
            if let Some(&node) = top.iter().find(|&&n| !used.contains(&n) && holds(n, id)) {
                placed[shard] = Some(node);
                used.insert(node);
            }
        }
        if placed.iter().any(Option::is_none) {
            report.under_replicated += 1;
        } else {
            continue;
        }
        let mine = ranking.iter().position(|&i| i == 0).unwrap_or(0);
        if ranking[..mine].iter().any(|&n| stripe.shards.iter().any(|id| holds(n, id))) {
            continue;
        }
        let mut free = top.iter().copied().filter(|n| !used.contains(n) && (*n == 0 || answers.contains_key(n)));
        for shard in (0..width).filter(|&i| placed[i].is_none()) {
            let Some(target) = free.next() else { break };
            if target == 0 {
                // This node is among the top and lacks a shard: rebuild it here.
                if let Some(bytes) = shard_bytes(state, live, stripe, shard, &holds).await {
                    let (id, quota) = (stripe.shards[shard], state.storage.max_storage);
                    // The node's quota holds for what repair writes too.
                    let stored = blocking(state, move |s| {
                        let store = s.home.store();
                        let _space = quota.map(|q| store.reserve_chunk_space(bytes.len() as u64, q)).transpose()?;
                        store.put_chunk(&id, &bytes)
                    })
                    .await;
                    match stored {
                        Some(Ok(_)) => report.sent += 1,
                        Some(Err(e)) => warn!("repair: storing rebuilt shard {id}: {e}"),
                        None => {}
                    }
                }
                continue;
            }
            // The shard first: a stripe that cannot be rebuilt costs no pin.
            let Some(bytes) = shard_bytes(state, live, stripe, shard, &holds).await else { continue };
            // One pin per node and version in a pass, however many of its
            // stripes the node lacks a shard of, and none again after a refusal.
            let key = (target, stripe.pin.record.owner, stripe.pin.record.manifest);
            let taken = match pinned.get(&key) {
                Some(&taken) => taken,
                None => {
                    pacer.take(pin_cost(stripe.pin)).await;
                    let taken = pin_on(state, live, target, stripe.pin).await;
                    pinned.insert(key, taken);
                    taken
                }
            };
            if !taken {
                continue;
            }
            let len = bytes.len() as u64;
            pacer.take(len).await;
            match live.peer(target).put_chunk(stripe.shards[shard], Bytes::from(bytes)).await {
                Ok(()) => {
                    report.sent += 1;
                    report.bytes += len;
                }
                Err(e) => debug!("repair: sending a shard to {}: {e}", live.nodes[target].short(16)),
            }
        }
    }
}

/// Bytes a [`pin_on`] sends, about: the signed id list (the manifest
/// envelope, at most as long, goes with it).
fn pin_cost(pin: &StoredPin) -> u64 {
    let ids = pin.signed.as_ref().map_or(pin.record.chunks.len(), |s| s.chunks.len()) as u64;
    2 * 32 * ids
}

/// Gives node `target` the manifest and the signed pin of `pin`; whether it took the pin.
async fn pin_on(state: &Arc<NodeState>, live: &Live, target: usize, pin: &StoredPin) -> bool {
    let peer = live.peer(target);
    let short = live.nodes[target].short(16);
    let manifest = pin.record.manifest;
    let Some((frame, chunks)) = signed_pin(state, pin) else { return false };
    let envelope = blocking(state, move |s| {
        let store = s.home.store();
        store.manifest_len(&manifest).and_then(|_| store.read_manifest(&manifest).ok())
    })
    .await
    .flatten();
    if let Some(envelope) = envelope
        && let Err(e) = peer.put_manifest(manifest, Bytes::from(envelope)).await
    {
        debug!("repair: sending manifest {manifest} to {short}: {e}");
    }
    match peer.pin(frame, &chunks).await {
        Ok(()) => true,
        Err(e) => {
            debug!("repair: pinning {manifest} on {short}: {e}");
            false
        }
    }
}

/// Shard `shard` of `stripe`: read here, or fetched from a live node that
/// has it, or rebuilt from K others; verified against its id either way.
async fn shard_bytes(
    state: &Arc<NodeState>,
    live: &Live,
    stripe: &HeldStripe<'_>,
    shard: usize,
    holds: &impl Fn(usize, &ChunkId) -> bool,
) -> Option<Vec<u8>> {
    let want = stripe.shards[shard];
    if let Some(bytes) = fetch_shard(state, live, want, holds).await {
        return Some(bytes);
    }
    let mut given: Vec<(usize, Vec<u8>)> = Vec::new();
    // No shard of a real stripe is longer than this; all of one are as long.
    let longest = stripe.shape.shard_len(crate::sealing::MAX_SEALED_LEN as usize);
    for (index, id) in stripe.shards.iter().enumerate() {
        if given.len() == stripe.shape.data() {
            break;
        }
        if index != shard
            && let Some(bytes) = fetch_shard(state, live, *id, holds).await
        {
            let first = given.first().map_or(bytes.len(), |(_, b)| b.len());
            if bytes.len() > longest || bytes.len() != first {
                debug!("repair: shard {index} of chunk {} is not a shard of its stripe", stripe.chunk.short(16));
                return None;
            }
            given.push((index, bytes));
        }
    }
    let parts: Vec<(usize, &[u8])> = given.iter().map(|(i, b)| (*i, b.as_slice())).collect();
    match erasure::restore(stripe.shape, &parts, shard) {
        Ok(bytes) if ChunkId::of(&bytes) == want => Some(bytes),
        Ok(_) => {
            warn!("repair: shard {shard} of chunk {} rebuilt to other bytes than its id", stripe.chunk.short(16));
            None
        }
        Err(e) => {
            debug!("repair: rebuilding shard {shard} of chunk {}: {e}", stripe.chunk.short(16));
            None
        }
    }
}

/// Blob `id` from this node's store or a live node that says it holds it,
/// verified against its id.
async fn fetch_shard(
    state: &Arc<NodeState>,
    live: &Live,
    id: ChunkId,
    holds: &impl Fn(usize, &ChunkId) -> bool,
) -> Option<Vec<u8>> {
    if holds(0, &id) {
        let local = blocking(state, move |s| {
            let mut buf = Vec::new();
            match s.home.store().read_chunk_unverified(&id, &mut buf) {
                Ok(true) if ChunkId::of(&buf) == id => Some(buf),
                _ => None,
            }
        })
        .await
        .flatten();
        if local.is_some() {
            return local;
        }
    }
    for index in (1..live.nodes.len()).filter(|&i| holds(i, &id)) {
        let mut buf = Vec::new();
        if let Ok(true) = live.peer(index).get_chunk(id, &mut buf).await {
            return Some(buf);
        }
    }
    None
}

/// The owner's signed `Pin` of `pin` and the chunk ids it signed: as held,
/// or signed here when this node holds that owner's key.
fn signed_pin(state: &NodeState, pin: &StoredPin) -> Option<(wire::Pin, Vec<ChunkId>)> {
    let (owner, manifest) = (pin.record.owner, pin.record.manifest);
    match &pin.signed {
        Some(signed) => {
            let erasure = match signed.erasure {
                Some([data, parity]) => Some(wire::Stripes::new(data, parity)?),
                None => None,
            };
            let frame = wire::Pin {
                owner,
                manifest,
                chunks: u32::try_from(signed.chunks.len()).ok()?,
                signature: Signature::from_bytes(&signed.signature),
                erasure,
            };
            Some((frame, signed.chunks.clone()))
        }
        None => {
            let keys = state.home.keys().owner_keys();
            (keys.owner_id() == owner).then(|| {
                let frame = crate::transfer::record::signed_pin(&keys, manifest, &pin.record.chunks, None);
                (frame, pin.record.chunks.clone())
            })
        }
    }
}

/// Fetches quarantined chunks again, one at a time, as the scrub (or a
/// repair pass) reports them, until the task is aborted.
pub(super) async fn fetch_quarantined(state: Arc<NodeState>) {
    let queue = state.repair.refetch_queue.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(mut queue) = queue else { return };
    while let Some(id) = queue.recv().await {
        if !fetch_again(&state, id).await {
            warn!(
                "chunk {id} was quarantined and no live peer has a good copy now; the next repair pass of a \
                 node holding one sends it back"
            );
        }
    }
}

/// Fetches chunk `id` from the live peers, best-placed first, until one
/// sends bytes that hash to it, and stores it. Returns whether it did.
pub(crate) async fn fetch_again(state: &Arc<NodeState>, id: ChunkId) -> bool {
    let mut known = state.table.lock().unwrap_or_else(PoisonError::into_inner).verified_peers();
    let me = state.net.node_id();
    known.retain(|p| p.node != me);
    let nodes: Vec<NodeId> = known.iter().map(|p| p.node).collect();
    for index in placement::rank(&nodes, id.as_bytes()) {
        let peer = &known[index];
        let Ok((conn, _)) = state.net.connect_any(peer.node, &peer.addrs).await else { continue };
        let mut buf = Vec::new();
        let found = conn.get_chunk(id, &mut buf).await;
        conn.close(ErrorCode(0), "fetched");
        match found {
            Ok(true) => {
                let stored = blocking(state, move |s| s.home.store().put_chunk(&id, &buf)).await;
                match stored {
                    Some(Ok(_)) => {
                        info!("fetched chunk {id} again from {}", peer.node.short(16));
                        return true;
                    }
                    Some(Err(e)) => warn!("storing chunk {id} fetched again: {e}"),
                    None => {}
                }
            }
            Ok(false) => {}
            Err(e) => debug!("fetching chunk {} from {}: {e}", id.short(16), peer.node.short(16)),
        }
    }
    false
}

/// Runs `work` on the blocking pool; `None` if the task failed.
async fn blocking<R: Send + 'static>(
    state: &Arc<NodeState>,
    work: impl FnOnce(&NodeState) -> R + Send + 'static,
) -> Option<R> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state)).await.ok()
}
