//! The metadata database (redb): log entries, pins with chunk refcounts, and
//! the map from a sealed chunk's key tag to its id.
//!
//! Tables (docs/FORMAT.md, "Metadata database"):
//! - `log`: (OwnerId, seq) → encoded `LogEntry`
//! - `owner_pins`: (OwnerId, ManifestId) → the chunk ids that pin keeps (32 bytes each)
//! - `pin_signatures`: (OwnerId, ManifestId) → the owner's 64-byte signature of the `Pin`,
//!   for an erasure pin K and M (one byte each), and the chunk (or shard) ids as signed, so repair can hand the exact signed pin to a new holder
//! - `unpinned`: (OwnerId, ManifestId) → (): the owner unpinned it; it is never pinned again
//! - `refs`: ChunkId → number of pins that need it (rows at zero are deleted)
//! - `owner_refs`: (OwnerId, ChunkId) → number of that owner's pins that need it
//!   (rows at zero are deleted): what each owner's pins keep, for usage per owner
//! - `sealed`: BLAKE3(chunk key) → ChunkId, so a push skips sealing chunks it has sealed before
//! - `heads`: OwnerId → the newest signed log entry a peer sent (`PutHead`), for any owner
//!
//! A pin belongs to its owner: two owners pinning one manifest id hold two
//! pins, and neither can touch the other's. Checking and changing a pin is
//! one write transaction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{
    Database, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::db::{Db, Txn, db_err};
use crate::id::{ChunkId, ManifestId, OwnerId};
use crate::manifest::log::LogEntry;

type PinKey<'a> = (&'a [u8; 32], &'a [u8; 32]);

const LOG: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("log");
const OWNER_PINS: TableDefinition<PinKey, &[u8]> = TableDefinition::new("owner_pins");
const UNPINNED: TableDefinition<PinKey, ()> = TableDefinition::new("unpinned");
const PIN_SIGNATURES: TableDefinition<PinKey, &[u8]> = TableDefinition::new("pin_signatures");
const REFS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("refs");
const OWNER_REFS: TableDefinition<PinKey, u64> = TableDefinition::new("owner_refs");
const SEALED: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("sealed");
const HEADS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("heads");
/// Pins keyed by manifest alone, as stores before owner-keyed pins kept them;
/// migrated into `owner_pins` when such a store is opened.
const LEGACY_PINS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("pins");

/// An owner's promise to keep one manifest's chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRecord {
    /// Who pinned it.
    pub owner: OwnerId,
    /// What is pinned.
    pub manifest: ManifestId,
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

/// A held pin and, when the owner's signed `Pin` brought it, that `Pin` as
/// signed (a pin recorded locally, or kept by a store from before
/// signatures were stored, has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPin {
    /// The pin (its chunks distinct, in id order).
    pub record: PinRecord,
    /// The owner's signed `Pin` of it, if held.
    pub signed: Option<SignedPin>,
}

/// What an owner signed to pin a manifest: enough to send the same `Pin` again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPin {
    /// The owner's signature over `wire::pin_message(owner, manifest, chunks)`.
    pub signature: [u8; 64],
    /// The chunk ids in the order (and with the repeats) signed: for an
    /// erasure-coded manifest, the shard ids, K + M per stripe.
    pub chunks: Vec<ChunkId>,
    /// For an erasure-coded manifest, K and M as signed (`wire::Pin::erasure`).
    pub erasure: Option<[u8; 2]>,
}

/// What [`Meta::pin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// The pin is new; its chunks are counted.
    New,
    /// That owner already pinned that manifest; nothing changed.
    AlreadyHeld,
    /// That owner unpinned that manifest before: the pin is refused, so a
    /// replayed `Pin` cannot bring back what its owner removed.
    Revoked,
}

/// A pin as stores before owner-keyed pins encoded it (postcard).
#[derive(Deserialize, Serialize)]
struct LegacyPin {
    owner: OwnerId,
    chunks: Vec<ChunkId>,
}

/// What a garbage collection found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Chunk files looked at.
    pub chunks_examined: u64,
    /// Chunk files deleted: no pin needs them and they are older than the grace.
    pub chunks_deleted: u64,
    /// Chunk files no pin needs that were kept because they were written or
    /// asked about within the grace (a push in flight may pin them yet).
    pub chunks_spared: u64,
    /// Manifest envelopes deleted.
    pub manifests_deleted: u64,
    /// Bytes of files deleted.
    pub bytes_freed: u64,
    /// Sealed-chunk map entries dropped because their chunk is gone.
    pub sealed_entries_forgotten: u64,
}

/// The chunks one owner's pins keep on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerUsage {
    /// The owner.
    pub owner: OwnerId,
    /// Distinct chunks its pins reference that are on this node.
    pub chunks: u64,
    /// Their bytes on disk.
    pub bytes: u64,
}

/// The metadata database, held open or opened for each transaction.
pub struct Meta {
    db: Db,
    path: PathBuf,
}

