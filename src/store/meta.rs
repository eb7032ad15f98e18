//! The metadata database (redb): log entries, pins with chunk refcounts, and
//! the map from a sealed chunk's key tag to its id.
//!
//! Tables (docs/FORMAT.md, "Metadata database"):
//! - `log`: (OwnerId, seq) → encoded `LogEntry`
//! - `pins`: ManifestId → postcard `PinRecord` (who keeps it, which chunks it needs)
//! - `refs`: ChunkId → number of pins that need it (rows at zero are deleted)
//! - `sealed`: BLAKE3(chunk key) → ChunkId, so a push skips sealing chunks it has sealed before
//! - `heads`: OwnerId → the newest signed log entry a peer sent (`PutHead`), for any owner

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::id::{ChunkId, ManifestId, OwnerId};
use crate::manifest::log::LogEntry;

const LOG: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("log");
const PINS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("pins");
const REFS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("refs");
const SEALED: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("sealed");
const HEADS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("heads");

/// An owner's promise to keep one manifest's chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Who pinned it.
    pub owner: OwnerId,
    /// The chunks the manifest needs (duplicates allowed; counted once).
    pub chunks: Vec<ChunkId>,
}

impl PinRecord {
    fn distinct_chunks(&self) -> Vec<ChunkId> {
        let mut chunks = self.chunks.clone();
        chunks.sort_unstable();
        chunks.dedup();
        chunks
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Chunk files deleted.
    pub chunks_deleted: u64,
    /// Manifest envelopes deleted.
    pub manifests_deleted: u64,
    /// Bytes of files deleted.
    pub bytes_freed: u64,
    /// Sealed-chunk map entries dropped because their chunk is gone.
    pub sealed_entries_forgotten: u64,
}

/// The open metadata database.
pub struct Meta {
    db: Database,
    path: PathBuf,
}

/// What [`Meta::append_log`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The entry is now the last of its owner's log.
    Appended,
    /// That very entry was held already.
    AlreadyHeld,
    /// The entry does not follow the held log, which has `held` entries.
    Conflict {
        /// How many entries of that owner the log holds.
        held: u64,
    },
}

