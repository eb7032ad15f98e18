//! Push: chunk → key → (skip if sealed before) → seal → store durably → manifest → log.
//!
//! One reader thread chunks the input into recycled buffers; `workers` threads
//! key, seal and store chunks; the calling thread collects the results. A
//! buffer returns to the reader once its chunk is stored, and the reader makes
//! at most `buffers` of them, so memory is bounded by `buffers × max chunk
//! size` whatever the file size. The version is recorded (one atomic commit of
//! log entry, pin and sealed-chunk map) only after every chunk and the
//! manifest are durable.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::chunk::{Chunker, ChunkerConfig, CutPoints, GearTable};
use crate::crypto::{ChunkKey, EnvelopeRandomness, FileKey, OwnerKeys};
use crate::id::{ChunkId, ManifestId};
use crate::manifest::log::{LogOp, LogRecord, Version};
use crate::manifest::{ChunkRef, Erasure, MAX_CHUNKS, Manifest};
use crate::sealing::{Sealing, max_sealed_len};
use crate::store::Store;
use crate::wire::Stripes;

use super::catalog::Catalog;
use super::index::{History, HistoryIndex};
use super::{MAX_LOG_RETRIES, Parallelism, TransferError, record, unix_time_ms};

/// How to push.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Chunk size bounds.
    pub chunker: ChunkerConfig,
    /// Threads and buffers.
    pub parallelism: Parallelism,
    /// How chunks are sealed (the chunk format and zstd level).
    pub sealing: Sealing,
    /// Record a new version even when the input is the name's latest
    /// version again, byte for byte.
    pub allow_same: bool,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The new version as the log records it, or, when `unchanged`, the
    /// latest version that already held these bytes.
    pub version: Version,
    /// The input was the name's latest version again: nothing was recorded.
    pub unchanged: bool,
    /// Chunks sealed in this push (the rest were known from earlier pushes).
    pub chunks_sealed: u64,
    /// Chunks written to the store (new to it).
    pub chunks_stored: u64,
    /// Their sealed bytes: what the new plaintext takes, compressed and padded.
    pub sealed_bytes: u64,
    /// Wall time of the push.
    pub elapsed: Duration,
}

/// Where a push puts chunks: the local store, or peers (`transfer::remote`).
pub trait Destination: Sync {
    /// Whether chunk `id` is already stored wherever it must be, so it need
    /// be neither sealed again nor sent.
    fn holds(&self, id: &ChunkId) -> bool;

    /// Stores a sealed chunk durably, unless it is there already (sealing is
    /// convergent, so it may be, even when no sealed-chunk map says so).
    /// Returns whether any bytes were written or sent.
    ///
    /// The destination may take `ciphertext`'s allocation (to hand it to the
    /// network without a copy); it then leaves in its place a buffer of at
    /// least the same capacity, the same one whenever it can be reclaimed.
    fn put(&self, id: &ChunkId, ciphertext: &mut Vec<u8>) -> Result<bool, TransferError>;

    /// Makes a version's manifest, pin and log head durable at the
    /// destination, after all its chunks and before the home records it
    /// ([`record::record_version`]). A store has nothing to do: the home's
    /// record of the version is its commit.
    fn publish(&self, _version: &Published<'_>) -> Result<(), TransferError> {
        Ok(())
    }

    /// How `chunks` (a version's, in file order, every one stored) are laid
    /// out, for the manifest: `None` when they are stored whole, else each
    /// one's stripe of shards ([`super::shards`]).
    fn erasure(&self, _chunks: &[ChunkId]) -> Result<Option<Erasure>, TransferError> {
        Ok(None)
    }
}

/// A new version, ready to be published to peers.
pub struct Published<'a> {
    /// The manifest's id.
    pub manifest: ManifestId,
    /// Its sealed envelope.
    pub envelope: &'a [u8],
    /// What its pin lists, as signed: its chunks in file order, or for an
    /// erasure-coded version each chunk's id followed by its shards' ids
    /// (`wire::Pin::erasure`).
    pub chunks: &'a [ChunkId],
    /// The erasure code, if the version is erasure coded.
    pub erasure: Option<Stripes>,
    /// The owner's log entry recording it.
    pub entry: &'a crate::manifest::log::LogEntry,
}

impl Published<'_> {
    /// The blobs its pin keeps: the chunks, or the shards.
    pub fn kept(&self) -> Vec<ChunkId> {
        match self.erasure {
            Some(stripes) => stripes.kept(self.chunks),
            None => self.chunks.to_vec(),
        }
    }
}

