//! Checking replication (`p2pfs check`): whether each chunk of a version
//! has R healthy replicas on its R best-placed live peers.
//!
//! The peers a chunk belongs on are asked in batched `Has` requests
//! ([`CHECK_BATCH`] chunks at a time, every peer at once); with `read`, each
//! copy a peer claims is fetched and verified by its id (BLAKE3), a few at
//! once ([`READS_IN_FLIGHT`]), so memory stays a batch of ids and a few
//! chunks whatever the version's size. A peer that fails is dropped and the
//! batch asked again of the live ones: the top R are those of the peers
//! that answer, as for a push and for the nodes' repair.

use std::collections::HashMap;

use futures_util::StreamExt;
use serde::Serialize;

use super::swarm::Swarm;
use crate::erasure::Shape;
use crate::id::{ChunkId, NodeId};
use crate::net::NetError;

/// Chunks asked about in one round of `Has` requests.
pub const CHECK_BATCH: usize = 4096;
/// Chunk copies fetched at once by a check with `read`.
pub const READS_IN_FLIGHT: usize = 8;
/// Chunks named in a [`Replication`] at most; the counts cover the rest.
pub const MAX_LISTED: usize = 32;

/// One chunk that has fewer than R healthy replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkHealth {
    /// The chunk.
    pub chunk: ChunkId,
    /// Its healthy replicas on its top-R live peers.
    pub healthy: usize,
    /// Top-R peers that do not have it.
    pub missing_on: Vec<NodeId>,
    /// Top-R peers whose copy does not hash to its id, or could not be read (`read` only).
    pub bad_on: Vec<NodeId>,
}

/// What a check of some chunks found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Replication {
    /// Replicas wanted per chunk (capped by the live peers).
    pub replicas: usize,
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Chunks with fewer than `replicas` healthy replicas.
    pub under_replicated: u64,
    /// Copies fetched and verified (`read` only).
    pub copies_read: u64,
    /// Copies that did not hash to their id or could not be read.
    pub bad_copies: u64,
    /// The first [`MAX_LISTED`] chunks under `replicas`.
    pub listed: Vec<ChunkHealth>,
    /// For an erasure-coded version, its code (`K+M`): `replicas` is then
    /// K + M, the shards each chunk should have on distinct nodes, and
    /// `healthy` in a [`ChunkHealth`] counts shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<String>,
    /// Erasure-coded chunks with fewer than K healthy shards: lost until
    /// a node that held one comes back.
    pub lost: u64,
}

impl Replication {
    /// Whether every chunk has its replicas.
    pub fn healthy(&self) -> bool {
        self.under_replicated == 0 && self.bad_copies == 0
    }
}

/// Checks that each of `chunks` has `replicas` healthy copies on its top
/// `replicas` live peers of `swarm`; with `read`, fetches and verifies each.
pub fn check_chunks(swarm: &Swarm, replicas: usize, chunks: &[ChunkId], read: bool) -> Replication {
    let mut distinct = chunks.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut report = Replication { replicas: replicas.clamp(1, swarm.live().max(1)), ..Replication::default() };
    for batch in distinct.chunks(CHECK_BATCH) {
        check_batch(swarm, replicas, batch, read, &mut report);
    }
    report
}

/// Checks each stripe of an erasure-coded version (a chunk's id and its
/// K + M shard ids, in shard order): how many of its shards live peers
/// hold, each peer counted for one shard of a stripe at most (a stripe
/// with fewer than K + M is under-replicated, with fewer than K lost);
/// with `read`, each shard counted is fetched and verified by its id.
pub fn check_stripes(swarm: &Swarm, shape: Shape, stripes: &[(ChunkId, &[ChunkId])], read: bool) -> Replication {
    let mut report =
        Replication { replicas: shape.total(), erasure: Some(shape.to_string()), ..Replication::default() };
    let per_batch = (CHECK_BATCH / shape.total()).max(1);
    for batch in stripes.chunks(per_batch) {
        check_stripe_batch(swarm, shape, batch, read, &mut report);
    }
    report
}