impl Meta {
    /// Opens or creates the database and its tables.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err(path))?;
        let meta = Self { db, path: path.to_owned() };
        let txn = meta.db.begin_write().map_err(db_err(path))?;
        txn.open_table(LOG).map_err(db_err(path))?;
        txn.open_table(PINS).map_err(db_err(path))?;
        txn.open_table(REFS).map_err(db_err(path))?;
        txn.open_table(SEALED).map_err(db_err(path))?;
        txn.open_table(HEADS).map_err(db_err(path))?;
        txn.commit().map_err(db_err(path))?;
        Ok(meta)
    }

    /// Every log entry of `owner`, in sequence order (unverified: replay checks them).
    pub fn log(&self, owner: &OwnerId) -> Result<Vec<LogEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(LOG).map_err(self.err())?;
        let mut out = Vec::new();
        for row in table.range((owner.as_bytes(), 0)..=(owner.as_bytes(), u64::MAX)).map_err(self.err())? {
            let (key, value) = row.map_err(self.err())?;
            let seq = key.value().1;
            let entry = LogEntry::decode(seq, value.value())
                .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: e.to_string() })?;
            out.push(entry);
        }
        Ok(out)
    }

    /// Encoded log entries of `owner` from sequence number `from` on, at
    /// most `max_entries` and `max_bytes` of them (but at least one, if there
    /// is one), and whether more follow.
    pub fn log_from(
        &self,
        owner: &OwnerId,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(LOG).map_err(self.err())?;
        let (mut out, mut bytes) = (Vec::new(), 0);
        for row in table.range((owner.as_bytes(), from)..=(owner.as_bytes(), u64::MAX)).map_err(self.err())? {
            let (_, value) = row.map_err(self.err())?;
            let value = value.value();
            if !out.is_empty() && (out.len() >= max_entries || bytes + value.len() > max_bytes) {
                return Ok((out, true));
            }
            bytes += value.len();
            out.push(value.to_vec());
        }
        Ok((out, false))
    }

    /// Appends `entry` (already signature-checked) to its owner's log if it
    /// is the next one: its sequence number follows the last held entry's
    /// and it names that entry's hash. Keeps it as the owner's head too.
    pub fn append_log(&self, entry: &LogEntry) -> Result<Appended, StoreError> {
        let owner = entry.owner.as_bytes();
        let encoded = entry.encode();
        let txn = self.db.begin_write().map_err(self.err())?;
        let appended = {
            let mut table = txn.open_table(LOG).map_err(self.err())?;
            let last = match table.range((owner, 0)..=(owner, u64::MAX)).map_err(self.err())?.next_back() {
                Some(row) => {
                    let (key, value) = row.map_err(self.err())?;
                    let seq = key.value().1;
                    let held = LogEntry::decode(seq, value.value())
                        .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: e.to_string() })?;
                    Some((seq, held.hash()))
                }
                None => None,
            };
            let (next, prev) = last.map_or((0, [0; 32]), |(seq, hash)| (seq + 1, hash));
            if entry.seq < next {
                let same = table.get((owner, entry.seq)).map_err(self.err())?.is_some_and(|v| v.value() == encoded);
                if same { Appended::AlreadyHeld } else { Appended::Conflict { held: next } }
            } else if entry.seq == next && entry.prev == prev {
                table.insert((owner, entry.seq), encoded.as_slice()).map_err(self.err())?;
                Appended::Appended
            } else {
                Appended::Conflict { held: next }
            }
        };
        if appended != Appended::Appended {
            txn.abort().map_err(self.err())?;
            return Ok(appended);
        }
        txn.commit().map_err(self.err())?;
        self.put_head(entry)?;
        Ok(appended)
    }

    /// How many manifests are pinned, by any owner.
    pub fn pin_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(PINS).map_err(self.err())?;
        table.len().map_err(self.err())
    }

    /// The id of the chunk sealed under a key with this tag, if one was.
    pub fn lookup_sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(SEALED).map_err(self.err())?;
        Ok(table.get(tag).map_err(self.err())?.map(|id| ChunkId(*id.value())))
    }

    /// The newest log entry held for `owner` from `PutHead`, encoded.
    pub fn head(&self, owner: &OwnerId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(HEADS).map_err(self.err())?;
        Ok(table.get(owner.as_bytes()).map_err(self.err())?.map(|v| v.value().to_vec()))
    }

    /// Keeps `entry` (already signature-checked) as its owner's head if its
    /// sequence number is higher than the held one's; returns whether it did.
    pub fn put_head(&self, entry: &LogEntry) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(self.err())?;
        let newer = {
            let mut table = txn.open_table(HEADS).map_err(self.err())?;
            let held = match table.get(entry.owner.as_bytes()).map_err(self.err())? {
                Some(bytes) => Some(
                    LogEntry::decode(0, bytes.value())
                        .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: format!("head: {e}") })?
                        .seq,
                ),
                None => None,
            };
            let newer = held.is_none_or(|seq| entry.seq > seq);
            if newer {
                table.insert(entry.owner.as_bytes(), entry.encode().as_slice()).map_err(self.err())?;
            }
            newer
        };
        txn.commit().map_err(self.err())?;
        Ok(newer)
    }

    /// The pin of a manifest, if it has one.
    pub fn pin(&self, manifest: &ManifestId) -> Result<Option<PinRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(PINS).map_err(self.err())?;
        let Some(bytes) = table.get(manifest.as_bytes()).map_err(self.err())? else { return Ok(None) };
        self.decode_pin(bytes.value()).map(Some)
    }

    /// Applies one atomic, durable change: append log entries, add pins
    /// (counting their chunks), remove pins (uncounting them), and remember
    /// sealed chunks. Adding a pin that exists, or removing one that does
    /// not, changes nothing.
    pub fn commit(
        &self,
        log: &[LogEntry],
        pins: &[(ManifestId, PinRecord)],
        unpins: &[ManifestId],
        sealed: &[([u8; 32], ChunkId)],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(self.err())?;
        {
            let mut log_table = txn.open_table(LOG).map_err(self.err())?;
            for entry in log {
                log_table.insert((entry.owner.as_bytes(), entry.seq), entry.encode().as_slice()).map_err(self.err())?;
            }
            let mut pin_table = txn.open_table(PINS).map_err(self.err())?;
            let mut refs = txn.open_table(REFS).map_err(self.err())?;
            for (manifest, pin) in pins {
                if pin_table.get(manifest.as_bytes()).map_err(self.err())?.is_some() {
                    continue;
                }
                let encoded = postcard::to_stdvec(pin).expect("pin records always encode");
                pin_table.insert(manifest.as_bytes(), encoded.as_slice()).map_err(self.err())?;
                for chunk in pin.distinct_chunks() {
                    let count = refs.get(chunk.as_bytes()).map_err(self.err())?.map_or(0, |c| c.value());
                    refs.insert(chunk.as_bytes(), count + 1).map_err(self.err())?;
                }
            }
            for manifest in unpins {
                let Some(bytes) = pin_table.remove(manifest.as_bytes()).map_err(self.err())? else { continue };
                let pin = self.decode_pin(bytes.value())?;
                drop(bytes);
                for chunk in pin.distinct_chunks() {
                    let count = refs.get(chunk.as_bytes()).map_err(self.err())?.map_or(0, |c| c.value());
                    if count > 1 {
                        refs.insert(chunk.as_bytes(), count - 1).map_err(self.err())?;
                    } else {
                        refs.remove(chunk.as_bytes()).map_err(self.err())?;
                    }
                }
            }
            let mut sealed_table = txn.open_table(SEALED).map_err(self.err())?;
            for (tag, id) in sealed {
                sealed_table.insert(tag, id.as_bytes()).map_err(self.err())?;
            }
        }
        txn.commit().map_err(self.err())
    }

    /// Every chunk at least one pin needs.
    pub fn referenced_chunks(&self) -> Result<HashSet<ChunkId>, StoreError> {
        Ok(self.keys_of(REFS)?.into_iter().map(ChunkId).collect())
    }

    /// Every pinned manifest.
    pub fn pinned_manifests(&self) -> Result<HashSet<ManifestId>, StoreError> {
        Ok(self.keys_of(PINS)?.into_iter().map(ManifestId).collect())
    }

    fn keys_of<V: redb::Value + 'static>(
        &self,
        table: TableDefinition<&[u8; 32], V>,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = txn.open_table(table).map_err(self.err())?;
        let mut out = Vec::new();
        for row in table.iter().map_err(self.err())? {
            out.push(*row.map_err(self.err())?.0.value());
        }
        Ok(out)
    }

    /// Drops sealed-chunk entries whose chunk is not in `keep`; returns how many.
    pub(super) fn forget_sealed_except(&self, keep: &HashSet<ChunkId>) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(self.err())?;
        let forgotten = {
            let mut table = txn.open_table(SEALED).map_err(self.err())?;
            let before = table.len().map_err(self.err())?;
            table.retain(|_, id| keep.contains(&ChunkId(*id))).map_err(self.err())?;
            before - table.len().map_err(self.err())?
        };
        txn.commit().map_err(self.err())?;
        Ok(forgotten)
    }

    fn err<E: Into<redb::Error>>(&self) -> impl FnOnce(E) -> StoreError + use<E> {
        db_err(&self.path)
    }

    fn decode_pin(&self, bytes: &[u8]) -> Result<PinRecord, StoreError> {
        postcard::from_bytes(bytes)
            .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: format!("pin record: {e}") })
    }
}

