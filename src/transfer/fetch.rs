//! Pull from peers: each chunk from the best-placed live peer that has it.
//!
//! The home's own store is asked first, when this process has it open. A
//! peer that fails, or sends bytes that do not hash to the chunk's id, is
//! dropped for the rest of the pull and the next replica is used. A peer
//! that sent bad bytes is then sent the good copy (`PutChunk`, once, within
//! [`REPAIR_TIMEOUT`]): a node checks the copy it holds before it keeps
//! it, so a copy that went bad on its disk is quarantined and replaced
//! (docs/PROTOCOL.md, "Who verifies a chunk"). A chunk
//! whose bytes are right but whose length is not the one its manifest
//! gives is the manifest's error: the pull fails, and no good copy is
//! touched.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::TransferError;
use super::pull::Source;
use super::swarm::Swarm;
use std::collections::HashMap;

use crate::erasure::Shape;
use crate::id::ChunkId;
use crate::manifest::{ChunkRef, Manifest, Stripe};
use crate::net::NetError;
use crate::sealing::max_sealed_len;
use crate::store::{Store, StoreError};

/// How long a pull waits for a peer that sent a bad copy of a chunk to take
/// the good one: the repair is a courtesy, and must not hold the pull up.
pub const REPAIR_TIMEOUT: Duration = Duration::from_secs(5);

/// Pull from peers (and the local store first, if it has a chunk).
pub struct Fetch<'a> {
    swarm: &'a Swarm,
    local: Option<&'a Store>,
    /// An erasure-coded manifest's code and stripes, by chunk id.
    stripes: Option<(Shape, HashMap<ChunkId, &'a Stripe>)>,
}

impl<'a> Fetch<'a> {
    /// Fetching from `swarm`, and from `local` first when given.
    pub fn new(swarm: &'a Swarm, local: Option<&'a Store>) -> Self {
        Self { swarm, local, stripes: None }
    }

    /// Fetching `manifest`'s chunks: if it is erasure coded, each chunk
    /// from any K of its shards ([`super::shards::gather`]).
    pub fn for_manifest(mut self, manifest: &'a Manifest) -> Result<Self, TransferError> {
        if let Some(erasure) = &manifest.erasure {
            let shape = Shape::new(usize::from(erasure.data), usize::from(erasure.parity))?;
            let by_id = manifest.chunks.iter().map(|c| c.id).zip(&erasure.stripes).collect();
            self.stripes = Some((shape, by_id));
        }
        Ok(self)
    }
}

impl Source for Fetch<'_> {
    fn read(&self, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), TransferError> {
        if let Some((shape, stripes)) = &self.stripes
            && let Some(stripe) = stripes.get(&chunk.id)
        {
            let (max, actual) = (u64::from(max_sealed_len(chunk.len)), u64::from(stripe.sealed_len));
            if actual > max {
                return Err(StoreError::ChunkLengthMismatch { id: chunk.id, max, actual }.into());
            }
            return super::shards::gather(self.swarm, *shape, &chunk.id, stripe, buf);
        }
        if let Some(store) = self.local
            && store.has_chunk(&chunk.id)
        {
            match store.read_chunk(&chunk.id, chunk.len, buf) {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::ChunkLengthMismatch { .. }) => return Err(e.into()),
                // Missing or quarantined here: the peers have it.
                Err(_) => {}
            }
        }
        let swarm = self.swarm;
        let mut reasons = Vec::new();
        let mut sent_bad = Vec::new();
        for index in swarm.ranked(chunk.id.as_bytes()) {
            let member = swarm.member(index);
            let (id, out) = (chunk.id, RefCell::new(std::mem::take(buf)));
            let fetched = swarm.with_retry(index, |peer| {
                let out = &out;
                async move {
                    let mut buf = out.take();
                    let found = peer.get_chunk(id, &mut buf).await;
                    out.replace(buf);
                    found
                }
            });
            let result = swarm.client().run(fetched);
            *buf = out.into_inner();
            match result {
                Ok(true) => {
                    member.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                    let (max, actual) = (u64::from(max_sealed_len(chunk.len)), buf.len() as u64);
                    if actual > max {
                        return Err(StoreError::ChunkLengthMismatch { id: chunk.id, max, actual }.into());
                    }
                    repair(swarm, &sent_bad, chunk, buf);
                    return Ok(());
                }
                Ok(false) => {
                    reasons.push(format!("{}: not there", member.node().short(16)));
                }
                Err(e) => {
                    if matches!(e, NetError::Corrupt { .. }) {
                        sent_bad.push(index);
                    }
                    if Swarm::disqualifies(&e) {
                        swarm.drop_member(index, &e);
                    }
                    reasons.push(e.to_string());
                }
            }
        }
        // Found nowhere: a peer skipped for its backoff may have come back.
        for peer in swarm.spares() {
            if let Ok(true) = swarm.client().run(peer.get_chunk(chunk.id, buf)) {
                let (max, actual) = (u64::from(max_sealed_len(chunk.len)), buf.len() as u64);
                if actual > max {
                    return Err(StoreError::ChunkLengthMismatch { id: chunk.id, max, actual }.into());
                }
                return Ok(());
            }
        }
        Err(TransferError::ChunkUnavailable { chunk: chunk.id, live: swarm.live(), reasons: reasons.join("; ") })
    }
}

