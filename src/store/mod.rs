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

mod files;
mod meta;
#[cfg(test)]
mod refcount_model;

use std::collections::HashSet;
use std::fs::{self, File};
use std::hash::Hash;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use files::write_durably;
pub use meta::{Appended, DEFAULT_PATIENCE, GcReport, PinRecord, Pinned, SignedPin, StoredPin};

use crate::crypto::TAG_LEN;
use crate::id::{ChunkId, ManifestId};

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
    /// A chunk's bytes match its id, but not the length the caller expects:
    /// the manifest that names it is wrong, not the store.
    #[error("chunk {id} is {actual} bytes, but its manifest says {expected}: the manifest is wrong")]
    ChunkLengthMismatch {
        /// The chunk.
        id: ChunkId,
        /// The ciphertext length the caller's manifest implies.
        expected: u64,
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

/// Deletes each of `paths` whose file name is an id not in `keep`; returns
/// how many files and bytes went. Files not named by an id are not ours to
/// delete and stay.
fn delete_unreferenced<I: FromStr + Eq + Hash>(
    paths: Vec<PathBuf>,
    keep: &HashSet<I>,
    what: &str,
) -> Result<(u64, u64), StoreError> {
    let (mut count, mut bytes) = (0, 0);
    for path in paths {
        let id = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<I>().ok());
        if id.is_some_and(|id| !keep.contains(&id)) {
            let len = path.metadata().map_or(0, |m| m.len());
            fs::remove_file(&path).map_err(io_err(what, &path))?;
            count += 1;
            bytes += len;
        }
    }
    Ok((count, bytes))
}

/// Whether the file at `path` hashes to `id`, read through the hasher
/// (no buffer the size of the chunk).
fn hashes_to(path: &Path, id: &ChunkId) -> bool {
    let mut hasher = blake3::Hasher::new();
    File::open(path).and_then(|file| hasher.update_reader(file).map(|_| ())).is_ok()
        && ChunkId(*hasher.finalize().as_bytes()) == *id
}

/// The largest chunk file: the largest chunk (16 MiB) and its tag.
pub const MAX_CHUNK_FILE_LEN: u32 = crate::chunk::MAX_CHUNK_SIZE + TAG_LEN as u32;

/// The lengths a chunk file can have: a tag, and at most the largest chunk before it.
const CHUNK_FILE_LENS: std::ops::RangeInclusive<u64> = TAG_LEN as u64..=MAX_CHUNK_FILE_LEN as u64;

/// One node's store, opened: chunks, manifests and metadata on disk.
pub struct Store {
    root: PathBuf,
    db: meta::Meta,
    /// Chunk directories whose entry this process has seen fsynced in its
    /// parent: a chunk renamed into one of them is durable once the
    /// directory itself is fsynced.
    durable_dirs: Mutex<HashSet<PathBuf>>,
    /// Bytes and count of chunk files: counted by the first
    /// [`Store::chunk_usage`], kept up to date by every write and quarantine
    /// after, so asking again costs nothing.
    usage: Mutex<Option<Usage>>,
}

/// Chunk files on disk and their bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    bytes: u64,
    files: u64,
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
        let store =
            Self { root: root.to_owned(), db, durable_dirs: Mutex::new(HashSet::new()), usage: Mutex::new(None) };
        if sharing == Sharing::Exclusive {
            store.clear_tmp()?;
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
        if path.is_file() {
            let len: u64 = parts.iter().map(|p| p.as_ref().len() as u64).sum();
            let same_len = fs::metadata(&path).is_ok_and(|m| m.len() == len);
            if same_len && hashes_to(&path, id) {
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
        if let Some(usage) = self.usage.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
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

    /// Reads chunk `id`, which its manifest says is `plaintext_len + 16`
    /// bytes long, into `buf` and checks its BLAKE3. A file whose bytes do
    /// not match its id is quarantined; a good chunk of another length is
    /// the manifest's error, and stays.
    pub fn read_chunk(&self, id: &ChunkId, plaintext_len: u32, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        if !self.read_verified(id, buf)? {
            return Err(StoreError::ChunkMissing(*id));
        }
        let (expected, actual) = (u64::from(plaintext_len) + TAG_LEN as u64, buf.len() as u64);
        if actual != expected {
            return Err(StoreError::ChunkLengthMismatch { id: *id, expected, actual });
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

    /// Deletes every chunk and manifest that no live pin references, and
    /// forgets sealed-chunk entries whose chunk is gone.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let referenced = self.db.referenced_chunks()?;
        (report.chunks_deleted, report.bytes_freed) =
            delete_unreferenced(self.chunk_files()?, &referenced, "deleting an unreferenced chunk")?;
        let manifests = self.root.join("manifests");
        let listed = files::files_in(&manifests).map_err(io_err("listing manifests", &manifests))?;
        let (deleted, freed) =
            delete_unreferenced(listed, &self.db.pinned_manifests()?, "deleting an unpinned manifest")?;
        report.manifests_deleted = deleted;
        report.bytes_freed += freed;
        report.sealed_entries_forgotten = self.db.forget_sealed_except(&referenced)?;
        self.clear_tmp()?;
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(report)
    }

    /// Total bytes of chunk files, and their count. The first call walks
    /// the store (one walk at a time, whoever asks), later ones read the
    /// count. A node asks once before it serves, so that no write races the
    /// walk.
    pub fn chunk_usage(&self) -> Result<(u64, u64), StoreError> {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        if usage.is_none() {
            let mut counted = Usage::default();
            for outer in files::dirs_in(&self.root.join("chunks")).map_err(io_err("listing chunks", &self.root))? {
                for inner in files::dirs_in(&outer).map_err(io_err("listing chunks", &outer))? {
                    for file in files::files_in(&inner).map_err(io_err("listing chunks", &inner))? {
                        counted.bytes += file.metadata().map_or(0, |m| m.len());
                        counted.files += 1;
                    }
                }
            }
            *usage = Some(counted);
        }
        let counted = usage.unwrap_or_default();
        Ok((counted.bytes, counted.files))
    }

    /// Every file under `chunks/ab/cd/`.
    fn chunk_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for outer in files::dirs_in(&self.root.join("chunks")).map_err(io_err("listing chunks", &self.root))? {
            for inner in files::dirs_in(&outer).map_err(io_err("listing chunks", &outer))? {
                out.extend(files::files_in(&inner).map_err(io_err("listing chunks", &inner))?);
            }
        }
        Ok(out)
    }

    fn clear_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        for file in files::files_in(&tmp).map_err(io_err("listing temp files", &tmp))? {
            fs::remove_file(&file).map_err(io_err("removing a stale temp file", &file))?;
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
        let err = store.read_chunk(&id, 65, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, StoreError::ChunkLengthMismatch { expected: 81, actual: 80, .. }), "{err}");
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

        let report = store.gc().unwrap();
        assert_eq!((report.chunks_deleted, report.manifests_deleted), (1, 1));
        assert!(store.has_chunk(&kept_id));
        assert!(!store.has_chunk(&dropped_id));
        assert!(store.read_manifest(&manifest).is_ok());
        assert!(matches!(store.read_manifest(&orphan_manifest), Err(StoreError::ManifestMissing(_))));
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
