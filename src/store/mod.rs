//! A node's store: chunk files, manifest envelopes and the metadata database
//! (docs/FORMAT.md, "On-disk layout").
//!
//! ```text
//! store/chunks/ab/cd/<64 hex ChunkId>   ciphertext, BLAKE3-verified when read for this node's
//!                                       own use and by the scrub (a peer verifies what it is sent)
//! store/manifests/<64 hex ManifestId>   envelopes
//! store/quarantine/<64 hex ChunkId>     chunks whose bytes no longer match their id
//! store/tmp/                            temp files of writes in progress
//! store/meta.redb                       log entries, pins, refcounts, sealed-chunk map
//! ```
//!
//! A chunk or manifest is on disk under its final name only once all its bytes
//! are (temp file, fsync, rename, fsync directory); the metadata that refers
//! to it is committed after that. So a crash leaves at worst unreferenced
//! files, which [`Store::gc`] deletes. The store assumes one process uses it
//! at a time: [`crate::home`] holds the lock.
//!
//! A collection may run while the node serves (ARCHITECTURE.md, "Garbage
//! collection"): it deletes a file only under the store's collect lock,
//! held exclusively, after checking under that lock that no pin needs it
//! and that its modification time is older than the grace period. Saying a
//! chunk is present ([`Store::hold_chunks`]), storing a chunk or manifest
//! and pinning take the lock shared, and the first two refresh the file's
//! time: what a push was told is here stays for the grace period, long
//! enough for its pin to arrive.

pub(crate) mod db;
mod files;
mod meta;
#[cfg(test)]
mod refcount_model;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

pub use files::write_durably;
pub use meta::{Appended, DEFAULT_PATIENCE, GcReport, OwnerUsage, PinRecord, Pinned, SignedPin, StoredPin};

use crate::crypto::TAG_LEN;
use crate::id::{ChunkId, ManifestId};
use crate::sealing::max_sealed_len;

/// Largest manifest envelope the store keeps or reads, in bytes
/// (`manifest::MAX_ENVELOPE_LEN`: one limit for the store, the wire and pins).
pub const MAX_MANIFEST_LEN: u64 = crate::manifest::MAX_ENVELOPE_LEN as u64;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{what} ({path})")]
    Io {
        /// What was being done.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database {path}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The database error.
        source: Box<redb::Error>,
    },
    /// A chunk the caller needs is not in the store.
    #[error("chunk {0} is missing from the store")]
    ChunkMissing(ChunkId),
    /// A chunk's bytes do not match its id; the file was moved aside.
    #[error("chunk {id} is corrupted on disk (its bytes do not match its id); moved to {quarantined}")]
    ChunkCorrupted {
        /// The chunk.
        id: ChunkId,
        /// Where the bad file now is.
        quarantined: PathBuf,
    },
    /// A chunk's bytes match its id, but are longer than the caller's
    /// manifest allows: the manifest that names it is wrong, not the store.
    #[error("chunk {id} is {actual} bytes, more than the {max} its manifest allows: the manifest is wrong")]
    ChunkLengthMismatch {
        /// The chunk.
        id: ChunkId,
        /// The longest the chunk may be, by the plaintext length its
        /// manifest gives ([`crate::sealing::max_sealed_len`]).
        max: u64,
        /// The length of the (good) chunk.
        actual: u64,
    },
    /// A manifest the caller needs is not in the store.
    #[error("manifest {0} is not in the store")]
    ManifestMissing(ManifestId),
    /// A pin of a manifest its owner unpinned before.
    #[error("manifest {0} was unpinned by its owner; it is not pinned again")]
    PinRevoked(ManifestId),
    /// Bytes offered as a chunk have a length no chunk can have.
    #[error("{len} bytes offered as chunk {id} cannot be a chunk (its tag alone is 16 bytes, and at most 16 MiB + 16)")]
    NotAChunk {
        /// The id they were offered under.
        id: ChunkId,
        /// Their length.
        len: u64,
    },
    /// A log entry does not follow the owner's log as it is now held.
    #[error(
        "the owner's log changed while this command ran (another push or rm of owner {}: it holds {held} \
         entries now)", owner.short(16)
    )]
    LogConflict {
        /// The owner.
        owner: crate::id::OwnerId,
        /// How many entries its log holds.
        held: u64,
    },
    /// Storing a chunk would take the store over its quota (`serve --max-storage`).
    #[error(
        "storing a {len}-byte chunk would take this node over its quota: {used} of {quota} bytes are used; \
         try another node"
    )]
    OverQuota {
        /// The chunk's bytes.
        len: u64,
        /// Chunk bytes stored and being stored.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// A change was asked of a store opened only to read.
    #[error("{0} is open read-only (a read-only disk, or a command that only reads); nothing was changed")]
    ReadOnly(PathBuf),
    /// Another process kept the database open past the wait.
    #[error(
        "{0} stayed busy: another p2pfs command kept it open; try again, or add --wait to wait as long as it takes"
    )]
    Busy(PathBuf),
    /// Stored metadata does not decode.
    #[error("metadata database {path} holds a malformed record: {reason}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// The underlying OS error, if this is one (to recognise a full disk).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Builds a `map_err` closure for an I/O failure on `path`.
