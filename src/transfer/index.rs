//! The owner's history, indexed: what the log says (names, their versions,
//! ids, removals), kept in the home's `history.redb` and brought up to date
//! one entry at a time, so a command costs the same at the hundred
//! thousandth version as at the tenth (docs/FORMAT.md, "History index").
//!
//! The log is the record; the index is derived from it. [`HistoryIndex::sync`]
//! asks a [`Catalog`] only for the entries after the last one indexed,
//! verifies each (the owner's signature, its place in the hash chain, its
//! sealed record) and folds it in. A log that is not an extension of what
//! was indexed (two machines of the owner rebased it, the home's copy was
//! replaced) is indexed again from its start: the one case that costs the
//! whole log, and the only one in which an index can shrink.
//!
//! Tables, all keyed by OwnerId first:
//! - `tips`: owner → [`Tip`]: how far the index reaches, and live totals
//! - `chain`: (owner, seq) → the entry's hash, to tell an extension from a rewrite
//! - `versions`: (owner, seq of its push) → a [`Version`]
//! - `by_name`: (owner, name, number) → seq
//! - `by_manifest`: (owner, manifest id, seq) → ()
//! - `names`: (owner, name) → [`NameRow`]: versions, live versions, the latest live one
//!
//! The index holds names in the clear: it is the owner's own file, in the
//! owner's home, beside the keys that open the log. Peers never see it.

use std::path::Path;
use std::time::Duration;

use redb::backends::InMemoryBackend;
use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::TransferError;
use super::catalog::Catalog;
use crate::crypto::{OwnerKeys, XNONCE_LEN};
use crate::id::{IdPrefix, ManifestId, OwnerId};
use crate::manifest::log::{EntryHash, LogEntry, LogError, LogOp, LogRecord, ResolveError, Version};
use crate::store::StoreError;
use crate::store::db::{Db, Txn};

/// The index file in a home.
pub const INDEX_FILE: &str = "history.redb";

type Owner<'a> = &'a [u8; 32];

const TIPS: TableDefinition<Owner, &[u8]> = TableDefinition::new("tips");
const CHAIN: TableDefinition<(Owner, u64), &[u8; 32]> = TableDefinition::new("chain");
const VERSIONS: TableDefinition<(Owner, u64), &[u8]> = TableDefinition::new("versions");
const BY_NAME: TableDefinition<(Owner, &str, u32), u64> = TableDefinition::new("by_name");
const BY_MANIFEST: TableDefinition<(Owner, &[u8; 32], u64), ()> = TableDefinition::new("by_manifest");
const NAMES: TableDefinition<(Owner, &str), &[u8]> = TableDefinition::new("names");

/// Rows read per transaction when walking versions, so a reader never
/// holds the file for long (`p2pfs log | less` pauses between pages).
pub const PAGE: usize = 256;

/// How far an owner's index reaches, and what is live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tip {
    /// Entries indexed: the sequence number the next one has.
    pub next_seq: u64,
    /// The hash of the last entry indexed (zeros for none).
    pub head: EntryHash,
    /// Versions ever pushed.
    pub versions: u64,
    /// Versions not removed.
    pub live_versions: u64,
    /// Their plaintext bytes.
    pub live_bytes: u64,
    /// Names with a live version.
    pub live_names: u64,
}

/// One name's row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRow {
    /// Versions ever pushed under it (the highest number).
    pub versions: u32,
    /// Versions not removed.
    pub live: u64,
    /// The number of the latest live version.
    pub latest_live: Option<u32>,
}

/// The home's history index (see the module doc).
pub struct HistoryIndex {
    db: Db,
    /// Why it is kept in memory, if it is and that is worth saying.
    degraded: Option<String>,
}