/// What a manifest's pin lists, as signed, and its erasure code
/// ([`Published::chunks`]).
pub fn pin_list(manifest: &Manifest) -> (Vec<ChunkId>, Option<Stripes>) {
    match &manifest.erasure {
        None => (manifest.chunks.iter().map(|c| c.id).collect(), None),
        Some(erasure) => {
            let ids = manifest
                .chunks
                .iter()
                .zip(&erasure.stripes)
                .flat_map(|(chunk, stripe)| std::iter::once(chunk.id).chain(stripe.shards.iter().copied()))
                .collect();
            (ids, Stripes::new(erasure.data, erasure.parity))
        }
    }
}

impl Destination for Store {
    fn holds(&self, id: &ChunkId) -> bool {
        self.has_chunk(id)
    }

    fn put(&self, id: &ChunkId, ciphertext: &mut Vec<u8>) -> Result<bool, TransferError> {
        Ok(self.put_chunk(id, ciphertext)?)
    }
}

/// Pushes everything `input` yields as a new version of `name`: chunks go
/// to `destination`, the manifest and log entry to `catalog` (and, through
/// [`Destination::publish`], to the destination).
///
/// When the input is byte for byte the name's latest version, nothing is
/// recorded and the report names that version (`unchanged`), unless
/// `options.allow_same` asks for a new version anyway. Another command of
/// the same owner may append to the log meanwhile: the entry is then made
/// again on top of the log as it is now.
#[allow(clippy::too_many_arguments)]
pub fn push(
    catalog: &dyn Catalog,
    index: &HistoryIndex,
    destination: &dyn Destination,
    owner: &OwnerKeys,
    name: &str,
    input: impl Read + Send,
    options: &PushOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PushReport, TransferError> {
    let started = Instant::now();
    // A log that cannot be read fails the push before anything is sent.
    index.sync(owner, catalog, true)?;
    let cuts = CutPoints::new(options.chunker, GearTable::from_seed(owner.chunker_seed()))?;
    let outcome = store_chunks(catalog, destination, owner, input, cuts, options, progress)?;

    let chunk_ids: Vec<ChunkId> = outcome.chunks.iter().map(|c| c.id).collect();
    let erasure = destination.erasure(&chunk_ids)?;
    if let Some(erasure) = &erasure
        && chunk_ids.len() * (erasure.width() + 1) > MAX_CHUNKS
    {
        return Err(TransferError::TooManyStripes {
            chunks: chunk_ids.len(),
            most: MAX_CHUNKS / (erasure.width() + 1),
        });
    }
    let code = erasure.as_ref().map(|e| (e.data, e.parity));

    // Judged against the log as it is now: an `rm` may have run meanwhile.
    let mut history = index.sync(owner, catalog, true)?;
    if !options.allow_same
        && let Some(latest) = same_as_latest(catalog, owner, &history, name, &outcome.chunks, code)?
    {
        return Ok(PushReport {
            version: latest,
            unchanged: true,
            chunks_sealed: outcome.sealed.len() as u64,
            chunks_stored: outcome.stored,
            sealed_bytes: outcome.sealed_bytes,
            elapsed: started.elapsed(),
        });
    }
    let mut manifest = Manifest::new(name.to_owned(), options.sealing, outcome.chunks);
    manifest.erasure = erasure;
    let fresh = EnvelopeRandomness {
        file_key: FileKey(rand::random()),
        wrap_nonce: rand::random(),
        body_nonce: rand::random(),
    };
    let (manifest_id, envelope) = manifest.seal(owner, &fresh);

    let record = LogRecord {
        time_ms: unix_time_ms(),
        op: LogOp::Push {
            name: name.to_owned(),
            manifest: manifest_id,
            size: manifest.size,
            chunks: manifest.chunks.len() as u64,
            new_bytes: outcome.new_bytes,
        },
    };
    let (pinned, stripes) = pin_list(&manifest);
    let mut attempts = 0;
    let version = loop {
        if let Some(version) = history.by_manifest(&manifest_id)? {
            // An earlier attempt's entry was taken after all (by a holder
            // whose reply was lost, or before the home's own commit found
            // another command's entry first): the log has the version once,
            // and only the home's records still need it.
            let kept = manifest.blobs();
            record::keep_version(catalog, owner, manifest_id, &envelope, &kept, &outcome.sealed)?;
            break version;
        }
        let entry = history.append(owner, record.clone(), rand::random())?;
        // Read now: once recorded, the push has succeeded whatever happens next.
        let reported = history.by_manifest(&manifest_id)?.expect("the version was just appended to the history");
        let version =
            Published { manifest: manifest_id, envelope: &envelope, chunks: &pinned, erasure: stripes, entry: &entry };
        match record::record_version(catalog, destination, owner, &version, &outcome.sealed) {
            Ok(()) => break reported,
            Err(e) if e.is_log_conflict() && attempts < MAX_LOG_RETRIES => {
                attempts += 1;
                history = index.sync(owner, catalog, true)?;
            }
            Err(e) => return Err(e),
        }
    };

    Ok(PushReport {
        version,
        unchanged: false,
        chunks_sealed: outcome.sealed.len() as u64,
        chunks_stored: outcome.stored,
        sealed_bytes: outcome.sealed_bytes,
        elapsed: started.elapsed(),
    })
}

impl PushReport {
    /// The new version's manifest.
    pub fn manifest(&self) -> ManifestId {
        self.version.manifest
    }
}

/// The name's latest live version, if it has exactly `chunks`, stored the
/// same way (whole, or erasure coded with the same `code`).
fn same_as_latest(
    catalog: &dyn Catalog,
    owner: &OwnerKeys,
    history: &History<'_>,
    name: &str,
    chunks: &[ChunkRef],
    code: Option<(u8, u8)>,
) -> Result<Option<Version>, TransferError> {
    let Some(latest) = history.latest(name)? else { return Ok(None) };
    if latest.chunks != chunks.len() as u64 {
        return Ok(None);
    }
    let Ok(Some(envelope)) = catalog.manifest(&latest.manifest) else { return Ok(None) };
    let Ok((_, manifest)) = Manifest::open(owner, latest.manifest, &envelope) else { return Ok(None) };
    if manifest.erasure.as_ref().map(|e| (e.data, e.parity)) != code {
        return Ok(None);
    }
    let same = manifest.chunks.iter().zip(chunks).all(|(a, b)| a.id == b.id && a.len == b.len);
    Ok(same.then_some(latest))
}

struct Stored {
    chunks: Vec<ChunkRef>,
    /// Key tags and ids of chunks sealed in this push, for the sealed-chunk map.
    sealed: Vec<([u8; 32], ChunkId)>,
    new_bytes: u64,
    stored: u64,
    sealed_bytes: u64,
}

/// What a worker did with one chunk.
struct ChunkOutcome {
    chunk: ChunkRef,
    /// Set when the chunk was sealed here: its key tag, to remember.
    sealed_tag: Option<[u8; 32]>,
    /// Whether its file was written now.
    written: bool,
    /// Its sealed length, when sealed here.
    sealed_len: u64,
}

fn store_chunks(
    catalog: &dyn Catalog,
    destination: &dyn Destination,
    owner: &OwnerKeys,
    input: impl Read + Send,
    cuts: CutPoints,
    options: &PushOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Stored, TransferError> {
    let (parallelism, sealing) = (options.parallelism, options.sealing);
    let buffer_capacity = max_sealed_len(cuts.config().max_size) as usize;
    let too_many = TransferError::TooManyChunks {
        max_chunks: MAX_CHUNKS,
        max_gib: (MAX_CHUNKS as u64 * u64::from(cuts.config().avg_size)) >> 30,
    };
    let abort = AtomicBool::new(false);
    let (work_tx, work_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(parallelism.workers);
    // Owned by the workers only: when the last one exits, the reader's sends fail.
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (spare_tx, spare_rx) = mpsc::sync_channel::<Vec<u8>>(parallelism.buffers);
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<ChunkOutcome, TransferError>)>();

    thread::scope(|scope| {
        let abort = &abort;
        let reader = scope.spawn(move || -> Result<(), TransferError> {
            let mut chunker = Chunker::new(input, cuts);
            let mut allocated = 0;
            for index in 0.. {
                if abort.load(Ordering::Relaxed) {
                    break;
                }

                let mut buf = if allocated < parallelism.buffers {
                    allocated += 1;
                    Vec::with_capacity(buffer_capacity)
                } else {
                    // Every worker gone means the push is over.
                    let Ok(buf) = spare_rx.recv() else { break };
                    buf
                };
                match chunker.next_chunk(&mut buf) {
                    // Fails the push before anything is recorded; chunks sent stay unreferenced.
                    Ok(Some(_)) if index == MAX_CHUNKS => return Err(too_many),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(source) => return Err(TransferError::ReadInput { source }),
                }
                if work_tx.send((index, buf)).is_err() {
                    break;
                }
            }
            drop(work_tx);
            Ok(())
        });

        for _ in 0..parallelism.workers {
            let (done_tx, spare_tx, work_rx) = (done_tx.clone(), spare_tx.clone(), Arc::clone(&work_rx));
            scope.spawn(move || {
                loop {
                    let job = work_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((index, mut buf)) = job else { break };
                    let outcome = seal_and_store(catalog, destination, owner, sealing, &mut buf);
                    // The reader may have finished; then the buffer is freed here.
                    let _ = spare_tx.send(buf);
                    if done_tx.send((index, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((done_tx, spare_tx, work_rx));

        let collected = collect(done_rx, progress);
        if collected.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let read = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A read error explains a short result better than anything after it.
        read?;
        collected
    })
}

fn collect(
    done_rx: mpsc::Receiver<(usize, Result<ChunkOutcome, TransferError>)>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Stored, TransferError> {
    let mut slots: Vec<Option<ChunkRef>> = Vec::new();
    let mut stored = Stored { chunks: Vec::new(), sealed: Vec::new(), new_bytes: 0, stored: 0, sealed_bytes: 0 };
    let mut written = HashSet::new();
    for (index, outcome) in done_rx {
        let outcome = outcome?;
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        slots[index] = Some(outcome.chunk);
        if let Some(tag) = outcome.sealed_tag {
            stored.sealed.push((tag, outcome.chunk.id));
        }
        // Two workers may store the same new chunk at once; count it once.
        if outcome.written && written.insert(outcome.chunk.id) {
            stored.new_bytes += u64::from(outcome.chunk.len);
            stored.stored += 1;
            stored.sealed_bytes += outcome.sealed_len;
        }
        progress(u64::from(outcome.chunk.len));
    }
    stored.chunks = slots.into_iter().collect::<Option<Vec<_>>>().ok_or(TransferError::Interrupted)?;
    Ok(stored)
}

fn seal_and_store(
    catalog: &dyn Catalog,
    destination: &dyn Destination,
    owner: &OwnerKeys,
    sealing: Sealing,
    buf: &mut Vec<u8>,
) -> Result<ChunkOutcome, TransferError> {
    let len = u32::try_from(buf.len()).expect("chunks are at most MAX_CHUNK_SIZE (16 MiB)");
    let key: ChunkKey = owner.chunk_key(buf);
    let tag = sealing.lookup_tag(&key);
    if let Some(id) = catalog.sealed(&tag)?
        && destination.holds(&id)
    {
        return Ok(ChunkOutcome { chunk: ChunkRef { id, key, len }, sealed_tag: None, written: false, sealed_len: 0 });
    }
    let id = sealing.seal(&key, buf);
    let sealed_len = buf.len() as u64;
    let written = destination.put(&id, buf)?;
    Ok(ChunkOutcome { chunk: ChunkRef { id, key, len }, sealed_tag: Some(tag), written, sealed_len })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::manifest::log::LogEntry;
    use crate::store::{Store, StoreError};
    use crate::transfer::catalog::Change;

    /// A log whose first append is taken and yet reported as a conflict, as
    /// when the primary holder stored the entry but its reply was lost and
    /// the next holder, lagging, refused it.
    struct TakenButRefused<'a> {
        store: &'a Store,
        log: Mutex<Vec<LogEntry>>,
        refused: Mutex<bool>,
    }

    impl Catalog for TakenButRefused<'_> {
        fn log_from(&self, _owner: &OwnerKeys, from: u64) -> Result<Vec<LogEntry>, TransferError> {
            Ok(self.log.lock().unwrap().iter().filter(|e| e.seq >= from).cloned().collect())
        }

        fn sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError> {
            self.store.sealed(tag)
        }

        fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
            self.store.manifest(id)
        }

        fn record(&self, change: Change<'_>) -> Result<(), TransferError> {
            self.log.lock().unwrap().extend(change.entries.iter().cloned());
            let mut refused = self.refused.lock().unwrap();
            if !*refused && !change.entries.is_empty() {
                *refused = true;
                return Err(TransferError::Store(StoreError::LogConflict { owner: change.entries[0].owner, held: 0 }));
            }
            Ok(())
        }

        fn adopt_log(&self, _owner: &OwnerKeys, _from: u64, _entries: &[LogEntry]) -> Result<(), TransferError> {
            Ok(())
        }
    }

    #[test]
    fn a_retried_push_whose_entry_was_taken_records_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let owner = OwnerKeys::derive(&[7; 32]);
        let catalog = TakenButRefused { store: &store, log: Mutex::new(Vec::new()), refused: Mutex::new(false) };
        let options = PushOptions {
            chunker: crate::chunk::ChunkerConfig::default(),
            parallelism: Parallelism::for_network(),
            sealing: Sealing::current(3),
            allow_same: false,
        };
        let index = HistoryIndex::in_memory_at(&dir.path().join("history.redb"));
        let report = push(&catalog, &index, &store, &owner, "f", &[5u8; 100_000][..], &options, &|_| {}).unwrap();
        let history = index.sync(&owner, &catalog, true).unwrap();
        let versions: Vec<_> = history.all(Some("f")).unwrap().iter().map(|v| (v.number, v.manifest)).collect();
        assert_eq!(versions, vec![(1, report.manifest())], "one push, one version");
    }
}