fn db_err<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> StoreError + use<E> {
    let path = path.to_owned();
    move |e| StoreError::Db { path, source: Box::new(e.into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn refcounts_follow_pins_and_unpins() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        let owner = OwnerId([0; 32]);
        let (m1, m2) = (ManifestId([1; 32]), ManifestId([2; 32]));
        let pin1 = PinRecord { owner, chunks: vec![chunk(1), chunk(2), chunk(2)] };
        let pin2 = PinRecord { owner, chunks: vec![chunk(2), chunk(3)] };
        meta.commit(&[], &[(m1, pin1.clone()), (m2, pin2)], &[], &[]).unwrap();
        // Pinning again is idempotent.
        meta.commit(&[], &[(m1, pin1)], &[], &[]).unwrap();
        let all: HashSet<_> = [chunk(1), chunk(2), chunk(3)].into();
        assert_eq!(meta.referenced_chunks().unwrap(), all);

        meta.commit(&[], &[], &[m1], &[]).unwrap();
        let left: HashSet<_> = [chunk(2), chunk(3)].into();
        assert_eq!(meta.referenced_chunks().unwrap(), left);
        meta.commit(&[], &[], &[m2, m2], &[]).unwrap();
        assert!(meta.referenced_chunks().unwrap().is_empty());
        assert!(meta.pinned_manifests().unwrap().is_empty());
    }

    #[test]
    fn sealed_map_forgets_collected_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        meta.commit(&[], &[], &[], &[([1; 32], chunk(1)), ([2; 32], chunk(2))]).unwrap();
        assert_eq!(meta.lookup_sealed(&[1; 32]).unwrap(), Some(chunk(1)));
        assert_eq!(meta.forget_sealed_except(&[chunk(2)].into()).unwrap(), 1);
        assert_eq!(meta.lookup_sealed(&[1; 32]).unwrap(), None);
        assert_eq!(meta.lookup_sealed(&[2; 32]).unwrap(), Some(chunk(2)));
    }

    #[test]
    fn the_log_is_read_back_in_bounded_batches() {
        use crate::crypto::OwnerKeys;
        use crate::manifest::log::{LogOp, LogRecord};

        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        let owner = OwnerKeys::derive(&[1; 32]);
        let mut prev = [0; 32];
        let mut encoded = Vec::new();
        for seq in 0..5u8 {
            let record = LogRecord { time_ms: 0, op: LogOp::Remove { manifest: ManifestId([seq; 32]) } };
            let entry = LogEntry::seal(&owner, u64::from(seq), prev, &record, [seq; 24]);
            assert_eq!(meta.append_log(&entry).unwrap(), Appended::Appended);
            assert_eq!(meta.append_log(&entry).unwrap(), Appended::AlreadyHeld);
            prev = entry.hash();
            encoded.push(entry.encode());
        }
        let id = owner.owner_id();
        assert_eq!(meta.log_from(&id, 0, 2, usize::MAX).unwrap(), (encoded[..2].to_vec(), true));
        assert_eq!(meta.log_from(&id, 2, 2, usize::MAX).unwrap(), (encoded[2..4].to_vec(), true));
        assert_eq!(meta.log_from(&id, 4, 2, usize::MAX).unwrap(), (encoded[4..].to_vec(), false));
        // A byte budget smaller than one entry still returns one, so a reader makes progress.
        assert_eq!(meta.log_from(&id, 1, 9, 1).unwrap(), (encoded[1..2].to_vec(), true));
        assert_eq!(meta.log_from(&id, 5, 9, usize::MAX).unwrap(), (vec![], false));
        assert_eq!(meta.log(&id).unwrap().len(), 5);
    }
}