impl HistoryIndex {
    /// Opens (creating if needed) the index of the home at `home`, shared
    /// with other commands one transaction at a time. Where the file cannot
    /// be used (a read-only disk, a full one, a damaged file) the index is
    /// kept in memory, built anew by this command: it is derived from the
    /// log, so nothing is lost, only time. [`Self::degraded`] then says why,
    /// unless the home is simply read-only.
    pub fn open(home: &Path, patience: Duration) -> Self {
        let path = home.join(INDEX_FILE);
        let opened = match Database::create(&path) {
            Ok(db) => Self::create_tables(&db).map_err(|e| e.to_string()),
            // Another command has it open, so it was made.
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(()),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                tracing::debug!("keeping the history index in memory: {} cannot be written: {e}", path.display());
                return Self::in_memory(&path, None);
            }
            Err(e) => Err(e.to_string()),
        };
        match opened {
            Ok(()) => Self { db: Db::per_transaction(&path, true, patience), degraded: None },
            Err(e) => {
                let why = format!(
                    "the history index {} cannot be used ({e}): this command reads the whole log instead. Delete \
                     the file; the next command builds it again from the log",
                    path.display()
                );
                Self::in_memory(&path, Some(why))
            }
        }
    }

    /// Why the index is kept in memory, when that is worth saying.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    /// An index in memory, named after `path` in errors.
    pub fn in_memory_at(path: &Path) -> Self {
        Self::in_memory(path, None)
    }

    fn in_memory(path: &Path, degraded: Option<String>) -> Self {
        let db = Database::builder().create_with_backend(InMemoryBackend::new()).expect("a database in memory opens");
        Self::create_tables(&db).expect("tables in memory are made");
        Self { db: Db::held(db, path), degraded }
    }

    /// The index file (or the name the one in memory goes by).
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Makes the tables, unless they are there (a read costs no fsync).
    fn create_tables(db: &Database) -> Result<(), redb::Error> {
        use redb::ReadableDatabase;
        match db.begin_read()?.open_table(NAMES) {
            Ok(_) => return Ok(()),
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let txn = db.begin_write()?;
        txn.open_table(TIPS)?;
        txn.open_table(CHAIN)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(BY_NAME)?;
        txn.open_table(BY_MANIFEST)?;
        txn.open_table(NAMES)?;
        txn.commit()?;
        Ok(())
    }

    /// Brings `owner`'s index up to the log `source` holds, verifying and
    /// folding in only what it has not indexed yet, and returns the
    /// history as it now is. With `follow`, the index is made to say
    /// exactly what the source holds (a command that appends builds on
    /// it); without, an index that reaches past the source (it learned
    /// more from peers before) keeps what it knows.
    pub fn sync<'a>(
        &'a self,
        owner: &OwnerKeys,
        source: &dyn Catalog,
        follow: bool,
    ) -> Result<History<'a>, TransferError> {
        // Another command may index the same entries, or index a rewritten
        // log anew, between this one's reads: it then finds the chain
        // broken where it looks, and looks again.
        let mut attempts = 0;
        loop {
            match self.sync_once(owner, source, follow) {
                Err(TransferError::Log(LogError::Gap { .. } | LogError::BrokenChain(_))) if attempts < 2 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
                Ok(()) => return self.history(owner),
            }
        }
    }

    fn sync_once(&self, owner: &OwnerKeys, source: &dyn Catalog, follow: bool) -> Result<(), TransferError> {
        let tip = self.tip(&owner.owner_id())?;
        let from = tip.next_seq.saturating_sub(1);
        let entries = source.log_from(owner, from)?;
        let extends = match entries.first() {
            None => tip.next_seq == 0,
            Some(first) if tip.next_seq == 0 => first.seq == 0,
            Some(first) => first.seq == from && first.hash() == tip.head,
        };
        if extends {
            let skip = usize::from(tip.next_seq > 0);
            return self.extend(owner, entries.get(skip..).unwrap_or_default(), false);
        }
        let all = match entries.first() {
            Some(first) if first.seq == 0 => entries,
            _ => source.log_from(owner, 0)?,
        };
        self.reconcile(owner, &all, follow)
    }

    /// The history as indexed, without asking any source.
    pub fn history<'a>(&'a self, owner: &OwnerKeys) -> Result<History<'a>, TransferError> {
        let tip = self.tip(&owner.owner_id())?;
        Ok(History { index: self, owner: owner.owner_id(), tip, pending: Vec::new() })
    }

    /// Takes the whole log `all` of a source whose last indexed entry the
    /// index does not find where it left off: extends the index if `all`
    /// runs through it, keeps it if `all` is where it started (and
    /// `follow` is off), and indexes `all` anew otherwise.
    fn reconcile(&self, owner: &OwnerKeys, all: &[LogEntry], follow: bool) -> Result<(), TransferError> {
        let id = owner.owner_id();
        let tip = self.tip(&id)?;
        let common = {
            let txn = self.db.read()?;
            let chain = txn.open_table(CHAIN).map_err(self.db.err())?;
            let mut common = 0;
            let rows = chain.range((id.as_bytes(), 0)..(id.as_bytes(), tip.next_seq)).map_err(self.db.err())?;
            for (row, entry) in rows.zip(all) {
                let (_, hash) = row.map_err(self.db.err())?;
                if *hash.value() != entry.hash() {
                    break;
                }
                common += 1;
            }
            common
        };
        if common == tip.next_seq {
            return self.extend(owner, &all[common as usize..], false);
        }
        if common == all.len() as u64 && !follow {
            return Ok(());
        }
        tracing::debug!("the log of {id} was rewritten after entry {common}: indexing it anew");
        self.extend(owner, all, true)
    }

    /// Forgets `owner`'s index, in `txn`.
    fn reset(&self, txn: &WriteTransaction, owner: &OwnerId) -> Result<(), TransferError> {
        let key = owner.as_bytes();
        let db = &self.db;
        txn.open_table(TIPS).map_err(db.err())?.remove(key).map_err(db.err())?;
        let mut chain = txn.open_table(CHAIN).map_err(db.err())?;
        chain.retain_in((key, 0)..=(key, u64::MAX), |_, _| false).map_err(db.err())?;
        let mut versions = txn.open_table(VERSIONS).map_err(db.err())?;
        versions.retain_in((key, 0)..=(key, u64::MAX), |_, _| false).map_err(db.err())?;
        let mut by_name = txn.open_table(BY_NAME).map_err(db.err())?;
        by_name.retain_in((key, "", 0).., |(o, _, _), _| o != key).map_err(db.err())?;
        let mut by_manifest = txn.open_table(BY_MANIFEST).map_err(db.err())?;
        by_manifest.retain_in((key, &[0; 32], 0).., |(o, _, _), _| o != key).map_err(db.err())?;
        let mut names = txn.open_table(NAMES).map_err(db.err())?;
        names.retain_in((key, "").., |(o, _), _| o != key).map_err(db.err())?;
        Ok(())
    }

    /// Verifies `entries` (consecutive, following what is indexed, or
    /// from entry 0 when `anew`, which forgets the owner's index first) and
    /// folds them in, in one transaction: another command sees the index
    /// before or after, never half built. Entries another command indexed
    /// meanwhile are skipped; one that contradicts the index fails.
    fn extend(&self, owner: &OwnerKeys, entries: &[LogEntry], anew: bool) -> Result<(), TransferError> {
        let id = owner.owner_id();
        if entries.is_empty() && !anew {
            return Ok(());
        }
        {
            let txn = self.db.write()?;
            if anew {
                self.reset(&txn, &id)?;
            }
            let mut fold = Fold::open(&txn, &self.db, &id)?;
            for entry in entries {
                if entry.seq < fold.tip.next_seq {
                    // Indexed by another command since this one looked.
                    if fold.hash_at(entry.seq)? != Some(entry.hash()) {
                        return Err(LogError::BrokenChain(entry.seq).into());
                    }
                    continue;
                }
                if entry.seq != fold.tip.next_seq {
                    let expected_prev = fold.tip.next_seq.wrapping_sub(1);
                    return Err(LogError::Gap { expected_prev, found: entry.seq }.into());
                }
                if entry.prev != fold.tip.head {
                    return Err(LogError::BrokenChain(entry.seq).into());
                }
                let record = entry.open(owner)?;
                fold.apply(entry.seq, entry.hash(), record)?;
            }
            fold.finish()?;
            drop(fold);
            txn.commit().map_err(self.db.err())?;
        }
        Ok(())
    }

    fn tip(&self, owner: &OwnerId) -> Result<Tip, TransferError> {
        let txn = self.db.read()?;
        read_tip(&txn, &self.db, owner)
    }

    /// The hash of entry `seq` of `owner`'s log, if it is indexed.
    pub fn hash_at(&self, owner: &OwnerId, seq: u64) -> Result<Option<EntryHash>, TransferError> {
        let txn = self.db.read()?;
        let chain = txn.open_table(CHAIN).map_err(self.db.err())?;
        Ok(chain.get((owner.as_bytes(), seq)).map_err(self.db.err())?.map(|h| *h.value()))
    }

    fn read(&self) -> Result<Txn<ReadTransaction>, TransferError> {
        Ok(self.db.read()?)
    }
}