fn io_err<W: Into<String>>(what: W, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<W> {
    let (what, path) = (what.into(), path.to_owned());
    move |source| StoreError::Io { what, path, source }
}

/// Whether the file at `path` hashes to `id`, read through the hasher
/// (no buffer the size of the chunk).
fn hashes_to(path: &Path, id: &ChunkId) -> bool {
    let mut hasher = blake3::Hasher::new();
    File::open(path).and_then(|file| hasher.update_reader(file).map(|_| ())).is_ok()
        && ChunkId(*hasher.finalize().as_bytes()) == *id
}

/// The largest chunk file: the largest chunk (16 MiB), raw and padded, and its tag.
pub const MAX_CHUNK_FILE_LEN: u32 = crate::sealing::MAX_SEALED_LEN;

/// The lengths a chunk file can have: a tag, and at most the largest chunk before it.
const CHUNK_FILE_LENS: std::ops::RangeInclusive<u64> = TAG_LEN as u64..=MAX_CHUNK_FILE_LEN as u64;

/// Files a collection looks at per batch: the ids it holds at once, the
/// ids one read transaction checks, and the most files it deletes while it
/// holds the collect lock.
const GC_BATCH: usize = 512;

/// A temp file younger than this is a write in progress, which a
/// collection never removes, whatever its grace.
const TMP_MIN_AGE: Duration = Duration::from_secs(3600);

/// One node's store, opened: chunks, manifests and metadata on disk.
pub struct Store {
    root: PathBuf,
    db: meta::Meta,
    /// Chunk directories whose entry this process has seen fsynced in its
    /// parent: a chunk renamed into one of them is durable once the
    /// directory itself is fsynced.
    durable_dirs: Mutex<HashSet<PathBuf>>,
    /// Bytes and count of chunk files: counted by the first
    /// [`Store::chunk_usage`], kept up to date by every write, deletion and
    /// quarantine after, so asking again costs nothing; and the bytes held
    /// for chunks being written under a quota.
    usage: Arc<Mutex<Counts>>,
    /// The collect lock: a collection deletes files holding it exclusively;
    /// whatever tells a peer a file is here, or pins, holds it shared.
    collecting: RwLock<()>,
}

/// Chunk files on disk and their bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    bytes: u64,
    files: u64,
}

/// What [`Store::usage`] guards.
#[derive(Debug, Default)]
struct Counts {
    /// Chunk files, once counted.
    on_disk: Option<Usage>,
    /// Bytes reserved by [`SpaceReservation`]s.
    reserved: u64,
}

/// Room for one chunk under a quota ([`Store::reserve_chunk_space`]),
/// given back when dropped (by then the chunk, if written, is counted).
#[must_use = "the room is given back when the reservation is dropped"]
pub struct SpaceReservation {
    usage: Arc<Mutex<Counts>>,
    len: u64,
}

impl Drop for SpaceReservation {
    fn drop(&mut self) {
        let mut counts = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        counts.reserved = counts.reserved.saturating_sub(self.len);
    }
}

/// How old a file is by its modification time (zero if that is unknown or in the future).
fn age(metadata: &fs::Metadata, now: SystemTime) -> Duration {
    metadata.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default()
}

/// Sets a file's modification time to now.
fn touch(path: &Path) -> io::Result<()> {
    File::open(path)?.set_modified(SystemTime::now())
}

/// How a process uses a store beside others ([`crate::home`] holds the lock
/// that keeps them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// This process alone (a node, `gc`): the database stays open, and temp
    /// files an interrupted process left are cleared.
    Exclusive,
    /// Others may read and add at the same time (`push`, `rm`): it adds
    /// files and commits, one short transaction at a time, but never deletes.
    Shared {
        /// How long to wait for another process's transaction.
        patience: Duration,
    },
    /// Only reads (`ls`, `pull`): writes nothing, so it works on a read-only disk.
    ReadOnly {
        /// How long to wait for another process's transaction.
        patience: Duration,
    },
}

