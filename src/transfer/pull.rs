//! Pull: manifest → read chunk → verify BLAKE3 → open → write in order.
//!
//! `workers` threads read, verify and decrypt chunks; the calling thread
//! writes them in file order. A worker takes a free buffer *before* it claims
//! the next chunk index, so the lowest chunk not yet written always has a
//! buffer and the writer can never wait on a chunk that waits on it. At most
//! `buffers` chunk buffers exist. A file output is written to a temp file
//! beside the target and renamed into place only when complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;

use crate::crypto::{FileKey, OwnerKeys};
use crate::home::peers::KnownPeer;
use crate::id::ManifestId;
use crate::manifest::{ChunkRef, Manifest};
use crate::sealing::{Sealing, max_sealed_len};
use crate::store::{Store, StoreError};
use crate::token::{self, Kind, ShareTicket, TokenError};

use super::catalog::Catalog;
use super::swarm::Swarm;
use super::{Parallelism, TransferError};

/// What a pull was asked for: a version of the owner's (NAME, NAME@V, an
/// id or id prefix), or one someone shared.
#[derive(Debug, Clone)]
pub enum Wanted {
    /// A version in the owner's log, or a whole manifest id.
    Version(String),
    /// A version a share ticket gives.
    Shared(ShareTicket),
}

impl Wanted {
    /// Whether it is a shared version (a ticket), which only peers can give.
    pub fn is_shared(&self) -> bool {
        matches!(self, Wanted::Shared(_))
    }

    /// Peers a ticket names.
    pub fn peers(&self) -> Vec<KnownPeer> {
        match self {
            Wanted::Shared(ticket) => ticket.peers.iter().map(KnownPeer::from_wire).collect(),
            Wanted::Version(_) => Vec::new(),
        }
    }

    /// Reads a pull argument: a share ticket (whitespace anywhere ignored),
    /// else a version spec.
    pub fn parse(spec: &str) -> Result<Self, TokenError> {
        match token::kind_of(spec) {
            Some(Kind::Share) => token::decode(spec).map(Wanted::Shared),
            // Decoding a join token as a ticket fails, saying what it is for.
            Some(Kind::Join) => token::decode::<ShareTicket>(spec).map(Wanted::Shared),
            None => Ok(Wanted::Version(spec.to_owned())),
        }
    }
}

/// The manifest a pull reads, and how to open it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The manifest.
    pub id: ManifestId,
    /// How messages call it: `name@3`, or `shared manifest 1a2b…`.
    pub label: String,
    /// The file key, for a shared version; the owner's keys open the others.
    file_key: Option<FileKey>,
    /// Peers a ticket named.
    peers: Vec<KnownPeer>,
}

impl Target {
    /// Which manifest `wanted` means. A version spec goes through the
    /// owner's log; a whole manifest id the log does not know is still
    /// tried (it may be in a store, or on peers).
    pub fn resolve(
        catalog: &dyn Catalog,
        index: &super::index::HistoryIndex,
        owner: &OwnerKeys,
        wanted: &Wanted,
    ) -> Result<Self, TransferError> {
        match wanted {
            Wanted::Shared(ticket) => Ok(Target {
                id: ticket.manifest,
                label: format!("shared manifest {}", ticket.manifest.short(16)),
                file_key: Some(FileKey(ticket.file_key)),
                peers: ticket.peers.iter().map(KnownPeer::from_wire).collect(),
            }),
            Wanted::Version(spec) => {
                let history = index.sync(owner, catalog, false)?;
                let (id, label) = match history.select_one(spec) {
                    Ok(version) => (version.manifest, version.label()),
                    Err(err @ TransferError::Resolve(_)) => match spec.parse::<ManifestId>() {
                        Ok(id) => (id, format!("manifest {}", id.short(16))),
                        Err(_) => return Err(err),
                    },
                    Err(err) => return Err(err),
                };
                Ok(Target { id, label, file_key: None, peers: Vec::new() })
            }
        }
    }