/// Sends the good copy of `chunk` (`ciphertext`, verified) to each member
/// of `sent_bad`, which sent bytes that do not hash to its id, so that a
/// copy gone bad on a node's disk is replaced there. Best effort: a member
/// that does not take it in [`REPAIR_TIMEOUT`] is left as it is (its
/// scrub finds the bad copy in time).
fn repair(swarm: &Swarm, sent_bad: &[usize], chunk: &ChunkRef, ciphertext: &[u8]) {
    if sent_bad.is_empty() {
        return;
    }
    let good = Bytes::copy_from_slice(ciphertext);
    for &index in sent_bad {
        let member = swarm.member(index);
        let (peer, good) = (member.peer(), good.clone());
        // The timer is made on the runtime, inside the request, not on this thread.
        let put = async move { tokio::time::timeout(REPAIR_TIMEOUT, peer.put_chunk(chunk.id, good)).await };
        match swarm.client().run(put) {
            Ok(Ok(())) => tracing::info!("sent {} the good copy of chunk {}", member.node().short(16), chunk.id),
            Ok(Err(e)) => {
                tracing::debug!("sending {} the good copy of chunk {}: {e}", member.node().short(16), chunk.id)
            }
            Err(_) => {
                tracing::debug!("{} did not take the good copy of chunk {} in time", member.node().short(16), chunk.id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ChunkKey;
    use crate::crypto::TAG_LEN;
    use crate::home::peers::KnownPeer;
    use crate::home::{self, Home};
    use crate::id::{ChunkId, NodeId};
    use crate::net::{Client, Net, Tuning};
    use crate::node::{Config, Node};

    /// Two nodes hold one chunk; the copy on the node asked first has gone
    /// bad on its disk (the node serves it without hashing it).
    #[test]
    fn a_bad_copy_is_fetched_from_another_replica_and_replaced_where_it_was() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _in_runtime = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let network = [7u8; 32];
        let mut nodes: Vec<(NodeId, std::path::PathBuf)> = Vec::new();
        let (mut known, mut stops, mut served) = (Vec::new(), Vec::new(), Vec::new());
        for name in ["a", "b"] {
            let path = dir.path().join(name);
            home::init(&path).unwrap();
            home::replace_key(&path, "network.key", &network).unwrap();
            let node =
                Node::bind(Home::open(&path).unwrap(), Config::listening_on("127.0.0.1:0".parse().unwrap())).unwrap();
            known.push(KnownPeer { node: node.node_id(), addrs: vec![node.addr()] });
            nodes.push((node.node_id(), path));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            served.push(rt.spawn(node.serve(async move {
                let _ = stopped.await;
            })));
        }
        let net =
            Net::bind("127.0.0.1:0".parse().unwrap(), &rand::random(), network, Tuning::from_env(), false).unwrap();
        let client = Client::new(rt.handle().clone(), net);
        let swarm = Swarm::connect(&client, &known);
        assert_eq!(swarm.live(), 2, "both nodes answered");

        let good: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let id = ChunkId::of(&good);
        for index in 0..2 {
            let peer = swarm.member(index).peer();
            client.run(peer.put_chunk(id, Bytes::from(good.clone()))).unwrap();
        }
        let first = swarm.member(swarm.ranked(id.as_bytes())[0]).node();
        let (_, home) = nodes.iter().find(|(node, _)| *node == first).unwrap();
        let hex = id.to_string();
        let on_disk = home.join("store/chunks").join(&hex[..2]).join(&hex[2..4]).join(&hex);
        let mut bad = good.clone();
        bad[100] ^= 0x01;
        std::fs::write(&on_disk, &bad).unwrap();

        let chunk = ChunkRef { id, key: ChunkKey([0; 32]), len: (good.len() - TAG_LEN) as u32 };
        let mut buf = Vec::new();
        Fetch::new(&swarm, None).read(&chunk, &mut buf).unwrap();
        assert_eq!(buf, good, "the other replica's copy");
        assert_eq!(std::fs::read(&on_disk).unwrap(), good, "the bad copy was replaced by the good one");
        assert_eq!(std::fs::read(home.join("store/quarantine").join(&hex)).unwrap(), bad, "and quarantined");

        client.close();
        for stop in stops {
            let _ = stop.send(());
        }
        for serving in served {
            rt.block_on(serving).unwrap();
        }
    }
}