impl Store {
    /// Opens (creating if needed) the store at `root` for this process alone
    /// and clears temp files that an interrupted process left.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        Self::open_with(root, Sharing::Exclusive)
    }

    /// Opens the store at `root` as `sharing` says.
    pub fn open_with(root: &Path, sharing: Sharing) -> Result<Self, StoreError> {
        if !matches!(sharing, Sharing::ReadOnly { .. }) {
            for dir in ["chunks", "manifests", "quarantine", "tmp"] {
                let dir = root.join(dir);
                files::create_dir_durably(&dir).map_err(io_err("creating store directory", &dir))?;
            }
        }
        let db_path = root.join("meta.redb");
        let db = match sharing {
            Sharing::Exclusive => meta::Meta::open(&db_path)?,
            Sharing::Shared { patience } => meta::Meta::open_shared(&db_path, true, patience)?,
            Sharing::ReadOnly { patience } => meta::Meta::open_shared(&db_path, false, patience)?,
        };
        let store = Self {
            root: root.to_owned(),
            db,
            durable_dirs: Mutex::new(HashSet::new()),
            usage: Arc::default(),
            collecting: RwLock::new(()),
        };
        if sharing == Sharing::Exclusive {
            store.clear_tmp(Duration::ZERO)?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database.
    pub fn meta(&self) -> &meta::Meta {
        &self.db
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where chunk `id` lives: `chunks/ab/cd/<hex>`.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.root.join("chunks").join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    fn manifest_path(&self, id: &ManifestId) -> PathBuf {
        self.root.join("manifests").join(id.to_string())
    }

    /// Whether chunk `id` is on disk under its final name with a length a
    /// chunk can have. A copy found bad is quarantined when it is read, so
    /// it is not counted here again.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        fs::metadata(self.chunk_path(id)).is_ok_and(|m| m.is_file() && CHUNK_FILE_LENS.contains(&m.len()))
    }

    /// The collect lock, shared: no collection deletes a file while it is held.
    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.collecting.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Which of `ids` are here, as [`Store::has_chunk`] says, refreshing
    /// the time of each file that is, so that a collection spares it for
    /// its grace period: a push told a chunk is here skips sending it and
    /// pins it later, and the chunk must still be here then. A file whose
    /// time cannot be set counts as missing (the push sends it again).
    pub fn hold_chunks(&self, ids: &[ChunkId]) -> Vec<bool> {
        let _shared = self.shared();
        ids.iter().map(|id| self.has_chunk(id) && touch(&self.chunk_path(id)).is_ok()).collect()
    }

    /// Pins, as [`meta::Meta::pin`], with the collect lock shared: a
    /// collection that runs after sees the pin, one that ran before has
    /// deleted only what was older than its grace.
    pub fn pin(&self, pin: &PinRecord) -> Result<Pinned, StoreError> {
        let _shared = self.shared();
        self.db.pin(pin)
    }

    /// [`Store::pin`] for a pin that came with its owner's signature, kept
    /// with it ([`meta::Meta::pin_signed`]).
    pub fn pin_signed(&self, pin: &PinRecord, signed: &SignedPin) -> Result<Pinned, StoreError> {
        let _shared = self.shared();
        self.db.pin_signed(pin, signed)
    }

    /// Holds `len` bytes for a chunk about to be stored, if the chunk bytes
    /// on disk and those held for other writes leave room for them under
    /// `quota`; else [`StoreError::OverQuota`]. Counts the store first if
    /// it has not been counted.
    pub fn reserve_chunk_space(&self, len: u64, quota: u64) -> Result<SpaceReservation, StoreError> {
        let (bytes, _) = self.chunk_usage()?;
        let mut counts = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let used = counts.on_disk.map_or(bytes, |u| u.bytes).saturating_add(counts.reserved);
        if used.saturating_add(len) > quota {
            return Err(StoreError::OverQuota { len, used, quota });
        }
        counts.reserved += len;
        Ok(SpaceReservation { usage: Arc::clone(&self.usage), len })
    }

    /// Stores a chunk durably unless a good copy is there already. Returns
    /// whether it wrote it. The caller vouches that `ciphertext` hashes to `id`.
    pub fn put_chunk(&self, id: &ChunkId, ciphertext: &[u8]) -> Result<bool, StoreError> {
        self.put_chunk_parts(id, &[ciphertext])
    }

    /// [`Store::put_chunk`] for ciphertext that arrived in pieces (from the
    /// network). A copy already on disk is kept only if its bytes match its
    /// id; a corrupt one is quarantined and replaced.
    pub fn put_chunk_parts(&self, id: &ChunkId, parts: &[impl AsRef<[u8]>]) -> Result<bool, StoreError> {
        let len: u64 = parts.iter().map(|p| p.as_ref().len() as u64).sum();
        if !CHUNK_FILE_LENS.contains(&len) {
            return Err(StoreError::NotAChunk { id: *id, len });
        }
        let path = self.chunk_path(id);
        // A copy found here is acked: its time is refreshed, like `Has`'s.
        let _shared = self.shared();
        if path.is_file() {
            let len: u64 = parts.iter().map(|p| p.as_ref().len() as u64).sum();
            let same_len = fs::metadata(&path).is_ok_and(|m| m.len() == len);
            if same_len && hashes_to(&path, id) {
                // A good copy stays, even if its time cannot be set (the
                // check after a push's pin finds it if it is collected).
                if let Err(e) = touch(&path) {
                    tracing::warn!("refreshing the time of chunk {}: {e}", id.short(16));
                }
                return Ok(false);
            }
            if path.is_file() {
                self.quarantine(id)?;
            }
        }
        let parent = path.parent().expect("chunk paths have a parent");
        self.make_durable_dir(parent).map_err(io_err("creating a chunk directory", parent))?;
        let written = files::write_parts_durably_new(&self.tmp_dir(), &path, parts)
            .map_err(io_err(format!("storing chunk {}", id.short(16)), &path))?;
        if !written {
            // Another request stored the same chunk a moment ago.
            return Ok(false);
        }
        let len: u64 = parts.iter().map(|p| p.as_ref().len() as u64).sum();
        self.count(|usage| {
            usage.bytes += len;
            usage.files += 1;
        });
        Ok(true)
    }

    /// Updates the chunk usage, if it has been counted.
    fn count(&self, change: impl FnOnce(&mut Usage)) {
        if let Some(usage) = self.usage.lock().unwrap_or_else(PoisonError::into_inner).on_disk.as_mut() {
            change(usage);
        }
    }

    /// Creates `dir` if needed and makes its entry durable, once per process.
    fn make_durable_dir(&self, dir: &Path) -> io::Result<()> {
        if self.durable_dirs.lock().unwrap_or_else(PoisonError::into_inner).contains(dir) {
            return Ok(());
        }
        files::create_dir_durably(dir)?;
        self.durable_dirs.lock().unwrap_or_else(PoisonError::into_inner).insert(dir.to_owned());
        Ok(())
    }

    /// Reads chunk `id`, whose plaintext its manifest says is
    /// `plaintext_len` bytes, into `buf` and checks its BLAKE3. A file whose
    /// bytes do not match its id is quarantined; a good chunk too long for
    /// that plaintext is the manifest's error, and stays.
    pub fn read_chunk(&self, id: &ChunkId, plaintext_len: u32, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        if !self.read_verified(id, buf)? {
            return Err(StoreError::ChunkMissing(*id));
        }
        let (max, actual) = (u64::from(max_sealed_len(plaintext_len)), buf.len() as u64);
        if actual > max {
            return Err(StoreError::ChunkLengthMismatch { id: *id, max, actual });
        }
        Ok(())
    }

    /// Reads chunk `id`'s ciphertext into `buf` as it is on disk, without
    /// hashing it: what a node serves to a peer, who verifies every chunk
    /// by its id anyway (docs/PROTOCOL.md, "Who verifies a chunk"). Only
    /// the length is checked: a file no chunk can be as long as is
    /// quarantined. A copy that went bad in another way is found by
    /// [`Store::verify_chunk`] (the node's scrub), or when a client that
    /// found the mismatch sends the good copy ([`Store::put_chunk_parts`]).
    /// `Ok(false)` if the store does not have it.
    pub fn read_chunk_unverified(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        self.read_chunk_file(id, buf)
    }

    /// The length of chunk `id`'s file, if it is there.
    pub fn chunk_len(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.chunk_path(id)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    fn read_verified(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        if !self.read_chunk_file(id, buf)? {
            return Ok(false);
        }
        if ChunkId::of(buf) != *id {
            return Err(StoreError::ChunkCorrupted { id: *id, quarantined: self.quarantine(id)? });
        }
        Ok(true)
    }

    /// Reads chunk `id`'s file into `buf` (replacing its contents), unless
    /// it is missing (`Ok(false)`) or of a length no chunk has (quarantined).
    fn read_chunk_file(&self, id: &ChunkId, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let path = self.chunk_path(id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(format!("opening chunk {}", id.short(16)), &path)(e)),
        };
        let len = file.metadata().map_err(io_err("reading chunk metadata", &path))?.len();
        buf.clear();
        buf.reserve(len.min(u64::from(MAX_CHUNK_FILE_LEN)) as usize + 1);
        // No chunk is longer than MAX_CHUNK_FILE_LEN: one byte more is enough to tell.
        file.by_ref()
            .take(u64::from(MAX_CHUNK_FILE_LEN) + 1)
            .read_to_end(buf)
            .map_err(io_err(format!("reading chunk {}", id.short(16)), &path))?;
        if !CHUNK_FILE_LENS.contains(&(buf.len() as u64)) {
            return Err(StoreError::ChunkCorrupted { id: *id, quarantined: self.quarantine(id)? });
        }
        Ok(true)
    }

    /// Checks chunk `id`'s file against its id, reading it through the
    /// hasher, and quarantines it if it does not match: what the node's
    /// scrub does to every chunk in turn. Returns the bytes read, or
    /// `Ok(None)` if the chunk is not here (any more), or a bad copy was
    /// replaced while it was being read.
    pub fn verify_chunk(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        let path = self.chunk_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("opening chunk {}", id.short(16)), &path)(e)),
        };
        let mut hasher = blake3::Hasher::new();
        // At most one byte past the longest chunk: a longer file is bad whatever it holds.
        let most = u64::from(MAX_CHUNK_FILE_LEN) + 1;
        let mut limited = file.take(most);
        hasher.update_reader(&mut limited).map_err(io_err(format!("reading chunk {}", id.short(16)), &path))?;
        let read = most - limited.limit();
        if !CHUNK_FILE_LENS.contains(&read) || ChunkId(*hasher.finalize().as_bytes()) != *id {
            // A put may have replaced the file while it was read (a client
            // sending the good copy): only the file that was read goes.
            let file = limited.into_inner();
            let same = |m: &fs::Metadata, n: &fs::Metadata| (m.dev(), m.ino()) == (n.dev(), n.ino());
            let still_there = file.metadata().ok().zip(fs::metadata(&path).ok()).is_some_and(|(m, n)| same(&m, &n));
            if !still_there {
                return Ok(None);
            }
            return Err(StoreError::ChunkCorrupted { id: *id, quarantined: self.quarantine(id)? });
        }
        Ok(Some(read))
    }

    /// The directories chunk files are spread over (`chunks/ab/cd`, at most
    /// 65 536 of them), for a walk over every chunk that holds only one
    /// directory's names at a time ([`Store::chunks_in`]).
    pub fn chunk_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for outer in files::dirs_in(&self.root.join("chunks")).map_err(io_err("listing chunks", &self.root))? {
            out.extend(files::dirs_in(&outer).map_err(io_err("listing chunks", &outer))?);
        }
        Ok(out)
    }

    /// The chunks whose files are in `dir`, one of [`Store::chunk_dirs`].
    /// Files not named by a chunk id are not chunks and are left out.
    pub fn chunks_in(&self, dir: &Path) -> Result<Vec<ChunkId>, StoreError> {
        let names = files::files_in(dir).map_err(io_err("listing chunks", dir))?;
        Ok(names.iter().filter_map(|p| p.file_name()?.to_str()?.parse().ok()).collect())
    }

    /// Moves a bad chunk file out of the way, so it is neither served nor
    /// mistaken for a good copy, and returns where it went.
    pub fn quarantine(&self, id: &ChunkId) -> Result<PathBuf, StoreError> {
        let from = self.chunk_path(id);
        let to = self.root.join("quarantine").join(id.to_string());
        let len = fs::metadata(&from).map_or(0, |m| m.len());
        fs::rename(&from, &to).map_err(io_err("moving a corrupted chunk to quarantine", &from))?;
        self.count(|usage| {
            usage.bytes = usage.bytes.saturating_sub(len);
            usage.files = usage.files.saturating_sub(1);
        });
        Ok(to)
    }

    /// Stores a manifest envelope durably.
    pub fn put_manifest(&self, id: &ManifestId, envelope: &[u8]) -> Result<(), StoreError> {
        self.put_manifest_parts(id, &[envelope])
    }

    /// [`Store::put_manifest`] for an envelope that arrived in pieces.
    pub fn put_manifest_parts(&self, id: &ManifestId, parts: &[impl AsRef<[u8]>]) -> Result<(), StoreError> {
        let path = self.manifest_path(id);
        // The new file's time is now: a collection spares it for the grace period.
        let _shared = self.shared();
        files::write_parts_durably(&self.tmp_dir(), &path, parts)
            .map_err(io_err(format!("storing manifest {}", id.short(16)), &path))
    }

    /// The length of manifest `id`'s envelope, if it is here.
    pub fn manifest_len(&self, id: &ManifestId) -> Option<u64> {
        fs::metadata(self.manifest_path(id)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Reads a manifest envelope (not yet verified: see `Manifest::open`).
    pub fn read_manifest(&self, id: &ManifestId) -> Result<Vec<u8>, StoreError> {
        let path = self.manifest_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::ManifestMissing(*id)),
            Err(e) => return Err(io_err("opening manifest", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("reading manifest metadata", &path))?.len();
        // Exactly its size (and one byte to see it grow), not doublings of it.
        let mut envelope = Vec::with_capacity(len.min(MAX_MANIFEST_LEN) as usize + 1);
        file.take(MAX_MANIFEST_LEN).read_to_end(&mut envelope).map_err(io_err("reading manifest", &path))?;
        Ok(envelope)
    }

    /// Deletes every chunk and manifest that no pin references and whose
    /// file is older than `grace`, forgets sealed-chunk entries whose chunk
    /// is gone, and removes temp files older than `grace` and an hour.
    ///
    /// It walks one chunk directory at a time and checks ids against the
    /// refcounts [`GC_BATCH`] at a time, one read transaction per batch, so
    /// its memory does not grow with the store. A file is deleted only
    /// under the collect lock, held exclusively, after its pin and age are
    /// checked again under it (see the module's doc). `Duration::ZERO` is
    /// for a process that holds the store alone (`p2pfs gc`); a node passes
    /// its grace, so that a push in flight loses nothing.
    pub fn gc(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let chunks = self.root.join("chunks");
        let mut batch: Vec<(ChunkId, PathBuf)> = Vec::with_capacity(GC_BATCH);
        for outer in files::dirs_in(&chunks).map_err(io_err("listing chunks", &chunks))? {
            for inner in files::dirs_in(&outer).map_err(io_err("listing chunks", &outer))? {
                for path in files::files_in(&inner).map_err(io_err("listing chunks", &inner))? {
                    let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()) else {
                        continue;
                    };
                    batch.push((id, path));
                    if batch.len() == GC_BATCH {
                        self.collect_chunks(&mut batch, grace, &mut report)?;
                    }
                }
            }
        }
        self.collect_chunks(&mut batch, grace, &mut report)?;

        let manifests = self.root.join("manifests");
        let listing = fs::read_dir(&manifests).map_err(io_err("listing manifests", &manifests))?;
        let mut batch: Vec<(ManifestId, PathBuf)> = Vec::with_capacity(GC_BATCH);
        for entry in listing {
            let path = entry.map_err(io_err("listing manifests", &manifests))?.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()) else { continue };
            batch.push((id, path));
            if batch.len() == GC_BATCH {
                self.collect_manifests(&mut batch, grace, &mut report)?;
            }
        }
        self.collect_manifests(&mut batch, grace, &mut report)?;

        let mut after = None;
        loop {
            let (forgotten, next) = self.db.forget_sealed_batch(after, GC_BATCH, |id| !self.has_chunk(id))?;
            report.sealed_entries_forgotten += forgotten;
            match next {
                Some(tag) => after = Some(tag),
                None => break,
            }
        }
        self.clear_tmp(grace.max(TMP_MIN_AGE))?;
        Ok(report)
    }

    /// Deletes the chunks of `batch` that no pin needs and whose files are
    /// older than `grace`, and empties `batch`.
    fn collect_chunks(
        &self,
        batch: &mut Vec<(ChunkId, PathBuf)>,
        grace: Duration,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        report.chunks_examined += batch.len() as u64;
        // Most chunks are pinned: a first look, without the lock, leaves only the rest.
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
        let referenced = self.db.referenced(&ids)?;
        let mut candidates: Vec<(ChunkId, PathBuf)> =
            batch.drain(..).zip(referenced).filter(|(_, r)| !r).map(|(c, _)| c).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let _exclusive = self.collecting.write().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<ChunkId> = candidates.iter().map(|(id, _)| *id).collect();
        let referenced = self.db.referenced(&ids)?;
        let now = SystemTime::now();
        for ((id, path), pinned) in candidates.drain(..).zip(referenced) {
            if pinned {
                continue;
            }
            let Ok(metadata) = fs::metadata(&path) else { continue };
            if age(&metadata, now) < grace {
                report.chunks_spared += 1;
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("deleting unreferenced chunk {}", id.short(16)), &path)(e)),
            }
            report.chunks_deleted += 1;
            report.bytes_freed += metadata.len();
            self.count(|usage| {
                usage.bytes = usage.bytes.saturating_sub(metadata.len());
                usage.files = usage.files.saturating_sub(1);
            });
        }
        Ok(())
    }

    /// Deletes the manifests of `batch` that no owner pins and whose files
    /// are older than `grace`, and empties `batch`.
    fn collect_manifests(
        &self,
        batch: &mut Vec<(ManifestId, PathBuf)>,
        grace: Duration,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        let mut unpinned: HashSet<ManifestId> = batch.iter().map(|(id, _)| *id).collect();
        self.db.drop_pinned(&mut unpinned)?;
        if unpinned.is_empty() {
            batch.clear();
            return Ok(());
        }
        let _exclusive = self.collecting.write().unwrap_or_else(PoisonError::into_inner);
        self.db.drop_pinned(&mut unpinned)?;
        let now = SystemTime::now();
        for (id, path) in batch.drain(..) {
            if !unpinned.contains(&id) {
                continue;
            }
            let Ok(metadata) = fs::metadata(&path) else { continue };
            if age(&metadata, now) < grace {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("deleting unpinned manifest {}", id.short(16)), &path)(e)),
            }
            report.manifests_deleted += 1;
            report.bytes_freed += metadata.len();
        }
        Ok(())
    }

    /// The chunks each owner's pins keep here and their bytes (see
    /// [`meta::Meta::owner_usage`]).
    pub fn owner_usage(&self) -> Result<Vec<OwnerUsage>, StoreError> {
        self.db.owner_usage(|id| self.chunk_len(id))
    }

    /// Total bytes of chunk files, and their count. The first call walks
    /// the store (one walk at a time, whoever asks), later ones read the
    /// count. A node asks once before it serves, so that no write races the
    /// walk.
    pub fn chunk_usage(&self) -> Result<(u64, u64), StoreError> {
        let mut counts = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.on_disk.is_none() {
            let mut counted = Usage::default();
            for outer in files::dirs_in(&self.root.join("chunks")).map_err(io_err("listing chunks", &self.root))? {
                for inner in files::dirs_in(&outer).map_err(io_err("listing chunks", &outer))? {
                    for file in files::files_in(&inner).map_err(io_err("listing chunks", &inner))? {
                        counted.bytes += file.metadata().map_or(0, |m| m.len());
                        counted.files += 1;
                    }
                }
            }
            counts.on_disk = Some(counted);
        }
        let counted = counts.on_disk.unwrap_or_default();
        Ok((counted.bytes, counted.files))
    }

    /// Removes temp files at least `older_than` old (all of them, given zero).
    fn clear_tmp(&self, older_than: Duration) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        let now = SystemTime::now();
        for file in files::files_in(&tmp).map_err(io_err("listing temp files", &tmp))? {
            let old = older_than.is_zero() || fs::metadata(&file).is_ok_and(|m| age(&m, now) >= older_than);
            if !old {
                continue;
            }
            match fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing a stale temp file", &file)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn chunks_round_trip_and_are_laid_out_by_prefix() {
        let (_dir, store) = store();
        let bytes = vec![5u8; 100 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        assert!(store.put_chunk(&id, &bytes).unwrap());
        assert!(!store.put_chunk(&id, &bytes).unwrap(), "a second put writes nothing");
        let hex = id.to_string();
        assert!(store.root().join("chunks").join(&hex[..2]).join(&hex[2..4]).join(&hex).is_file());
        let mut buf = Vec::new();
        store.read_chunk(&id, 100, &mut buf).unwrap();
        assert_eq!(buf, bytes);
    }

    #[test]
    fn corrupted_chunk_is_quarantined() {
        let (_dir, store) = store();
        let bytes = vec![6u8; 50 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        store.put_chunk(&id, &bytes).unwrap();
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        fs::write(store.chunk_path(&id), &bad).unwrap();
        let err = store.read_chunk(&id, 50, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StoreError::ChunkCorrupted { .. }), "{err}");
        assert!(!store.has_chunk(&id));
        assert!(matches!(store.read_chunk(&id, 50, &mut Vec::new()), Err(StoreError::ChunkMissing(_))));
    }

    #[test]
    fn truncated_chunk_is_corrupted_not_missing() {
        let (_dir, store) = store();
        let bytes = vec![7u8; 64 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        store.put_chunk(&id, &bytes).unwrap();
        fs::write(store.chunk_path(&id), &bytes[..10]).unwrap();
        assert!(matches!(store.read_chunk(&id, 64, &mut Vec::new()), Err(StoreError::ChunkCorrupted { .. })));
    }

    #[test]
    fn a_good_chunk_read_with_the_wrong_length_is_not_quarantined() {
        let (_dir, store) = store();
        let bytes = vec![8u8; 64 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        store.put_chunk(&id, &bytes).unwrap();
        let err = store.read_chunk(&id, 32, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StoreError::ChunkLengthMismatch { max: 56, actual: 80, .. }), "{err}");
        assert!(store.has_chunk(&id), "the good copy stays");
        store.read_chunk(&id, 64, &mut Vec::new()).unwrap();
    }

    #[test]
    fn a_chunk_served_unverified_is_read_as_it_is_and_the_scrub_quarantines_it() {
        let (_dir, store) = store();
        let bytes = vec![3u8; 64 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        store.put_chunk(&id, &bytes).unwrap();
        assert_eq!(store.verify_chunk(&id).unwrap(), Some(bytes.len() as u64), "a good copy passes");
        let mut bad = bytes.clone();
        bad[5] ^= 1;
        fs::write(store.chunk_path(&id), &bad).unwrap();
        let mut buf = Vec::new();
        assert!(store.read_chunk_unverified(&id, &mut buf).unwrap());
        assert_eq!(buf, bad, "served as it is: the peer verifies it");
        let err = store.verify_chunk(&id).unwrap_err();
        assert!(matches!(err, StoreError::ChunkCorrupted { .. }), "{err}");
        assert!(!store.has_chunk(&id) && store.root().join("quarantine").join(id.to_string()).is_file());
        assert_eq!(store.verify_chunk(&id).unwrap(), None, "gone once quarantined");
        assert!(!store.read_chunk_unverified(&id, &mut buf).unwrap());
    }

    #[test]
    fn a_chunk_file_of_no_chunks_length_is_not_served() {
        let (_dir, store) = store();
        let bytes = vec![4u8; 64 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        store.put_chunk(&id, &bytes).unwrap();
        fs::write(store.chunk_path(&id), &bytes[..TAG_LEN - 1]).unwrap();
        let err = store.read_chunk_unverified(&id, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StoreError::ChunkCorrupted { .. }), "{err}");
        assert!(!store.has_chunk(&id));
    }

    #[test]
    fn the_scrub_walk_finds_every_chunk() {
        let (_dir, store) = store();
        let mut ids: Vec<ChunkId> = (0..20u8)
            .map(|i| {
                let bytes = vec![i; 40];
                store.put_chunk(&ChunkId::of(&bytes), &bytes).unwrap();
                ChunkId::of(&bytes)
            })
            .collect();
        fs::write(store.chunk_path(&ids[0]).with_file_name("not-a-chunk"), b"x").unwrap();
        let mut walked: Vec<ChunkId> =
            store.chunk_dirs().unwrap().iter().flat_map(|dir| store.chunks_in(dir).unwrap()).collect();
        ids.sort_by_key(|id| id.0);
        walked.sort_by_key(|id| id.0);
        assert_eq!(walked, ids);
    }

    #[test]
    fn a_good_put_replaces_a_corrupt_copy() {
        let (_dir, store) = store();
        let bytes = vec![9u8; 64 + TAG_LEN];
        let id = ChunkId::of(&bytes);
        store.put_chunk(&id, &bytes).unwrap();
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        fs::write(store.chunk_path(&id), &bad).unwrap();
        assert!(store.put_chunk(&id, &bytes).unwrap(), "the corrupt copy is replaced");
        store.read_chunk(&id, 64, &mut Vec::new()).unwrap();
        assert!(store.root().join("quarantine").join(id.to_string()).is_file());
        // A good copy is kept as it is.
        assert!(!store.put_chunk(&id, &bytes).unwrap());
    }

    #[test]
    fn chunk_usage_is_counted_once_and_kept_up_to_date() {
        let (_dir, store) = store();
        let a = vec![1u8; 100];
        store.put_chunk(&ChunkId::of(&a), &a).unwrap();
        assert_eq!(store.chunk_usage().unwrap(), (100, 1));
        let b = vec![2u8; 50];
        store.put_chunk(&ChunkId::of(&b), &b).unwrap();
        store.put_chunk(&ChunkId::of(&b), &b).unwrap();
        assert_eq!(store.chunk_usage().unwrap(), (150, 2), "a second put of one chunk counts once");
        let mut bad = a.clone();
        bad[0] ^= 1;
        fs::write(store.chunk_path(&ChunkId::of(&a)), &bad).unwrap();
        assert!(store.verify_chunk(&ChunkId::of(&a)).is_err());
        assert_eq!(store.chunk_usage().unwrap(), (50, 1), "a quarantined chunk is not counted");
    }

    #[test]
    fn gc_deletes_only_unreferenced_chunks_and_manifests() {
        let (_dir, store) = store();
        let kept = vec![1u8; 40];
        let dropped = vec![2u8; 40];
        let (kept_id, dropped_id) = (ChunkId::of(&kept), ChunkId::of(&dropped));
        store.put_chunk(&kept_id, &kept).unwrap();
        store.put_chunk(&dropped_id, &dropped).unwrap();
        let manifest = ManifestId([9; 32]);
        let orphan_manifest = ManifestId([8; 32]);
        store.put_manifest(&manifest, b"envelope").unwrap();
        store.put_manifest(&orphan_manifest, b"envelope").unwrap();
        let pin = PinRecord { owner: crate::id::OwnerId([1; 32]), manifest, chunks: vec![kept_id, kept_id] };
        store.meta().commit(&[], &[pin], &[], &[]).unwrap();

        let report = store.gc(Duration::ZERO).unwrap();
        assert_eq!((report.chunks_deleted, report.manifests_deleted), (1, 1));
        assert!(store.has_chunk(&kept_id));
        assert!(!store.has_chunk(&dropped_id));
        assert!(store.read_manifest(&manifest).is_ok());
        assert!(matches!(store.read_manifest(&orphan_manifest), Err(StoreError::ManifestMissing(_))));
    }

    /// Sets a file's modification time `ago` in the past.
    fn age_file(path: &Path, ago: Duration) {
        File::open(path).unwrap().set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn a_chunk_said_to_be_here_survives_the_grace_until_its_pin_arrives() {
        // The race: an old chunk no pin needs (its version was removed) is
        // reported present to a new push, which skips sending it and pins
        // it later. A collection in between must not take it.
        let (_dir, store) = store();
        let grace = Duration::from_secs(600);
        let (old, asked, put_again) = (vec![1u8; 40], vec![2u8; 40], vec![3u8; 40]);
        for bytes in [&old, &asked, &put_again] {
            store.put_chunk(&ChunkId::of(bytes), bytes).unwrap();
            age_file(&store.chunk_path(&ChunkId::of(bytes)), 2 * grace);
        }
        assert_eq!(store.hold_chunks(&[ChunkId::of(&asked), ChunkId([0; 32])]), vec![true, false]);
        assert!(!store.put_chunk(&ChunkId::of(&put_again), &put_again).unwrap(), "a copy is here");

        let report = store.gc(grace).unwrap();
        assert_eq!((report.chunks_examined, report.chunks_deleted, report.chunks_spared), (3, 1, 2));
        assert!(!store.has_chunk(&ChunkId::of(&old)), "an old chunk no one asked about goes");
        let pin = PinRecord {
            owner: crate::id::OwnerId([1; 32]),
            manifest: ManifestId([1; 32]),
            chunks: vec![ChunkId::of(&asked), ChunkId::of(&put_again)],
        };
        assert_eq!(store.pin(&pin).unwrap(), Pinned::New);
        let report = store.gc(Duration::ZERO).unwrap();
        assert_eq!(report.chunks_deleted, 0, "pinned now: kept whatever the grace");
        assert!(store.has_chunk(&ChunkId::of(&asked)) && store.has_chunk(&ChunkId::of(&put_again)));
        assert_eq!(store.chunk_usage().unwrap(), (80, 2), "the count follows what GC deleted");
    }

    #[test]
    fn a_new_manifest_is_spared_for_the_grace() {
        let (_dir, store) = store();
        let grace = Duration::from_secs(600);
        let (old, new) = (ManifestId([1; 32]), ManifestId([2; 32]));
        store.put_manifest(&old, b"old").unwrap();
        store.put_manifest(&new, b"new").unwrap();
        age_file(&store.manifest_path(&old), 2 * grace);
        assert_eq!(store.gc(grace).unwrap().manifests_deleted, 1);
        assert!(store.manifest_len(&old).is_none() && store.manifest_len(&new).is_some());
    }

    #[test]
    fn the_quota_counts_what_is_stored_and_what_is_being_stored() {
        let (_dir, store) = store();
        let bytes = vec![1u8; 100];
        store.put_chunk(&ChunkId::of(&bytes), &bytes).unwrap();
        let first = store.reserve_chunk_space(60, 200).unwrap();
        let err = store.reserve_chunk_space(60, 200).err().unwrap();
        assert!(matches!(err, StoreError::OverQuota { len: 60, used: 160, quota: 200 }), "{err}");
        assert!(err.to_string().contains("try another node"), "{err}");
        drop(first);
        let _second = store.reserve_chunk_space(100, 200).unwrap();
        assert!(store.reserve_chunk_space(1, 200).is_err(), "exactly full");
    }

    #[test]
    fn reopening_clears_stale_temp_files() {
        let (dir, store) = store();
        fs::write(store.tmp_dir().join("leftover.tmp"), b"x").unwrap();
        drop(store);
        let store = Store::open(&dir.path().join("store")).unwrap();
        assert!(files::files_in(&store.tmp_dir()).unwrap().is_empty());
    }
}