fn read_tip(txn: &ReadTransaction, db: &Db, owner: &OwnerId) -> Result<Tip, TransferError> {
    let tips = txn.open_table(TIPS).map_err(db.err())?;
    match tips.get(owner.as_bytes()).map_err(db.err())? {
        Some(row) => decode(db, row.value()),
        None => Ok(Tip::default()),
    }
}

fn decode<T: serde::de::DeserializeOwned>(db: &Db, bytes: &[u8]) -> Result<T, TransferError> {
    postcard::from_bytes(bytes).map_err(|e| {
        let reason = format!("a history index row does not decode ({e}); delete the file to build it again");
        StoreError::Corrupt { path: db.path().to_owned(), reason }.into()
    })
}

/// The version `owner` pushed at entry `seq`, which the index lists.
fn read_version(
    table: &impl ReadableTable<(Owner<'static>, u64), &'static [u8]>,
    db: &Db,
    owner: &OwnerId,
    seq: u64,
) -> Result<Version, TransferError> {
    match table.get((owner.as_bytes(), seq)).map_err(db.err())? {
        Some(row) => decode(db, row.value()),
        None => {
            let reason = format!("entry {seq} is listed as a version but has no row; delete the file to rebuild it");
            Err(StoreError::Corrupt { path: db.path().to_owned(), reason }.into())
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("index rows always encode")
}

/// Folding entries into one owner's index inside a write transaction.
struct Fold<'t> {
    db: &'t Db,
    owner: OwnerId,
    tip: Tip,
    chain: redb::Table<'t, (Owner<'static>, u64), &'static [u8; 32]>,
    versions: redb::Table<'t, (Owner<'static>, u64), &'static [u8]>,
    by_name: redb::Table<'t, (Owner<'static>, &'static str, u32), u64>,
    by_manifest: redb::Table<'t, (Owner<'static>, &'static [u8; 32], u64), ()>,
    names: redb::Table<'t, (Owner<'static>, &'static str), &'static [u8]>,
    tips: redb::Table<'t, Owner<'static>, &'static [u8]>,
}