    /// Whether only peers can give it: a shared version is not in this home.
    pub fn needs_peers(&self) -> bool {
        self.file_key.is_some()
    }

    /// Peers to ask besides the home's own (those a ticket named).
    pub fn peers(&self) -> &[KnownPeer] {
        &self.peers
    }

    /// Gets the manifest from the home's records, else from `swarm`, and
    /// opens it: with the ticket's file key, or the owner's keys.
    pub fn open(
        &self,
        catalog: &dyn Catalog,
        swarm: Option<&Swarm>,
        owner: &OwnerKeys,
    ) -> Result<Manifest, TransferError> {
        let envelope = match (catalog.manifest(&self.id)?, swarm) {
            (Some(envelope), _) => envelope,
            (None, Some(swarm)) => swarm.fetch_manifest(&self.id)?,
            (None, None) => return Err(StoreError::ManifestMissing(self.id).into()),
        };
        Ok(match &self.file_key {
            Some(key) => Manifest::open_with_file_key(key, self.id, &envelope)?,
            None => Manifest::open(owner, self.id, &envelope)?.1,
        })
    }
}

/// Reads a manifest from the home's records and opens it with the owner's keys.
pub fn open_manifest(
    catalog: &dyn Catalog,
    owner: &crate::crypto::OwnerKeys,
    id: ManifestId,
) -> Result<Manifest, TransferError> {
    let envelope = catalog.manifest(&id)?.ok_or(StoreError::ManifestMissing(id))?;
    Ok(Manifest::open(owner, id, &envelope)?.1)
}

/// Where a pull gets chunk ciphertext: the local store, or peers (`transfer::remote`).
pub trait Source: Sync {
    /// Reads chunk `chunk.id`'s ciphertext into `buf`, verified against its id.
    fn read(&self, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), TransferError>;
}

impl Source for Store {
    fn read(&self, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), TransferError> {
        Ok(self.read_chunk(&chunk.id, chunk.len, buf)?)
    }
}

/// Writes the file `manifest` describes to `out`, in order.
pub fn write_to(
    source: &dyn Source,
    manifest: &Manifest,
    out: &mut dyn Write,
    parallelism: Parallelism,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), TransferError> {
    write_from(source, manifest, 0, out, parallelism, progress)
}