/// The page cache of a database this process holds open (a node, `gc`):
/// redb's default is 1 GiB, which a node walking a large store (a
/// collection, usage per owner) would fill; the tables' hot pages fit in this.
const CACHE_SIZE: usize = 32 << 20;

/// How long a command sharing the store waits for another one's transaction
/// by default; `--wait` waits as long as it takes.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

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
    /// Opens or creates the database and its tables, migrating pins of an
    /// older store (keyed by manifest alone) to owner-keyed pins.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder().set_cache_size(CACHE_SIZE).create(path).map_err(db_err(path))?;
        let meta = Self { db: Db::held(db, path), path: path.to_owned() };
        meta.create_tables()?;
        Ok(meta)
    }

    /// Opens the database to be shared with other processes: each
    /// transaction opens the file (waiting up to `patience` for another
    /// process's transaction to end) and closes it after. A `writable` one
    /// creates the tables and migrates an older store first; a read-only one
    /// never writes, so it works on a read-only disk.
    pub(super) fn open_shared(path: &Path, writable: bool, patience: Duration) -> Result<Self, StoreError> {
        let meta = Self { db: Db::per_transaction(path, writable, patience), path: path.to_owned() };
        if writable {
            meta.create_tables()?;
        } else {
            drop(meta.read()?);
        }
        Ok(meta)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let meta = self;
        let txn = meta.write()?;
        txn.open_table(LOG).map_err(meta.err())?;
        txn.open_table(OWNER_PINS).map_err(meta.err())?;
        txn.open_table(UNPINNED).map_err(meta.err())?;
        txn.open_table(PIN_SIGNATURES).map_err(meta.err())?;
        txn.open_table(REFS).map_err(meta.err())?;
        txn.open_table(SEALED).map_err(meta.err())?;
        txn.open_table(HEADS).map_err(meta.err())?;
        let owner_refs_missing = !txn.list_tables().map_err(meta.err())?.any(|t| t.name() == OWNER_REFS.name());
        txn.open_table(OWNER_REFS).map_err(meta.err())?;
        meta.migrate_legacy_pins(&txn)?;
        if owner_refs_missing {
            meta.count_owner_refs(&txn)?;
        }
        txn.commit().map_err(meta.err())
    }

    fn read(&self) -> Result<Txn<ReadTransaction>, StoreError> {
        self.db.read()
    }

    fn write(&self) -> Result<Txn<WriteTransaction>, StoreError> {
        self.db.write()
    }

    /// Moves every row of the old `pins` table to `owner_pins`; refcounts
    /// stay as they are (one pin, one count), then drops the old table.
    fn migrate_legacy_pins(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let legacy = txn.list_tables().map_err(self.err())?.any(|t| t.name() == LEGACY_PINS.name());
        if !legacy {
            return Ok(());
        }
        {
            let old = txn.open_table(LEGACY_PINS).map_err(self.err())?;
            let mut pins = txn.open_table(OWNER_PINS).map_err(self.err())?;
            for row in old.iter().map_err(self.err())? {
                let (manifest, value) = row.map_err(self.err())?;
                let pin: LegacyPin = postcard::from_bytes(value.value())
                    .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: format!("pin record: {e}") })?;
                let record =
                    PinRecord { owner: pin.owner, manifest: ManifestId(*manifest.value()), chunks: pin.chunks };
                let ids = encode_ids(&record.distinct_chunks());
                pins.insert((record.owner.as_bytes(), record.manifest.as_bytes()), ids.as_slice())
                    .map_err(self.err())?;
            }
        }
        txn.delete_table(LEGACY_PINS).map_err(self.err())?;
        Ok(())
    }

    /// Fills `owner_refs` from the pins, for a store made before that table.
    fn count_owner_refs(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let pins = txn.open_table(OWNER_PINS).map_err(self.err())?;
        let mut owner_refs = txn.open_table(OWNER_REFS).map_err(self.err())?;
        for row in pins.iter().map_err(self.err())? {
            let (key, ids) = row.map_err(self.err())?;
            let owner = key.value().0;
            for chunk in self.decode_ids(ids.value())? {
                let count = owner_refs.get((owner, chunk.as_bytes())).map_err(self.err())?.map_or(0, |c| c.value());
                owner_refs.insert((owner, chunk.as_bytes()), count + 1).map_err(self.err())?;
            }
        }
        Ok(())
    }

    /// The log entries of `owner` from sequence number `from` on, in
    /// order (unverified: the history index checks them).
    pub fn log(&self, owner: &OwnerId, from: u64) -> Result<Vec<LogEntry>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(LOG).map_err(self.err())?;
        let mut out = Vec::new();
        for row in table.range((owner.as_bytes(), from)..=(owner.as_bytes(), u64::MAX)).map_err(self.err())? {
            let (key, value) = row.map_err(self.err())?;
            out.push(self.decode_entry(key.value().1, value.value())?);
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
        let txn = self.read()?;
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
    /// and it names that entry's hash. It becomes the owner's head in the
    /// same transaction.
    pub fn append_log(&self, entry: &LogEntry) -> Result<Appended, StoreError> {
        let owner = entry.owner.as_bytes();
        let encoded = entry.encode();
        let txn = self.write()?;
        let appended = {
            let mut table = txn.open_table(LOG).map_err(self.err())?;
            let (next, prev) = self.log_tail(&table, &entry.owner)?;
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
        self.put_head_in(&txn, entry)?;
        txn.commit().map_err(self.err())?;
        Ok(appended)
    }

    /// Replaces `owner`'s log from sequence number `from` on with `entries`
    /// (already verified as one chain with what precedes `from`), in one
    /// transaction: how a home's copy takes the log its peers hold when the
    /// two went apart. Pins are untouched.
    pub fn replace_log(&self, owner: &OwnerId, from: u64, entries: &[LogEntry]) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut table = txn.open_table(LOG).map_err(self.err())?;
            let key = owner.as_bytes();
            table.retain_in((key, from)..=(key, u64::MAX), |_, _| false).map_err(self.err())?;
            for (seq, entry) in (from..).zip(entries) {
                debug_assert_eq!(entry.seq, seq, "entries are consecutive from `from`");
                table.insert((key, seq), entry.encode().as_slice()).map_err(self.err())?;
            }
            if let Some(last) = entries.last() {
                drop(table);
                self.put_head_in(&txn, last)?;
            }
        }
        txn.commit().map_err(self.err())
    }

    /// The sequence number the next entry of `owner`'s log must have, and
    /// the hash it must name.
    fn log_tail(
        &self,
        table: &impl ReadableTable<(&'static [u8; 32], u64), &'static [u8]>,
        owner: &OwnerId,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        let owner = owner.as_bytes();
        match table.range((owner, 0)..=(owner, u64::MAX)).map_err(self.err())?.next_back() {
            Some(row) => {
                let (key, value) = row.map_err(self.err())?;
                let seq = key.value().1;
                Ok((seq + 1, self.decode_entry(seq, value.value())?.hash()))
            }
            None => Ok((0, [0; 32])),
        }
    }

    /// How many pins are held, over every owner.
    pub fn pin_count(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(OWNER_PINS).map_err(self.err())?;
        table.len().map_err(self.err())
    }

    /// The id of the chunk sealed under a key with this tag, if one was.
    pub fn lookup_sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SEALED).map_err(self.err())?;
        Ok(table.get(tag).map_err(self.err())?.map(|id| ChunkId(*id.value())))
    }

    /// The newest log entry held for `owner` from `PutHead`, encoded.
    pub fn head(&self, owner: &OwnerId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(HEADS).map_err(self.err())?;
        Ok(table.get(owner.as_bytes()).map_err(self.err())?.map(|v| v.value().to_vec()))
    }

    /// Keeps `entry` (already signature-checked) as its owner's head if its
    /// sequence number is higher than the held one's; returns whether it did.
    pub fn put_head(&self, entry: &LogEntry) -> Result<bool, StoreError> {
        let txn = self.write()?;
        let newer = self.put_head_in(&txn, entry)?;
        txn.commit().map_err(self.err())?;
        Ok(newer)
    }

    fn put_head_in(&self, txn: &WriteTransaction, entry: &LogEntry) -> Result<bool, StoreError> {
        let mut table = txn.open_table(HEADS).map_err(self.err())?;
        let held = match table.get(entry.owner.as_bytes()).map_err(self.err())? {
            Some(bytes) => Some(self.decode_entry(0, bytes.value())?.seq),
            None => None,
        };
        let newer = held.is_none_or(|seq| entry.seq > seq);
        if newer {
            table.insert(entry.owner.as_bytes(), entry.encode().as_slice()).map_err(self.err())?;
        }
        Ok(newer)
    }

    /// `owner`'s pin of `manifest`, if it holds one: the chunks it keeps.
    pub fn pin_of(&self, owner: &OwnerId, manifest: &ManifestId) -> Result<Option<Vec<ChunkId>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(OWNER_PINS).map_err(self.err())?;
        let row = table.get((owner.as_bytes(), manifest.as_bytes())).map_err(self.err())?;
        row.map(|ids| self.decode_ids(ids.value())).transpose()
    }

    /// Pins (checking for an earlier unpin and counting the chunks) in one
    /// durable transaction, and says what it did.
    pub fn pin(&self, pin: &PinRecord) -> Result<Pinned, StoreError> {
        let txn = self.write()?;
        let pinned = self.pin_in(&txn, pin)?;
        txn.commit().map_err(self.err())?;
        Ok(pinned)
    }

    /// [`Meta::pin`] for a pin that came with its owner's signed `Pin`
    /// (checked by the caller), which is kept with it: `signed.chunks` are
    /// the ids as signed (for an erasure pin, each stripe's chunk id and
    /// then its shards; `pin.chunks` are the shards alone). A pin held
    /// already without a signature gains this one.
    pub fn pin_signed(&self, pin: &PinRecord, signed: &SignedPin) -> Result<Pinned, StoreError> {
        let txn = self.write()?;
        let pinned = self.pin_in(&txn, pin)?;
        if pinned != Pinned::Revoked {
            let key = (pin.owner.as_bytes(), pin.manifest.as_bytes());
            let mut signatures = txn.open_table(PIN_SIGNATURES).map_err(self.err())?;
            if signatures.get(key).map_err(self.err())?.is_none() {
                let code: &[u8] = match &signed.erasure {
                    Some(code) => code,
                    None => &[],
                };
                let value = [signed.signature.as_slice(), code, &encode_ids(&signed.chunks)].concat();
                signatures.insert(key, value.as_slice()).map_err(self.err())?;
            }
        }
        txn.commit().map_err(self.err())?;
        Ok(pinned)
    }

    /// Held pins in key order (owner, then manifest), from the one after
    /// `after` (from the first with `None`): at most `max_pins` of them and
    /// `max_ids` chunk ids, signed lists included (but at least one pin, if
    /// there is one), so a walk over every pin holds one batch in memory at
    /// a time.
    pub fn pins_after(
        &self,
        after: Option<(OwnerId, ManifestId)>,
        max_pins: usize,
        max_ids: usize,
    ) -> Result<Vec<StoredPin>, StoreError> {
        let txn = self.read()?;
        let pins = txn.open_table(OWNER_PINS).map_err(self.err())?;
        let signatures = txn.open_table(PIN_SIGNATURES).map_err(self.err())?;
        let rows = match &after {
            Some((owner, manifest)) => pins.range((owner.as_bytes(), manifest.as_bytes())..),
            None => pins.range::<PinKey>(..),
        }
        .map_err(self.err())?;
        let (mut out, mut ids) = (Vec::new(), 0);
        for row in rows {
            let (key, value) = row.map_err(self.err())?;
            let (owner, manifest) = key.value();
            let (owner, manifest) = (OwnerId(*owner), ManifestId(*manifest));
            if after.is_some_and(|a| a == (owner, manifest)) {
                continue;
            }
            let chunks = self.decode_ids(value.value())?;
            let signed = match signatures.get((owner.as_bytes(), manifest.as_bytes())).map_err(self.err())? {
                Some(value) => Some(self.decode_signed(value.value())?),
                None => None,
            };
            let len = chunks.len() + signed.as_ref().map_or(0, |s| s.chunks.len());
            if !out.is_empty() && (out.len() >= max_pins || ids + len > max_ids) {
                break;
            }
            ids += len;
            out.push(StoredPin { record: PinRecord { owner, manifest, chunks }, signed });
        }
        Ok(out)
    }

    /// Whether `owner` unpinned `manifest` here (a tombstone is held).
    pub fn is_unpinned(&self, owner: &OwnerId, manifest: &ManifestId) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(UNPINNED).map_err(self.err())?;
        Ok(table.get((owner.as_bytes(), manifest.as_bytes())).map_err(self.err())?.is_some())
    }

    /// Removes `owner`'s pin of `manifest` (uncounting its chunks) and keeps
    /// a tombstone so that it is never pinned again, in one durable
    /// transaction. Returns whether a pin was held (with none, nothing changes).
    pub fn unpin(&self, owner: &OwnerId, manifest: &ManifestId) -> Result<bool, StoreError> {
        let txn = self.write()?;
        let held = self.unpin_in(&txn, owner, manifest)?;
        txn.commit().map_err(self.err())?;
        Ok(held)
    }

    fn pin_in(&self, txn: &WriteTransaction, pin: &PinRecord) -> Result<Pinned, StoreError> {
        let key = (pin.owner.as_bytes(), pin.manifest.as_bytes());
        if txn.open_table(UNPINNED).map_err(self.err())?.get(key).map_err(self.err())?.is_some() {
            return Ok(Pinned::Revoked);
        }
        let mut pins = txn.open_table(OWNER_PINS).map_err(self.err())?;
        if pins.get(key).map_err(self.err())?.is_some() {
            return Ok(Pinned::AlreadyHeld);
        }
        let chunks = pin.distinct_chunks();
        pins.insert(key, encode_ids(&chunks).as_slice()).map_err(self.err())?;
        let mut refs = txn.open_table(REFS).map_err(self.err())?;
        let mut owner_refs = txn.open_table(OWNER_REFS).map_err(self.err())?;
        for chunk in chunks {
            let count = refs.get(chunk.as_bytes()).map_err(self.err())?.map_or(0, |c| c.value());
            refs.insert(chunk.as_bytes(), count + 1).map_err(self.err())?;
            let key = (pin.owner.as_bytes(), chunk.as_bytes());
            let count = owner_refs.get(key).map_err(self.err())?.map_or(0, |c| c.value());
            owner_refs.insert(key, count + 1).map_err(self.err())?;
        }
        Ok(Pinned::New)
    }

    fn unpin_in(&self, txn: &WriteTransaction, owner: &OwnerId, manifest: &ManifestId) -> Result<bool, StoreError> {
        let key = (owner.as_bytes(), manifest.as_bytes());
        let mut pins = txn.open_table(OWNER_PINS).map_err(self.err())?;
        // Only a pin that was held leaves a tombstone: an unpin of nothing
        // must not let anyone grow the table with made-up owners.
        let Some(ids) = pins.remove(key).map_err(self.err())? else { return Ok(false) };
        txn.open_table(UNPINNED).map_err(self.err())?.insert(key, ()).map_err(self.err())?;
        txn.open_table(PIN_SIGNATURES).map_err(self.err())?.remove(key).map_err(self.err())?;
        let chunks = self.decode_ids(ids.value())?;
        drop(ids);
        let mut refs = txn.open_table(REFS).map_err(self.err())?;
        let mut owner_refs = txn.open_table(OWNER_REFS).map_err(self.err())?;
        for chunk in chunks {
            let count = refs.get(chunk.as_bytes()).map_err(self.err())?.map_or(0, |c| c.value());
            if count > 1 {
                refs.insert(chunk.as_bytes(), count - 1).map_err(self.err())?;
            } else {
                refs.remove(chunk.as_bytes()).map_err(self.err())?;
            }
            let key = (owner.as_bytes(), chunk.as_bytes());
            let count = owner_refs.get(key).map_err(self.err())?.map_or(0, |c| c.value());
            if count > 1 {
                owner_refs.insert(key, count - 1).map_err(self.err())?;
            } else {
                owner_refs.remove(key).map_err(self.err())?;
            }
        }
        Ok(true)
    }

    /// Applies one atomic, durable change: append log entries, add pins
    /// (counting their chunks), remove pins (uncounting them, and keeping
    /// their tombstones), and remember sealed chunks. Adding a pin that
    /// exists, or removing one that does not, changes nothing; adding one
    /// its owner removed before fails and changes nothing.
    pub fn commit(
        &self,
        log: &[LogEntry],
        pins: &[PinRecord],
        unpins: &[(OwnerId, ManifestId)],
        sealed: &[([u8; 32], ChunkId)],
    ) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut log_table = txn.open_table(LOG).map_err(self.err())?;
            for entry in log {
                let (next, prev) = self.log_tail(&log_table, &entry.owner)?;
                if entry.seq != next || entry.prev != prev {
                    drop(log_table);
                    txn.abort().map_err(self.err())?;
                    return Err(StoreError::LogConflict { owner: entry.owner, held: next });
                }
                log_table.insert((entry.owner.as_bytes(), entry.seq), entry.encode().as_slice()).map_err(self.err())?;
            }
        }
        for pin in pins {
            if self.pin_in(&txn, pin)? == Pinned::Revoked {
                txn.abort().map_err(self.err())?;
                return Err(StoreError::PinRevoked(pin.manifest));
            }
        }
        for (owner, manifest) in unpins {
            self.unpin_in(&txn, owner, manifest)?;
        }
        {
            let mut sealed_table = txn.open_table(SEALED).map_err(self.err())?;
            for (tag, id) in sealed {
                sealed_table.insert(tag, id.as_bytes()).map_err(self.err())?;
            }
        }
        txn.commit().map_err(self.err())
    }

    /// Which of `ids` at least one pin needs, in one read transaction.
    pub fn referenced(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(REFS).map_err(self.err())?;
        ids.iter().map(|id| Ok(table.get(id.as_bytes()).map_err(self.err())?.is_some())).collect()
    }

    /// Removes from `manifests` every one some owner pins, in one read
    /// transaction that walks the pins (whose keys are by owner first).
    pub fn drop_pinned(&self, manifests: &mut HashSet<ManifestId>) -> Result<(), StoreError> {
        if manifests.is_empty() {
            return Ok(());
        }
        let txn = self.read()?;
        let table = txn.open_table(OWNER_PINS).map_err(self.err())?;
        for row in table.iter().map_err(self.err())? {
            manifests.remove(&ManifestId(*row.map_err(self.err())?.0.value().1));
            if manifests.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Every chunk at least one pin needs (for the tests: a whole set).
    #[cfg(test)]
    pub fn referenced_chunks(&self) -> Result<HashSet<ChunkId>, StoreError> {
        Ok(self.refcounts()?.into_keys().collect())
    }

    /// Every manifest at least one owner pins (for the tests: a whole set).
    #[cfg(test)]
    pub fn pinned_manifests(&self) -> Result<HashSet<ManifestId>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(OWNER_PINS).map_err(self.err())?;
        let mut out = HashSet::new();
        for row in table.iter().map_err(self.err())? {
            out.insert(ManifestId(*row.map_err(self.err())?.0.value().1));
        }
        Ok(out)
    }

    /// The chunks each owner's pins keep and their bytes, by owner: one walk
    /// over `owner_refs` in one read transaction, asking `chunk_len` for the
    /// size of each chunk (`None`: not on this node, not counted). A chunk
    /// two owners pin counts in full for each; one a single owner pins in
    /// several versions counts once.
    pub fn owner_usage(&self, chunk_len: impl Fn(&ChunkId) -> Option<u64>) -> Result<Vec<OwnerUsage>, StoreError> {
        let txn = self.read()?;
        let table = match txn.open_table(OWNER_REFS) {
            Ok(table) => table,
            // A store made before the table, opened read-only: it is filled
            // the first time the store is opened writable.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err()(e)),
        };
        let mut out: Vec<OwnerUsage> = Vec::new();
        for row in table.iter().map_err(self.err())? {
            let (key, _) = row.map_err(self.err())?;
            let (owner, chunk) = key.value();
            let owner = OwnerId(*owner);
            if out.last().is_none_or(|last| last.owner != owner) {
                out.push(OwnerUsage { owner, chunks: 0, bytes: 0 });
            }
            if let (Some(len), Some(usage)) = (chunk_len(&ChunkId(*chunk)), out.last_mut()) {
                usage.chunks += 1;
                usage.bytes += len;
            }
        }
        Ok(out)
    }

    /// Forgets sealed-chunk entries whose chunk `is_gone` says is gone and
    /// no pin needs, looking at at most `batch` entries from the tag after
    /// `after` on (from the first, if `None`). Returns how many it forgot
    /// and where the next batch starts (`None`: the map has been walked).
    pub(super) fn forget_sealed_batch(
        &self,
        after: Option<[u8; 32]>,
        batch: usize,
        is_gone: impl Fn(&ChunkId) -> bool,
    ) -> Result<(u64, Option<[u8; 32]>), StoreError> {
        let (doomed, next) = {
            let txn = self.read()?;
            let sealed = txn.open_table(SEALED).map_err(self.err())?;
            let refs = txn.open_table(REFS).map_err(self.err())?;
            let mut rows = match &after {
                Some(tag) => sealed.range::<&[u8; 32]>((std::ops::Bound::Excluded(tag), std::ops::Bound::Unbounded)),
                None => sealed.range::<&[u8; 32]>(..),
            }
            .map_err(self.err())?;
            let (mut doomed, mut last, mut seen) = (Vec::new(), None, 0);
            for row in rows.by_ref() {
                let (tag, id) = row.map_err(self.err())?;
                let id = ChunkId(*id.value());
                if refs.get(id.as_bytes()).map_err(self.err())?.is_none() && is_gone(&id) {
                    doomed.push((*tag.value(), id));
                }
                last = Some(*tag.value());
                seen += 1;
                if seen == batch {
                    break;
                }
            }
            (doomed, if seen == batch { last } else { None })
        };
        if doomed.is_empty() {
            return Ok((0, next));
        }
        let txn = self.write()?;
        let mut forgotten = 0;
        {
            let mut sealed = txn.open_table(SEALED).map_err(self.err())?;
            let refs = txn.open_table(REFS).map_err(self.err())?;
            for (tag, id) in doomed {
                // Checked again in the write transaction: a pin may have come since.
                if refs.get(id.as_bytes()).map_err(self.err())?.is_none()
                    && sealed.remove(&tag).map_err(self.err())?.is_some()
                {
                    forgotten += 1;
                }
            }
        }
        txn.commit().map_err(self.err())?;
        Ok((forgotten, next))
    }

    /// Every chunk's refcount, as the `refs` table holds it (for the model checks).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn refcounts(&self) -> Result<std::collections::HashMap<ChunkId, u64>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(REFS).map_err(self.err())?;
        let mut out = std::collections::HashMap::new();
        for row in table.iter().map_err(self.err())? {
            let (id, count) = row.map_err(self.err())?;
            out.insert(ChunkId(*id.value()), count.value());
        }
        Ok(out)
    }

    /// Every (owner, manifest) tombstone of an unpin (for the model checks).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn tombstones(&self) -> Result<HashSet<(OwnerId, ManifestId)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(UNPINNED).map_err(self.err())?;
        let mut out = HashSet::new();
        for row in table.iter().map_err(self.err())? {
            let (key, _) = row.map_err(self.err())?;
            let (owner, manifest) = key.value();
            out.insert((OwnerId(*owner), ManifestId(*manifest)));
        }
        Ok(out)
    }

    fn err<E: Into<redb::Error>>(&self) -> impl FnOnce(E) -> StoreError + use<E> {
        db_err(&self.path)
    }

    fn decode_entry(&self, seq: u64, bytes: &[u8]) -> Result<LogEntry, StoreError> {
        LogEntry::decode(seq, bytes).map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: e.to_string() })
    }

    fn decode_signed(&self, bytes: &[u8]) -> Result<SignedPin, StoreError> {
        let Some((signature, ids)) = bytes.split_first_chunk::<64>() else {
            let reason = format!("a pin signature row of {} bytes is shorter than a signature", bytes.len());
            return Err(StoreError::Corrupt { path: self.path.clone(), reason });
        };
        // An erasure pin's row has K and M (two bytes) before the ids.
        let (erasure, ids) = match ids.len() % 32 {
            2 => (Some([ids[0], ids[1]]), &ids[2..]),
            _ => (None, ids),
        };
        Ok(SignedPin { signature: *signature, chunks: self.decode_ids(ids)?, erasure })
    }

    fn decode_ids(&self, bytes: &[u8]) -> Result<Vec<ChunkId>, StoreError> {
        if !bytes.len().is_multiple_of(32) {
            let reason = format!("a pin's chunk list of {} bytes is not a whole number of ids", bytes.len());
            return Err(StoreError::Corrupt { path: self.path.clone(), reason });
        }
        Ok(bytes.chunks_exact(32).map(|id| ChunkId(id.try_into().expect("chunks_exact yields 32 bytes"))).collect())
    }
}

