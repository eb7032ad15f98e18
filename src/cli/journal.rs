//! The push journal: which chunks an unfinished push to peers got acked,
//! so running the push again asks the peers about them in one batched
//! `Has` instead of sending them again.
//!
//! `pushes/<16 hex>` in the home (named by a hash of owner and name) holds
//! 32-byte chunk ids, appended as peers ack them, never fsynced: it is only
//! a hint, and a lost one costs only a resend. A push that records its
//! version deletes it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::id::{self, ChunkId, OwnerId};
use crate::manifest::{Erasure, MAX_CHUNKS};
use crate::transfer::TransferError;
use crate::transfer::push::{Destination, Published};

/// The journal of one owner's pushes of one name.
pub(super) struct Journal {
    path: PathBuf,
    file: Mutex<Option<File>>,
    /// Chunks an earlier, unfinished push got acked.
    pub(super) earlier: Vec<ChunkId>,
}

impl Journal {
    /// Opens the journal of `owner`'s pushes of `name`, reading what an
    /// earlier push left. Failing to open it only loses the hint.
    pub(super) fn open(home: &Path, owner: &OwnerId, name: &str) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(owner.as_bytes());
        hasher.update(name.as_bytes());
        let dir = home.join("pushes");
        let path = dir.join(id::to_hex(&hasher.finalize().as_bytes()[..8]));
        let mut bytes = Vec::new();
        if let Ok(file) = File::open(&path) {
            let _ = file.take(32 * MAX_CHUNKS as u64).read_to_end(&mut bytes);
        }
        let earlier = bytes.chunks_exact(32).filter_map(|c| c.try_into().ok().map(ChunkId)).collect();
        let file =
            fs::create_dir_all(&dir).and_then(|()| OpenOptions::new().create(true).append(true).open(&path)).ok();
        Self { path, file: Mutex::new(file), earlier }
    }

    fn record(&self, id: &ChunkId) {
        if let Some(file) = self.file.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            let _ = file.write_all(id.as_bytes());
        }
    }

    /// The push recorded its version: nothing is left to resume.
    pub(super) fn finish(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.path);
    }
}

/// A destination that notes in the journal every chunk it stored.
pub(super) struct Journaled<'a> {
    pub(super) inner: &'a dyn Destination,
    pub(super) journal: &'a Journal,
}

impl Destination for Journaled<'_> {
    fn holds(&self, id: &ChunkId) -> bool {
        self.inner.holds(id)
    }

    fn put(&self, id: &ChunkId, ciphertext: &mut Vec<u8>) -> Result<bool, TransferError> {
        let written = self.inner.put(id, ciphertext)?;
        self.journal.record(id);
        Ok(written)
    }

    fn publish(&self, version: &Published<'_>) -> Result<(), TransferError> {
        self.inner.publish(version)
    }

    fn erasure(&self, chunks: &[ChunkId]) -> Result<Option<Erasure>, TransferError> {
        self.inner.erasure(chunks)
    }
}