impl<'t> Fold<'t> {
    fn open(txn: &'t WriteTransaction, db: &'t Db, owner: &OwnerId) -> Result<Self, TransferError> {
        let tips = txn.open_table(TIPS).map_err(db.err())?;
        let tip = match tips.get(owner.as_bytes()).map_err(db.err())? {
            Some(row) => decode(db, row.value())?,
            None => Tip::default(),
        };
        Ok(Self {
            db,
            owner: *owner,
            tip,
            chain: txn.open_table(CHAIN).map_err(db.err())?,
            versions: txn.open_table(VERSIONS).map_err(db.err())?,
            by_name: txn.open_table(BY_NAME).map_err(db.err())?,
            by_manifest: txn.open_table(BY_MANIFEST).map_err(db.err())?,
            names: txn.open_table(NAMES).map_err(db.err())?,
            tips,
        })
    }

    fn hash_at(&self, seq: u64) -> Result<Option<EntryHash>, TransferError> {
        Ok(self.chain.get((self.owner.as_bytes(), seq)).map_err(self.db.err())?.map(|h| *h.value()))
    }

    fn name_row(&self, name: &str) -> Result<NameRow, TransferError> {
        match self.names.get((self.owner.as_bytes(), name)).map_err(self.db.err())? {
            Some(row) => decode(self.db, row.value()),
            None => Ok(NameRow::default()),
        }
    }

    fn version(&self, seq: u64) -> Result<Version, TransferError> {
        read_version(&self.versions, self.db, &self.owner, seq)
    }

    fn apply(&mut self, seq: u64, hash: EntryHash, record: LogRecord) -> Result<(), TransferError> {
        let owner = *self.owner.as_bytes();
        let owner = &owner;
        match record.op {
            LogOp::Push { ref name, manifest, size, .. } => {
                let mut row = self.name_row(name)?;
                row.versions += 1;
                row.live += 1;
                row.latest_live = Some(row.versions);
                if row.live == 1 {
                    self.tip.live_names += 1;
                }
                let version = Version::pushed(row.versions, &record).expect("a push makes a version");
                self.versions.insert((owner, seq), encode(&version).as_slice()).map_err(self.db.err())?;
                self.by_name.insert((owner, version.name.as_str(), version.number), seq).map_err(self.db.err())?;
                self.by_manifest.insert((owner, manifest.as_bytes(), seq), ()).map_err(self.db.err())?;
                self.names.insert((owner, version.name.as_str()), encode(&row).as_slice()).map_err(self.db.err())?;
                self.tip.versions += 1;
                self.tip.live_versions += 1;
                self.tip.live_bytes += size;
            }
            LogOp::Remove { manifest } => {
                // The first live version with that manifest, as replay finds it.
                let mut found = None;
                let pushes: Vec<u64> = self
                    .by_manifest
                    .range((owner, manifest.as_bytes(), 0)..=(owner, manifest.as_bytes(), u64::MAX))
                    .map_err(self.db.err())?
                    .map(|row| row.map(|(key, _)| key.value().2))
                    .collect::<Result<_, _>>()
                    .map_err(self.db.err())?;
                for push in pushes {
                    let version = self.version(push)?;
                    if version.removed_ms.is_none() {
                        found = Some((push, version));
                        break;
                    }
                }
                let (push, mut version) = found.ok_or(LogError::RemoveUnknown { seq, manifest })?;
                version.removed_ms = Some(record.time_ms);
                self.versions.insert((owner, push), encode(&version).as_slice()).map_err(self.db.err())?;
                let mut row = self.name_row(&version.name)?;
                row.live -= 1;
                if row.latest_live == Some(version.number) {
                    row.latest_live = self.latest_live_before(&version.name, version.number)?;
                }
                self.names.insert((owner, version.name.as_str()), encode(&row).as_slice()).map_err(self.db.err())?;
                if row.live == 0 {
                    self.tip.live_names -= 1;
                }
                self.tip.live_versions -= 1;
                self.tip.live_bytes -= version.size;
            }
        }
        self.chain.insert((owner, seq), &hash).map_err(self.db.err())?;
        self.tip.next_seq = seq + 1;
        self.tip.head = hash;
        Ok(())
    }