fn check_stripe_batch(
    swarm: &Swarm,
    shape: Shape,
    batch: &[(ChunkId, &[ChunkId])],
    read: bool,
    report: &mut Replication,
) {
    let ids: Vec<ChunkId> = batch.iter().flat_map(|(_, shards)| shards.iter().copied()).collect();
    let live = swarm.live_members();
    let ids = &ids;
    let answers = swarm
        .client()
        .run_all(live.iter().map(|&i| swarm.with_retry(i, move |peer| async move { peer.has(ids).await })));
    let mut holders: HashMap<ChunkId, Vec<usize>> = HashMap::new();
    for (&index, answer) in live.iter().zip(answers) {
        match answer {
            Ok(flags) => {
                for (id, _) in ids.iter().zip(flags).filter(|(_, p)| *p) {
                    holders.entry(*id).or_default().push(index);
                }
            }
            Err(e) => swarm.drop_member(index, &e),
        }
    }
    for (chunk, shards) in batch {
        // Each node counts for one shard at most, best-placed nodes first.
        let ranked = swarm.ranked(chunk.as_bytes());
        let mut used: Vec<usize> = Vec::new();
        let mut placed: Vec<(ChunkId, usize)> = Vec::new();
        for shard in shards.iter() {
            let on = holders.get(shard).map(Vec::as_slice).unwrap_or_default();
            if let Some(&node) = ranked.iter().find(|n| on.contains(n) && !used.contains(n)) {
                used.push(node);
                placed.push((*shard, node));
            }
        }
        let mut verdict =
            ChunkHealth { chunk: *chunk, healthy: placed.len(), missing_on: Vec::new(), bad_on: Vec::new() };
        if read {
            let fetches = placed.iter().map(|&(shard, index)| {
                swarm.with_retry(index, move |peer| async move {
                    let mut buf = Vec::new();
                    peer.get_chunk(shard, &mut buf).await
                })
            });
            for (&(shard, index), result) in placed.iter().zip(swarm.client().run_all(fetches)) {
                let node = swarm.member(index).node();
                match result {
                    Ok(true) => report.copies_read += 1,
                    Ok(false) => {
                        verdict.healthy -= 1;
                        verdict.missing_on.push(node);
                    }
                    Err(e) => {
                        tracing::warn!("shard {} on {}: {e}", shard, node.short(16));
                        report.bad_copies += 1;
                        verdict.healthy -= 1;
                        verdict.bad_on.push(node);
                    }
                }
            }
        }
        // The best-placed live nodes holding no shard of it.
        let width = shape.total();
        verdict
            .missing_on
            .extend(ranked.iter().take(width).filter(|n| !used.contains(n)).map(|&n| swarm.member(n).node()));
        report.chunks += 1;
        if verdict.healthy < shape.data() {
            report.lost += 1;
        }
        if verdict.healthy < width {
            report.under_replicated += 1;
            if report.listed.len() < MAX_LISTED {
                report.listed.push(verdict);
            }
        }
    }
}

fn check_batch(swarm: &Swarm, replicas: usize, batch: &[ChunkId], read: bool, report: &mut Replication) {
    // Asked again without any peer that fails: at most once per peer.
    let (tops, present) = loop {
        let replicas = replicas.clamp(1, swarm.live().max(1));
        report.replicas = report.replicas.min(replicas);
        let tops: Vec<Vec<usize>> =
            batch.iter().map(|id| swarm.ranked(id.as_bytes()).into_iter().take(replicas).collect()).collect();
        let mut asks: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for (id, top) in batch.iter().zip(&tops) {
            for &index in top {
                asks.entry(index).or_default().push(*id);
            }
        }
        let asks: Vec<(usize, Vec<ChunkId>)> = asks.into_iter().collect();
        let answers = swarm.client().run_all(
            asks.iter().map(|(index, ids)| swarm.with_retry(*index, move |peer| async move { peer.has(ids).await })),
        );
        let mut present: HashMap<(usize, ChunkId), bool> = HashMap::new();
        let mut failed = false;
        for ((index, ids), answer) in asks.iter().zip(answers) {
            match answer {
                Ok(flags) => present.extend(ids.iter().zip(flags).map(|(id, p)| ((*index, *id), p))),
                Err(e) => {
                    swarm.drop_member(*index, &e);
                    failed = true;
                }
            }
        }
        if !failed {
            break (tops, present);
        }
    };
    let replicas = report.replicas;
    let mut verdicts: Vec<ChunkHealth> = batch
        .iter()
        .zip(&tops)
        .map(|(id, top)| {
            let (holders, missing): (Vec<usize>, Vec<usize>) =
                top.iter().partition(|&&i| present.get(&(i, *id)).copied().unwrap_or(false));
            ChunkHealth {
                chunk: *id,
                healthy: holders.len(),
                missing_on: missing.iter().map(|&i| swarm.member(i).node()).collect(),
                bad_on: Vec::new(),
            }
        })
        .collect();
    if read {
        let reads: Vec<(usize, usize)> = batch
            .iter()
            .zip(&tops)
            .enumerate()
            .flat_map(|(n, (id, top))| {
                top.iter().filter(|&&i| present.get(&(i, *id)).copied().unwrap_or(false)).map(move |&i| (n, i))
            })
            .collect();
        let results: Vec<(usize, usize, Result<bool, NetError>)> = swarm.client().run(
            futures_util::stream::iter(reads)
                .map(|(n, index)| {
                    let id = batch[n];
                    async move {
                        let result = swarm
                            .with_retry(index, |peer| async move {
                                let mut buf = Vec::new();
                                peer.get_chunk(id, &mut buf).await
                            })
                            .await;
                        (n, index, result)
                    }
                })
                .buffer_unordered(READS_IN_FLIGHT)
                .collect(),
        );
        for (n, index, result) in results {
            let verdict = &mut verdicts[n];
            let node = swarm.member(index).node();
            match result {
                Ok(true) => report.copies_read += 1,
                Ok(false) => {
                    verdict.healthy -= 1;
                    verdict.missing_on.push(node);
                }
                Err(e) => {
                    tracing::warn!("chunk {} on {}: {e}", verdict.chunk, node.short(16));
                    report.bad_copies += 1;
                    verdict.healthy -= 1;
                    verdict.bad_on.push(node);
                }
            }
        }
    }
    report.chunks += batch.len() as u64;
    for verdict in verdicts.into_iter().filter(|v| v.healthy < replicas) {
        report.under_replicated += 1;
        if report.listed.len() < MAX_LISTED {
            report.listed.push(verdict);
        }
    }
}
