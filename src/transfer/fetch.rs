//! Pull from peers: each chunk from the best-placed live peer that has it.
//!
//! The home's own store is asked first, when this process has it open. A
//! peer that fails, or sends bytes that do not hash to the chunk's id, is
//! dropped for the rest of the pull and the next replica is used. A chunk
//! whose bytes are right but whose length is not the one its manifest
//! gives is the manifest's error: the pull fails, and no good copy is
//! touched.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use super::TransferError;
use super::pull::Source;
use super::swarm::Swarm;
use crate::crypto::TAG_LEN;
use crate::manifest::ChunkRef;
use crate::store::{Store, StoreError};

/// Pull from peers (and the local store first, if it has a chunk).
pub struct Fetch<'a> {
    swarm: &'a Swarm,
    local: Option<&'a Store>,
}

impl<'a> Fetch<'a> {
    /// Fetching from `swarm`, and from `local` first when given.
    pub fn new(swarm: &'a Swarm, local: Option<&'a Store>) -> Self {
        Self { swarm, local }
    }
}

impl Source for Fetch<'_> {
    fn read(&self, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), TransferError> {
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
                    let (expected, actual) = (u64::from(chunk.len) + TAG_LEN as u64, buf.len() as u64);
                    if actual != expected {
                        return Err(StoreError::ChunkLengthMismatch { id: chunk.id, expected, actual }.into());
                    }
                    return Ok(());
                }
                Ok(false) => {
                    reasons.push(format!("{}: not there", member.node().short(16)));
                }
                Err(e) => {
                    if Swarm::disqualifies(&e) {
                        swarm.drop_member(index, &e);
                    }
                    reasons.push(e.to_string());
                }
            }
        }
        Err(TransferError::ChunkUnavailable { chunk: chunk.id, live: swarm.live(), reasons: reasons.join("; ") })
    }
}