    /// The number of the latest live version of `name` before `number`.
    fn latest_live_before(&self, name: &str, number: u32) -> Result<Option<u32>, TransferError> {
        let owner = self.owner.as_bytes();
        let rows = self.by_name.range((owner, name, 0)..(owner, name, number)).map_err(self.db.err())?;
        for row in rows.rev() {
            let (key, seq) = row.map_err(self.db.err())?;
            if self.version(seq.value())?.removed_ms.is_none() {
                return Ok(Some(key.value().2));
            }
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<(), TransferError> {
        self.tips.insert(self.owner.as_bytes(), encode(&self.tip).as_slice()).map_err(self.db.err())?;
        Ok(())
    }
}

/// One name with a live version, as `ls` shows it.
#[derive(Debug, Clone)]
pub struct NameSummary {
    /// How many of its versions are live.
    pub live: u64,
    /// Its latest live version.
    pub latest: Version,
}

/// An owner's verified history, read from the index (see the module doc),
/// and the entries this command appends to it.
pub struct History<'a> {
    index: &'a HistoryIndex,
    owner: OwnerId,
    tip: Tip,
    /// Entries made by [`History::append`] and not yet in the index: the
    /// versions they push and the manifests they remove.
    pending: Vec<(LogEntry, LogRecord)>,
}

impl History<'_> {
    /// How far the index reaches, and the live totals.
    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// Makes the next entry for `record`, after those appended before.
    pub fn append(
        &mut self,
        owner: &OwnerKeys,
        record: LogRecord,
        nonce: [u8; XNONCE_LEN],
    ) -> Result<LogEntry, TransferError> {
        let (seq, prev) = match self.pending.last() {
            Some((entry, _)) => (entry.seq + 1, entry.hash()),
            None => (self.tip.next_seq, self.tip.head),
        };
        if let LogOp::Remove { manifest } = &record.op
            && !self.by_manifest(manifest)?.is_some_and(|v| v.is_live())
        {
            return Err(LogError::RemoveUnknown { seq, manifest: *manifest }.into());
        }
        let entry = LogEntry::seal(owner, seq, prev, &record, nonce);
        self.pending.push((entry.clone(), record));
        Ok(entry)
    }