/// Writes chunks `start..` of the file to `out`, in order.
fn write_from(
    source: &dyn Source,
    manifest: &Manifest,
    start: usize,
    out: &mut dyn Write,
    parallelism: Parallelism,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), TransferError> {
    let chunks = &manifest.chunks;
    // Each buffer grows once, on first use, to the largest ciphertext of the
    // file, not step by step as chunk sizes vary (every step a new
    // allocation, and page faults on all of it).
    let largest = chunks.iter().map(|c| max_sealed_len(c.len) as usize).max().unwrap_or(0);
    let sealing = manifest.sealing;
    let next_job = AtomicUsize::new(start);
    let (spare_tx, spare_rx) = mpsc::sync_channel::<Vec<u8>>(parallelism.buffers);
    for _ in 0..parallelism.buffers {
        spare_tx.send(Vec::new()).expect("the channel has room for every buffer");
    }
    // Owned by the workers only, so their `recv` fails once the writer is gone.
    let spare_rx = Arc::new(Mutex::new(spare_rx));
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<Vec<u8>, TransferError>)>();

    thread::scope(|scope| {
        for _ in 0..parallelism.workers {
            let (done_tx, spare_rx, next_job) = (done_tx.clone(), Arc::clone(&spare_rx), &next_job);
            scope.spawn(move || {
                loop {
                    let spare = spare_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(mut buf) = spare else { break };
                    let index = next_job.fetch_add(1, Ordering::Relaxed);
                    let Some(chunk) = chunks.get(index) else { break };
                    buf.clear();
                    buf.reserve(largest);
                    let result = read_and_open(source, sealing, chunk, &mut buf).map(|()| buf);
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((done_tx, spare_rx));
        write_in_order(start, chunks.len(), done_rx, spare_tx, out, progress)
    })
}

fn write_in_order(
    start: usize,
    total: usize,
    done_rx: mpsc::Receiver<(usize, Result<Vec<u8>, TransferError>)>,
    spare_tx: mpsc::SyncSender<Vec<u8>>,
    out: &mut dyn Write,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), TransferError> {
    let mut pending = std::collections::BTreeMap::new();
    let mut next = start;
    while next < total {
        let Ok((index, result)) = done_rx.recv() else { return Err(TransferError::Interrupted) };
        pending.insert(index, result?);
        while let Some(buf) = pending.remove(&next) {
            out.write_all(&buf).map_err(|source| TransferError::WriteOutput { source })?;
            progress(buf.len() as u64);
            // Workers that already finished leave the channel closed; nothing is lost.
            let _ = spare_tx.send(buf);
            next += 1;
        }
    }
    out.flush().map_err(|source| TransferError::WriteOutput { source })
}

fn read_and_open(
    source: &dyn Source,
    sealing: Sealing,
    chunk: &ChunkRef,
    buf: &mut Vec<u8>,
) -> Result<(), TransferError> {
    buf.reserve(max_sealed_len(chunk.len) as usize);
    source.read(chunk, buf)?;
    sealing.open(&chunk.key, chunk.len, buf).map_err(|_| TransferError::ChunkAuth(chunk.id))?;
    Ok(())
}

/// Writes the file to `path` through a temp file beside it, renamed into
/// place only when every byte is verified and written.
///
/// The temp file is named after the manifest, so a pull that failed with
/// `keep_partial` set resumes where it stopped: the chunks already in the
/// temp file are checked (sealed again with their keys, the result compared
/// with their ids) and only the rest are read from `source`. Without
/// `keep_partial`, a failure removes the temp file.
pub fn write_to_path(
    source: &dyn Source,
    manifest: &Manifest,
    manifest_id: &ManifestId,
    path: &Path,
    parallelism: Parallelism,
    keep_partial: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PullOutcome, TransferError> {
    let tmp = partial_path(path, manifest_id);
    let output_err = |source: io::Error| TransferError::CreateOutput { path: path.to_owned(), source };
    let mut file = open_partial(&tmp).map_err(output_err)?;
    let (resumed, offset) = verified_prefix(&mut file, manifest).map_err(output_err)?;
    file.set_len(offset).map_err(output_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(output_err)?;
    progress(offset);
    let result = write_from(source, manifest, resumed, &mut file, parallelism, progress).and_then(|()| {
        drop(file);
        fs::rename(&tmp, path).map_err(output_err)
    });
    if result.is_err() && !keep_partial {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| PullOutcome { resumed_chunks: resumed, resumed_bytes: offset })
}

/// Opens the partial file of a pull: a new one is created exclusively
/// (`O_EXCL`), readable by its owner only; an existing one (a pull to
/// resume) must be a regular file of this user. Neither follows a symbolic
/// link (`O_NOFOLLOW`), so nobody who can write the directory can aim the
/// pull at another file.
fn open_partial(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let mut options = OpenOptions::new();
    options.read(true).write(true).custom_flags(libc::O_NOFOLLOW);
    match options.clone().create_new(true).mode(0o600).open(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        created => return created,
    }
    let in_the_way = || {
        io::Error::other(format!(
            "{} is in the way of the pull's partial file and is not a file of yours: remove it",
            path.display()
        ))
    };
    let file = options.open(path).map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { in_the_way() } else { e })?;
    let meta = file.metadata()?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if !meta.is_file() || meta.uid() != me {
        return Err(in_the_way());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// What a pull to a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOutcome {
    /// Chunks found already written (and verified) by an earlier, interrupted pull.
    pub resumed_chunks: usize,
    /// Their bytes.
    pub resumed_bytes: u64,
}

/// How many leading chunks of `file` are the manifest's, verified, and the byte offset after them.
fn verified_prefix(file: &mut File, manifest: &Manifest) -> io::Result<(usize, u64)> {
    let len = file.metadata()?.len();
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for (index, chunk) in manifest.chunks.iter().enumerate() {
        let end = offset + u64::from(chunk.len);
        if end > len {
            return Ok((index, offset));
        }
        buf.clear();
        buf.reserve(max_sealed_len(chunk.len) as usize);
        file.seek(SeekFrom::Start(offset))?;
        Read::by_ref(file).take(u64::from(chunk.len)).read_to_end(&mut buf)?;
        // Sealing again gives the chunk's id if the bytes are its plaintext
        // (and, for a compressed chunk, the same zstd build and level sealed
        // it; otherwise the chunk is fetched again, which is only slower).
        if manifest.sealing.seal(&chunk.key, &mut buf) != chunk.id {
            return Ok((index, offset));
        }
        offset = end;
    }
    Ok((manifest.chunks.len(), offset))
}

/// `.NAME.<manifest id prefix>.p2pfs-partial` beside `path`.
pub fn partial_path(path: &Path, manifest_id: &ManifestId) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.p2pfs-partial", manifest_id.short(16)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MANIFEST_VERSION;

    /// A store holding `parts` sealed as `sealing` says, and their manifest
    /// in the layout of that format's time.
    fn stored(sealing: Sealing, parts: &[Vec<u8>]) -> (tempfile::TempDir, Store, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let owner = OwnerKeys::derive(&[8; 32]);
        let chunks = parts
            .iter()
            .map(|part| {
                let key = owner.chunk_key(part);
                let mut buf = part.clone();
                let id = sealing.seal(&key, &mut buf);
                store.put_chunk(&id, &buf).unwrap();
                ChunkRef { id, key, len: part.len() as u32 }
            })
            .collect();
        let mut manifest = Manifest::new("f".into(), sealing, chunks);
        if sealing == Sealing::V1 {
            manifest.version = 1;
        }
        (dir, store, manifest)
    }

    fn parts() -> Vec<Vec<u8>> {
        let words: Vec<u8> = b"an old store, still read ".iter().copied().cycle().take(300_000).collect();
        vec![words.clone(), (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect(), words[..1000].to_vec()]
    }

    #[test]
    fn version_1_chunks_and_manifests_still_read() {
        let (_dir, store, manifest) = stored(Sealing::V1, &parts());
        let body = manifest.encode();
        assert_eq!(body[0], 1, "laid out as manifest v1");
        let decoded = Manifest::decode(ManifestId([0; 32]), &body).unwrap();
        let mut out = Vec::new();
        write_to(&store, &decoded, &mut out, Parallelism::for_this_machine(), &|_| {}).unwrap();
        assert_eq!(out, parts().concat());
    }

    #[test]
    fn a_pull_resumes_after_the_chunks_its_partial_file_holds_in_either_format() {
        for sealing in [Sealing::V1, Sealing::current(3)] {
            let (dir, store, manifest) = stored(sealing, &parts());
            assert!(sealing == Sealing::V1 || manifest.version == MANIFEST_VERSION);
            let path = dir.path().join("out.bin");
            let id = ManifestId([1; 32]);
            // An earlier pull wrote the first two chunks and half the third.
            let whole = parts().concat();
            fs::write(partial_path(&path, &id), &whole[..300_000 + 200_000 + 500]).unwrap();
            let outcome =
                write_to_path(&store, &manifest, &id, &path, Parallelism::for_this_machine(), false, &|_| {}).unwrap();
            assert_eq!(outcome.resumed_chunks, 2, "{sealing:?}");
            assert_eq!(fs::read(&path).unwrap(), whole);
        }
    }
}
