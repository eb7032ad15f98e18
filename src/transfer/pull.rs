//! Pull: manifest → read chunk → verify BLAKE3 → open → write in order.
//!
//! `workers` threads read, verify and decrypt chunks; the calling thread
//! writes them in file order. A worker takes a free buffer *before* it claims
//! the next chunk index, so the lowest chunk not yet written always has a
//! buffer and the writer can never wait on a chunk that waits on it. At most
//! `buffers` chunk buffers exist. A file output is written to a temp file
//! beside the target and renamed into place only when complete.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;

use crate::crypto::{TAG_LEN, open_chunk};
use crate::id::ManifestId;
use crate::manifest::{ChunkRef, Manifest};
use crate::store::Store;

use super::{Parallelism, TransferError};

/// Reads a manifest from the store and opens it with the owner's keys.
pub fn open_manifest(
    store: &Store,
    owner: &crate::crypto::OwnerKeys,
    id: ManifestId,
) -> Result<Manifest, TransferError> {
    let envelope = store.read_manifest(&id)?;
    Ok(Manifest::open(owner, id, &envelope)?.1)
}

/// Writes the file `manifest` describes to `out`, in order.
pub fn write_to(
    store: &Store,
    manifest: &Manifest,
    out: &mut dyn Write,
    parallelism: Parallelism,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), TransferError> {
    let chunks = &manifest.chunks;
    let next_job = AtomicUsize::new(0);
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
                    let result = read_and_open(store, chunk, &mut buf).map(|()| buf);
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((done_tx, spare_rx));
        write_in_order(chunks.len(), done_rx, spare_tx, out, progress)
    })
}

fn write_in_order(
    total: usize,
    done_rx: mpsc::Receiver<(usize, Result<Vec<u8>, TransferError>)>,
    spare_tx: mpsc::SyncSender<Vec<u8>>,
    out: &mut dyn Write,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), TransferError> {
    let mut pending = std::collections::BTreeMap::new();
    let mut next = 0;
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

fn read_and_open(store: &Store, chunk: &ChunkRef, buf: &mut Vec<u8>) -> Result<(), TransferError> {
    buf.reserve(chunk.len as usize + TAG_LEN);
    store.read_chunk(&chunk.id, chunk.len, buf)?;
    open_chunk(&chunk.key, buf).map_err(|_| TransferError::ChunkAuth(chunk.id))?;
    Ok(())
}

/// Writes the file to `path` through a temp file beside it, renamed into
/// place only when every byte is verified and written. On failure nothing
/// appears under `path` and the temp file is removed.
pub fn write_to_path(
    store: &Store,
    manifest: &Manifest,
    path: &Path,
    parallelism: Parallelism,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), TransferError> {
    let tmp = temp_path_beside(path);
    let output_err = |source: io::Error| TransferError::CreateOutput { path: path.to_owned(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(output_err)?;
    let result = write_to(store, manifest, &mut file, parallelism, progress).and_then(|()| {
        drop(file);
        fs::rename(&tmp, path).map_err(output_err)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_path_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{:08x}.p2pfs-partial", rand::random::<u32>()))
}