    /// The version with this manifest, if the log has it (the first, as
    /// replay finds it), with what this command appended on top.
    pub fn by_manifest(&self, id: &ManifestId) -> Result<Option<Version>, TransferError> {
        let mut found = self.indexed_by_manifest(id)?;
        for (entry, record) in &self.pending {
            match &record.op {
                LogOp::Push { name, manifest, .. } if manifest == id && found.is_none() => {
                    found = Version::pushed(self.next_number(name, entry.seq)?, record);
                }
                LogOp::Remove { manifest } if manifest == id => {
                    if let Some(version) = found.as_mut() {
                        version.removed_ms = Some(record.time_ms);
                    }
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// The number a pending push of `name` at `seq` gets.
    fn next_number(&self, name: &str, seq: u64) -> Result<u32, TransferError> {
        let indexed = self.name(name)?.map_or(0, |row| row.versions);
        let earlier = self
            .pending
            .iter()
            .filter(|(e, r)| e.seq < seq && matches!(&r.op, LogOp::Push { name: n, .. } if n == name))
            .count() as u32;
        Ok(indexed + earlier + 1)
    }

    fn indexed_by_manifest(&self, id: &ManifestId) -> Result<Option<Version>, TransferError> {
        let db = &self.index.db;
        let txn = self.index.read()?;
        let table = txn.open_table(BY_MANIFEST).map_err(db.err())?;
        let key = self.owner.as_bytes();
        let first = table.range((key, id.as_bytes(), 0)..=(key, id.as_bytes(), u64::MAX)).map_err(db.err())?.next();
        match first {
            Some(row) => {
                let seq = row.map_err(db.err())?.0.value().2;
                self.version_in(&txn, seq).map(Some)
            }
            None => Ok(None),
        }
    }

    fn version_in(&self, txn: &ReadTransaction, seq: u64) -> Result<Version, TransferError> {
        let table = txn.open_table(VERSIONS).map_err(self.index.db.err())?;
        read_version(&table, &self.index.db, &self.owner, seq)
    }

    fn name(&self, name: &str) -> Result<Option<NameRow>, TransferError> {
        let db = &self.index.db;
        let txn = self.index.read()?;
        let table = txn.open_table(NAMES).map_err(db.err())?;
        match table.get((self.owner.as_bytes(), name)).map_err(db.err())? {
            Some(row) => decode(db, row.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Version `number` of `name`, if it was ever pushed.
    pub fn version(&self, name: &str, number: u32) -> Result<Option<Version>, TransferError> {
        let db = &self.index.db;
        let txn = self.index.read()?;
        let table = txn.open_table(BY_NAME).map_err(db.err())?;
        match table.get((self.owner.as_bytes(), name, number)).map_err(db.err())? {
            Some(seq) => self.version_in(&txn, seq.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The latest live version of `name`, if it has one.
    pub fn latest(&self, name: &str) -> Result<Option<Version>, TransferError> {
        match self.name(name)?.and_then(|row| row.latest_live) {
            Some(number) => self.version(name, number),
            None => Ok(None),
        }
    }

    /// Up to `limit` versions, newest first, of `name` (or of every name),
    /// before the version pushed at entry `before` (from the newest, if
    /// `None`), removed ones included. Each call is one short read.
    pub fn page(
        &self,
        name: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Version)>, TransferError> {
        let db = &self.index.db;
        let txn = self.index.read()?;
        let key = self.owner.as_bytes();
        let before = before.unwrap_or(u64::MAX);
        // (cursor, seq): a name's versions page by number, all by seq.
        let seqs: Vec<(u64, u64)> = match name {
            Some(name) => {
                let table = txn.open_table(BY_NAME).map_err(db.err())?;
                let end = u32::try_from(before).unwrap_or(u32::MAX);
                let rows = table.range((key, name, 0)..(key, name, end)).map_err(db.err())?.rev().take(limit);
                rows.map(|row| row.map(|(k, seq)| (u64::from(k.value().2), seq.value())))
                    .collect::<Result<_, _>>()
                    .map_err(db.err())?
            }
            None => {
                let table = txn.open_table(VERSIONS).map_err(db.err())?;
                let rows = table.range((key, 0)..(key, before)).map_err(db.err())?.rev().take(limit);
                rows.map(|row| row.map(|(k, _)| (k.value().1, k.value().1)))
                    .collect::<Result<_, _>>()
                    .map_err(db.err())?
            }
        };
        seqs.into_iter().map(|(cursor, seq)| Ok((cursor, self.version_in(&txn, seq)?))).collect()
    }

    /// Every version of `name` (or of every name), oldest first, removed
    /// ones included.
    pub fn all(&self, name: Option<&str>) -> Result<Vec<Version>, TransferError> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = self.page(name, before, PAGE)?;
            let Some(&(last, _)) = page.last() else { break };
            out.extend(page.into_iter().map(|(_, v)| v));
            before = Some(last);
        }
        out.reverse();
        Ok(out)
    }

    /// Every live version, oldest first.
    pub fn live(&self) -> Result<Vec<Version>, TransferError> {
        Ok(self.all(None)?.into_iter().filter(Version::is_live).collect())
    }

    /// How many versions of `name` were ever pushed.
    pub fn versions_of(&self, name: &str) -> Result<u32, TransferError> {
        Ok(self.name(name)?.map_or(0, |row| row.versions))
    }

    /// Every name ever pushed, sorted, with its row.
    pub fn name_rows(&self) -> Result<Vec<(String, NameRow)>, TransferError> {
        let db = &self.index.db;
        let txn = self.index.read()?;
        let table = txn.open_table(NAMES).map_err(db.err())?;
        let key = self.owner.as_bytes();
        let mut rows = Vec::new();
        for row in table.range((key, "")..).map_err(db.err())? {
            let (k, v) = row.map_err(db.err())?;
            let (owner, name) = k.value();
            if owner != key {
                break;
            }
            rows.push((name.to_owned(), decode::<NameRow>(db, v.value())?));
        }
        Ok(rows)
    }

    /// Names with at least one live version, sorted, each with its count
    /// of live versions and its latest one: one row per name, and one
    /// version, in one read.
    pub fn names(&self) -> Result<Vec<NameSummary>, TransferError> {
        let db = &self.index.db;
        let txn = self.index.read()?;
        let names = txn.open_table(NAMES).map_err(db.err())?;
        let by_name = txn.open_table(BY_NAME).map_err(db.err())?;
        let versions = txn.open_table(VERSIONS).map_err(db.err())?;
        let key = self.owner.as_bytes();
        let mut out = Vec::new();
        for row in names.range((key, "")..).map_err(db.err())? {
            let (k, v) = row.map_err(db.err())?;
            let (owner, name) = k.value();
            if owner != key {
                break;
            }
            let row: NameRow = decode(db, v.value())?;
            let Some(number) = row.latest_live else { continue };
            if let Some(seq) = by_name.get((key, name, number)).map_err(db.err())? {
                let latest = read_version(&versions, db, &self.owner, seq.value())?;
                out.push(NameSummary { live: row.live, latest });
            }
        }
        Ok(out)
    }

    /// The versions `spec` selects: `NAME` (all its live versions, oldest
    /// first), `NAME@N` (one), or a unique manifest id prefix of at least 8
    /// hex characters (one). An exact live name wins over an id prefix.
    pub fn select(&self, spec: &str) -> Result<Vec<Version>, TransferError> {
        let row = self.name(spec)?;
        if row.is_some_and(|r| r.live > 0) {
            return Ok(self.all(Some(spec))?.into_iter().filter(Version::is_live).collect());
        }
        if let Some((name, number)) = spec.rsplit_once('@')
            && let Ok(number) = number.parse::<u32>()
            && let Some(named) = self.name(name)?
            && named.versions > 0
        {
            let Some(version) = self.version(name, number)? else {
                let existing = self.all(Some(name))?.into_iter().filter(Version::is_live).map(|v| v.number.to_string());
                return Err(ResolveError::NoSuchVersion {
                    name: name.to_owned(),
                    number,
                    existing: existing.collect::<Vec<_>>().join(", "),
                }
                .into());
            };
            return live(version).map(|v| vec![v]);
        }
        if let Ok(prefix) = spec.parse::<IdPrefix>() {
            let matches = self.by_prefix(&prefix, 2)?;
            match matches.len() {
                0 => {}
                1 => return live(matches.into_iter().next().expect("one match")).map(|v| vec![v]),
                _ => {
                    let all = self.by_prefix(&prefix, 16)?;
                    let candidates = all.iter().map(|v| format!("{} ({})", v.manifest.short(12), v.label()));
                    return Err(ResolveError::Ambiguous {
                        prefix: prefix.as_str().to_owned(),
                        candidates: candidates.collect::<Vec<_>>().join(", "),
                    }
                    .into());
                }
            }
        }
        if row.is_some_and(|r| r.versions > 0) {
            return Err(ResolveError::Removed(format!("every version of '{spec}'")).into());
        }
        if spec.len() >= 4 && spec.len() < crate::id::MIN_PREFIX_LEN && spec.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ResolveError::ShortPrefix(spec.to_owned()).into());
        }
        Err(ResolveError::NotFound(spec.to_owned()).into())
    }

    /// The one version `spec` selects; a bare name selects its latest live version.
    pub fn select_one(&self, spec: &str) -> Result<Version, TransferError> {
        if let Some(latest) = self.latest(spec)? {
            return Ok(latest);
        }
        let versions = self.select(spec)?;
        Ok(versions.into_iter().last().expect("select never returns an empty list"))
    }

    /// Up to `limit` versions whose manifest id starts with `prefix`.
    fn by_prefix(&self, prefix: &IdPrefix, limit: usize) -> Result<Vec<Version>, TransferError> {
        let (low, high) = prefix.byte_range();
        let db = &self.index.db;
        let txn = self.index.read()?;
        let table = txn.open_table(BY_MANIFEST).map_err(db.err())?;
        let key = self.owner.as_bytes();
        let mut out = Vec::new();
        for row in table.range((key, &low, 0)..=(key, &high, u64::MAX)).map_err(db.err())? {
            let (k, _) = row.map_err(db.err())?;
            out.push(self.version_in(&txn, k.value().2)?);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }
}

fn live(version: Version) -> Result<Version, TransferError> {
    match version.is_live() {
        true => Ok(version),
        false => Err(ResolveError::Removed(version.label()).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;
    use crate::manifest::log::History as Replayed;
    use crate::transfer::catalog::Change;

    fn owner() -> OwnerKeys {
        OwnerKeys::derive(&[7; 32])
    }

    /// A log held in memory, as a home's copy would hold it.
    #[derive(Default)]
    struct Log(Mutex<Vec<LogEntry>>);

    impl Catalog for Log {
        fn log_from(&self, _owner: &OwnerKeys, from: u64) -> Result<Vec<LogEntry>, TransferError> {
            Ok(self.0.lock().unwrap().iter().filter(|e| e.seq >= from).cloned().collect())
        }
        fn sealed(&self, _tag: &[u8; 32]) -> Result<Option<crate::id::ChunkId>, TransferError> {
            Ok(None)
        }
        fn manifest(&self, _id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
            Ok(None)
        }
        fn record(&self, change: Change<'_>) -> Result<(), TransferError> {
            self.0.lock().unwrap().extend(change.entries.iter().cloned());
            Ok(())
        }
        fn adopt_log(&self, _owner: &OwnerKeys, from: u64, entries: &[LogEntry]) -> Result<(), TransferError> {
            let mut log = self.0.lock().unwrap();
            log.truncate(from as usize);
            log.extend(entries.iter().cloned());
            Ok(())
        }
    }

    fn manifest(n: u16) -> ManifestId {
        let mut id = [0xab; 32];
        id[..2].copy_from_slice(&n.to_be_bytes());
        ManifestId(id)
    }

    /// Appends `ops` to `log` (a push of name `n % names`, or the removal
    /// of the `k`-th version pushed, if live), as a command would.
    fn append(log: &Log, ops: &[(bool, u16)], first_manifest: u16) {
        let mut replayed = Replayed::replay(&owner(), log.0.lock().unwrap().clone()).unwrap();
        let mut next = first_manifest;
        for &(push, n) in ops {
            let op = if push {
                next += 1;
                LogOp::Push {
                    name: format!("f{}", n % 4),
                    manifest: manifest(next),
                    size: u64::from(n),
                    chunks: 1,
                    new_bytes: 1,
                }
            } else {
                match replayed.versions().iter().filter(|v| v.is_live()).nth(usize::from(n) % 7) {
                    Some(v) => LogOp::Remove { manifest: v.manifest },
                    None => continue,
                }
            };
            let record = LogRecord { time_ms: 1_000 + u64::from(n), op };
            let entry = replayed.append(&owner(), record, [n as u8; 24]).unwrap();
            log.0.lock().unwrap().push(entry);
        }
    }

    /// Everything the index answers, checked against a replay of the whole log.
    fn assert_agrees(index: &HistoryIndex, log: &Log) {
        let replayed = Replayed::replay(&owner(), log.0.lock().unwrap().clone()).unwrap();
        let history = index.history(&owner()).unwrap();
        assert_eq!(history.all(None).unwrap(), replayed.versions());
        let live: Vec<&Version> = replayed.versions().iter().filter(|v| v.is_live()).collect();
        let tip = history.tip();
        assert_eq!(tip.next_seq, log.0.lock().unwrap().len() as u64);
        assert_eq!(tip.live_versions, live.len() as u64);
        assert_eq!(tip.live_bytes, live.iter().map(|v| v.size).sum::<u64>());
        assert_eq!(tip.live_names, replayed.live_names().len() as u64);
        let names: Vec<(String, u64, Version)> =
            history.names().unwrap().into_iter().map(|n| (n.latest.name.clone(), n.live, n.latest)).collect();
        let expected: Vec<(String, u64, Version)> = replayed
            .live_names()
            .into_iter()
            .map(|name| {
                let live: Vec<&Version> = replayed.versions_of(name).filter(|v| v.is_live()).collect();
                (name.to_owned(), live.len() as u64, (*live.last().unwrap()).clone())
            })
            .collect();
        assert_eq!(names, expected);
        for name in ["f0", "f1", "f2", "f3", "f0@1", "f1@2", "f2@9", "abababab", "ab", "0001abab", "zz"] {
            let ours = history.select(name).map_err(|e| e.to_string());
            let theirs = replayed.select(name).map(|v| v.into_iter().cloned().collect::<Vec<_>>());
            assert_eq!(ours, theirs.map_err(|e| TransferError::from(e).to_string()), "select {name}");
            let ours = history.select_one(name).map_err(|e| e.to_string());
            let theirs = replayed.select_one(name).cloned().map_err(|e| TransferError::from(e).to_string());
            assert_eq!(ours, theirs, "select_one {name}");
        }
        for v in replayed.versions() {
            assert_eq!(history.by_manifest(&v.manifest).unwrap().as_ref(), replayed.by_manifest(&v.manifest));
            let newest: Vec<Version> =
                history.page(Some(&v.name), None, 3).unwrap().into_iter().map(|(_, v)| v).collect();
            let mut expected: Vec<Version> = replayed.versions_of(&v.name).cloned().collect();
            expected.reverse();
            expected.truncate(3);
            assert_eq!(newest, expected);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Indexed a few entries at a time, or all at once, or after the log
        /// was rewritten under it, the index answers as a replay does.
        #[test]
        fn the_index_answers_as_a_replay_of_the_whole_log(
            ops in proptest::collection::vec((any::<bool>(), any::<u16>()), 0..40),
            split in 0usize..40,
            rewrite_at in 0usize..40,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let index = HistoryIndex::open(dir.path(), Duration::from_secs(5));
            let log = Log::default();
            let (a, b) = ops.split_at(split.min(ops.len()));
            append(&log, a, 0);
            index.sync(&owner(), &log, true).unwrap();
            assert_agrees(&index, &log);
            append(&log, b, 1000);
            index.sync(&owner(), &log, true).unwrap();
            assert_agrees(&index, &log);

            // Another machine's entries replace the tail: indexed anew.
            let keep = rewrite_at.min(log.0.lock().unwrap().len());
            log.0.lock().unwrap().truncate(keep);
            append(&log, &ops[..ops.len() / 2], 2000);
            index.sync(&owner(), &log, true).unwrap();
            assert_agrees(&index, &log);
        }
    }

    #[test]
    fn an_index_that_reaches_past_its_source_keeps_what_it_knows_unless_told_to_follow() {
        let dir = tempfile::tempdir().unwrap();
        let index = HistoryIndex::open(dir.path(), Duration::from_secs(5));
        let log = Log::default();
        append(&log, &[(true, 1), (true, 2), (true, 3)], 0);
        index.sync(&owner(), &log, false).unwrap();
        let shorter = Log(Mutex::new(log.0.lock().unwrap()[..2].to_vec()));
        assert_eq!(index.sync(&owner(), &shorter, false).unwrap().tip().next_seq, 3, "it knows more");
        assert_eq!(index.sync(&owner(), &shorter, true).unwrap().tip().next_seq, 2, "it follows");
        assert_agrees(&index, &shorter);
    }

    #[test]
    fn a_tampered_entry_is_refused_and_nothing_after_it_is_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let index = HistoryIndex::open(dir.path(), Duration::from_secs(5));
        let log = Log::default();
        append(&log, &[(true, 1), (true, 2)], 0);
        index.sync(&owner(), &log, true).unwrap();
        append(&log, &[(true, 3), (true, 4)], 10);
        log.0.lock().unwrap()[2].sealed[0] ^= 1;
        assert!(matches!(index.sync(&owner(), &log, true), Err(TransferError::Log(LogError::Crypto { seq: 2, .. }))));
        assert_eq!(index.history(&owner()).unwrap().tip().next_seq, 2);
    }

    #[test]
    fn a_read_only_home_gets_an_index_in_memory() {
        let index = HistoryIndex::open(Path::new("/proc/self"), Duration::from_secs(1));
        let log = Log::default();
        append(&log, &[(true, 1)], 0);
        index.sync(&owner(), &log, false).unwrap();
        assert_agrees(&index, &log);
    }

    #[test]
    fn id_prefixes_bound_the_ids_they_match() {
        let prefix: IdPrefix = "0123abcd5".parse().unwrap();
        let (low, high) = prefix.byte_range();
        assert_eq!(&low[..5], &[0x01, 0x23, 0xab, 0xcd, 0x50]);
        assert_eq!(&high[..5], &[0x01, 0x23, 0xab, 0xcd, 0x5f]);
        assert!(low[5..].iter().all(|&b| b == 0) && high[5..].iter().all(|&b| b == 0xff));
    }
}