fn encode_ids(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| *id.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn meta() -> (tempfile::TempDir, Meta) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        (dir, meta)
    }

    fn pin(owner: u8, manifest: u8, chunks: &[u8]) -> PinRecord {
        PinRecord {
            owner: OwnerId([owner; 32]),
            manifest: ManifestId([manifest; 32]),
            chunks: chunks.iter().map(|&c| chunk(c)).collect(),
        }
    }

    #[test]
    fn refcounts_follow_pins_and_unpins() {
        let (_dir, meta) = meta();
        let (pin1, pin2) = (pin(0, 1, &[1, 2, 2]), pin(0, 2, &[2, 3]));
        meta.commit(&[], &[pin1.clone(), pin2.clone()], &[], &[]).unwrap();
        // Pinning again is idempotent.
        meta.commit(&[], std::slice::from_ref(&pin1), &[], &[]).unwrap();
        let all: HashSet<_> = [chunk(1), chunk(2), chunk(3)].into();
        assert_eq!(meta.referenced_chunks().unwrap(), all);

        meta.commit(&[], &[], &[(pin1.owner, pin1.manifest)], &[]).unwrap();
        let left: HashSet<_> = [chunk(2), chunk(3)].into();
        assert_eq!(meta.referenced_chunks().unwrap(), left);
        meta.commit(&[], &[], &[(pin2.owner, pin2.manifest), (pin2.owner, pin2.manifest)], &[]).unwrap();
        assert!(meta.referenced_chunks().unwrap().is_empty());
        assert!(meta.pinned_manifests().unwrap().is_empty());
    }

    #[test]
    fn two_owners_pinning_one_manifest_hold_two_pins_and_neither_touches_the_other() {
        let (_dir, meta) = meta();
        let (alice, mallory) = (pin(1, 9, &[1, 2]), pin(2, 9, &[1, 2]));
        assert_eq!(meta.pin(&mallory).unwrap(), Pinned::New, "the squatter pins first");
        assert_eq!(meta.pin(&alice).unwrap(), Pinned::New, "the owner's pin is its own, not skipped");
        assert_eq!(meta.pin_count().unwrap(), 2);
        assert!(meta.unpin(&mallory.owner, &mallory.manifest).unwrap());
        assert_eq!(meta.pin_of(&alice.owner, &alice.manifest).unwrap(), Some(vec![chunk(1), chunk(2)]));
        assert_eq!(meta.referenced_chunks().unwrap(), [chunk(1), chunk(2)].into());
    }

    #[test]
    fn an_unpinned_manifest_is_never_pinned_again() {
        let (_dir, meta) = meta();
        let p = pin(1, 9, &[1]);
        assert_eq!(meta.pin(&p).unwrap(), Pinned::New);
        assert_eq!(meta.pin(&p).unwrap(), Pinned::AlreadyHeld);
        assert!(meta.unpin(&p.owner, &p.manifest).unwrap());
        assert_eq!(meta.pin(&p).unwrap(), Pinned::Revoked, "a replayed pin after its unpin");
        assert!(meta.referenced_chunks().unwrap().is_empty());
        assert!(matches!(meta.commit(&[], std::slice::from_ref(&p), &[], &[]), Err(StoreError::PinRevoked(_))));
        // An unpin of a pin never held leaves nothing behind.
        let never = pin(1, 8, &[2]);
        assert!(!meta.unpin(&never.owner, &never.manifest).unwrap());
        assert_eq!(meta.pin(&never).unwrap(), Pinned::New);
    }

    fn signature(pin: &PinRecord, byte: u8, erasure: Option<[u8; 2]>) -> SignedPin {
        SignedPin { signature: [byte; 64], chunks: pin.chunks.clone(), erasure }
    }

    #[test]
    fn a_signed_pin_keeps_its_signature_until_unpinned_and_pins_are_walked_in_batches() {
        let (_dir, meta) = meta();
        let (signed, plain, other) = (pin(1, 1, &[2, 1, 2]), pin(1, 2, &[3]), pin(2, 1, &[1]));
        assert_eq!(meta.pin_signed(&signed, &signature(&signed, 7, None)).unwrap(), Pinned::New);
        assert_eq!(meta.pin(&plain).unwrap(), Pinned::New);
        assert_eq!(meta.pin_signed(&other, &signature(&other, 9, Some([4, 2]))).unwrap(), Pinned::New);
        // A second signature of a held pin does not replace the first.
        assert_eq!(meta.pin_signed(&signed, &signature(&signed, 8, None)).unwrap(), Pinned::AlreadyHeld);

        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let batch = meta.pins_after(after, 2, 1).unwrap();
            assert!(batch.len() <= 1, "one pin per batch when a pin has more ids than the budget");
            let Some(last) = batch.last() else { break };
            after = Some((last.record.owner, last.record.manifest));
            walked.extend(batch);
        }
        let got: Vec<_> = walked
            .iter()
            .map(|p| (p.record.clone(), p.signed.as_ref().map(|s| (s.signature, s.chunks.clone(), s.erasure))))
            .collect();
        let distinct = |p: &PinRecord| PinRecord { chunks: p.distinct_chunks(), ..p.clone() };
        assert_eq!(
            got,
            vec![
                (distinct(&signed), Some(([7; 64], signed.chunks.clone(), None))),
                (plain.clone(), None),
                (other.clone(), Some(([9; 64], other.chunks.clone(), Some([4, 2]))))
            ],
            "the signed list keeps its order and repeats, and an erasure pin its code"
        );
        assert_eq!(meta.pins_after(None, 10, 10).unwrap().len(), 3);

        assert!(meta.unpin(&signed.owner, &signed.manifest).unwrap());
        assert!(meta.is_unpinned(&signed.owner, &signed.manifest).unwrap());
        assert_eq!(
            meta.pin_signed(&signed, &signature(&signed, 7, None)).unwrap(),
            Pinned::Revoked,
            "a tombstone stays"
        );
        let left: Vec<_> = meta.pins_after(None, 10, 10).unwrap().into_iter().map(|p| p.record).collect();
        assert_eq!(left, vec![plain, other]);
        assert_eq!(meta.pin_count().unwrap(), 2);
    }

    #[test]
    fn pins_of_an_older_store_are_migrated_to_their_owners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut old = txn.open_table(LEGACY_PINS).unwrap();
                let record = LegacyPin { owner: OwnerId([4; 32]), chunks: vec![chunk(1), chunk(1), chunk(2)] };
                old.insert(&[9; 32], postcard::to_stdvec(&record).unwrap().as_slice()).unwrap();
                let mut refs = txn.open_table(REFS).unwrap();
                refs.insert(chunk(1).as_bytes(), 1).unwrap();
                refs.insert(chunk(2).as_bytes(), 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let meta = Meta::open(&path).unwrap();
        assert_eq!(meta.pin_of(&OwnerId([4; 32]), &ManifestId([9; 32])).unwrap(), Some(vec![chunk(1), chunk(2)]));
        assert_eq!(meta.pinned_manifests().unwrap(), [ManifestId([9; 32])].into());
        let usage = meta.owner_usage(|_| Some(10)).unwrap();
        assert_eq!(usage, vec![OwnerUsage { owner: OwnerId([4; 32]), chunks: 2, bytes: 20 }], "owner_refs filled");
        assert!(meta.unpin(&OwnerId([4; 32]), &ManifestId([9; 32])).unwrap());
        assert!(meta.referenced_chunks().unwrap().is_empty(), "the migrated pin's counts come off cleanly");
        assert!(meta.owner_usage(|_| Some(10)).unwrap().is_empty());
        drop(meta);
        Meta::open(&path).unwrap();
    }

    #[test]
    fn sealed_map_forgets_collected_chunks() {
        let (_dir, meta) = meta();
        meta.commit(&[], &[], &[], &[([1; 32], chunk(1)), ([2; 32], chunk(2))]).unwrap();
        assert_eq!(meta.lookup_sealed(&[1; 32]).unwrap(), Some(chunk(1)));
        let gone = |id: &ChunkId| *id != chunk(2);
        // One entry at a time: the walk goes on after the tag it stopped at.
        assert_eq!(meta.forget_sealed_batch(None, 1, gone).unwrap(), (1, Some([1; 32])));
        assert_eq!(meta.forget_sealed_batch(Some([1; 32]), 1, gone).unwrap(), (0, Some([2; 32])));
        assert_eq!(meta.forget_sealed_batch(Some([2; 32]), 1, gone).unwrap(), (0, None));
        assert_eq!(meta.lookup_sealed(&[1; 32]).unwrap(), None);
        assert_eq!(meta.lookup_sealed(&[2; 32]).unwrap(), Some(chunk(2)));
    }

    #[test]
    fn the_log_is_read_back_in_bounded_batches() {
        use crate::crypto::OwnerKeys;
        use crate::manifest::log::{LogOp, LogRecord};

        let (_dir, meta) = meta();
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
        assert_eq!(meta.log(&id, 0).unwrap().len(), 5);
        assert_eq!(meta.head(&id).unwrap(), encoded.last().cloned(), "the last append is the head");
    }
}
