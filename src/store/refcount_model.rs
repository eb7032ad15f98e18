//! The store's pins, refcounts and GC checked against a plain model, as redb
//! checks itself against a `BTreeMap`: random sequences of commits, pins,
//! unpins, chunk and manifest writes, collections and reopenings, from
//! several owners, applied to a real [`Store`] in a temp dir and to a
//! [`Model`] of maps and sets; after every step the two must agree.
//!
//! The model keeps no counters: a chunk's refcount is recomputed from the
//! live pins each time, so it is right by construction, and a refcount the
//! store gets wrong (a chunk collected while a pin needs it, or kept
//! forever after its last pin went) shows up as a difference. Files have
//! an age: new when written or asked about (`Has`), old after an
//! [`Op::Age`]; a collection with a grace spares new files, one without
//! deletes every unreferenced file. Usage per owner is recomputed from the
//! pins and the files on disk too.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;

use super::{GcReport, PinRecord, Pinned, Store, StoreError};
use crate::id::{ChunkId, ManifestId, OwnerId};

const OWNERS: u8 = 3;
const MANIFESTS: u8 = 4;
const CHUNKS: u8 = 8;
const TAGS: u8 = 4;
/// The grace of [`Op::Gc`] with one: longer than any test runs.
const GRACE: Duration = Duration::from_secs(3600);

/// An (owner, manifest) pair, as small numbers.
type Key = (u8, u8);

fn owner(o: u8) -> OwnerId {
    OwnerId([o + 1; 32])
}

fn manifest(m: u8) -> ManifestId {
    ManifestId([m + 1; 32])
}

/// Chunk `c`'s ciphertext: `16 + c` bytes (the tag's length at least).
fn chunk_bytes(c: u8) -> Vec<u8> {
    vec![c; 16 + usize::from(c)]
}

fn chunk(c: u8) -> ChunkId {
    ChunkId::of(&chunk_bytes(c))
}

fn envelope(m: u8) -> Vec<u8> {
    vec![m; 10 + usize::from(m)]
}

fn pin_record((o, m): Key, chunks: &[u8]) -> PinRecord {
    PinRecord { owner: owner(o), manifest: manifest(m), chunks: chunks.iter().map(|&c| chunk(c)).collect() }
}

#[derive(Debug, Clone)]
enum Op {
    /// `Meta::commit`: pins first, then unpins, then sealed entries, at once.
    Commit { pins: Vec<(Key, Vec<u8>)>, unpins: Vec<Key>, sealed: Vec<(u8, u8)> },
    /// `Meta::pin` (an already-held pin, or one after its unpin, included).
    Pin(Key, Vec<u8>),
    /// `Meta::unpin`, held or not.
    Unpin(Key),
    /// A chunk file arrives (whether or not a pin needs it).
    PutChunk(u8),
    /// A manifest envelope arrives.
    PutManifest(u8),
    /// `Store::hold_chunks`: `Has` for one chunk, present or not.
    Has(u8),
    /// Every file becomes older than any grace.
    Age,
    /// `Store::gc`, with a grace (files not aged since they were last
    /// written or asked about are spared) or without one.
    Gc { grace: bool },
    /// The store is closed and opened again, for this process alone or
    /// shared (a database opened per transaction): everything must persist.
    Reopen { shared: bool },
}

fn key() -> impl Strategy<Value = Key> {
    (0..OWNERS, 0..MANIFESTS)
}

/// A manifest's chunk list: a few of the chunks, duplicates allowed, so that
/// pins share chunks often.
fn chunk_list() -> impl Strategy<Value = Vec<u8>> {
    vec(0..CHUNKS, 0..6)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (vec((key(), chunk_list()), 0..3), vec(key(), 0..3), vec((0..TAGS, 0..CHUNKS), 0..2))
            .prop_map(|(pins, unpins, sealed)| Op::Commit { pins, unpins, sealed }),
        3 => (key(), chunk_list()).prop_map(|(key, chunks)| Op::Pin(key, chunks)),
        2 => key().prop_map(Op::Unpin),
        3 => (0..CHUNKS).prop_map(Op::PutChunk),
        1 => (0..MANIFESTS).prop_map(Op::PutManifest),
        2 => any::<bool>().prop_map(|grace| Op::Gc { grace }),
        1 => (0..CHUNKS).prop_map(Op::Has),
        1 => Just(Op::Age),
        1 => any::<bool>().prop_map(|shared| Op::Reopen { shared }),
    ]
}

/// What the store should hold, in plain maps and sets.
#[derive(Debug, Default)]
struct Model {
    /// Live pins and the distinct chunks each keeps.
    pins: HashMap<Key, Vec<u8>>,
    /// Pins unpinned by their owner: never pinned again.
    tombstones: HashSet<Key>,
    chunk_files: HashSet<u8>,
    manifest_files: HashSet<u8>,
    /// Files written or asked about since the last [`Op::Age`].
    new_chunks: HashSet<u8>,
    new_manifests: HashSet<u8>,
    /// Sealed-chunk map: tag → chunk.
    sealed: HashMap<u8, u8>,
}

impl Model {
    /// How many live pins need each chunk, recomputed from the pins.
    fn refcounts(&self) -> HashMap<u8, u64> {
        let mut counts = HashMap::new();
        for chunks in self.pins.values() {
            for &c in chunks {
                *counts.entry(c).or_default() += 1;
            }
        }
        counts
    }

    fn pin(&mut self, key: Key, chunks: &[u8]) -> Pinned {
        if self.tombstones.contains(&key) {
            return Pinned::Revoked;
        }
        if self.pins.contains_key(&key) {
            return Pinned::AlreadyHeld;
        }
        let mut distinct = chunks.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        self.pins.insert(key, distinct);
        Pinned::New
    }

    fn unpin(&mut self, key: Key) -> bool {
        let held = self.pins.remove(&key).is_some();
        if held {
            self.tombstones.insert(key);
        }
        held
    }

    /// All or nothing: a pin its owner unpinned before refuses the whole commit.
    fn commit(&mut self, pins: &[(Key, Vec<u8>)], unpins: &[Key], sealed: &[(u8, u8)]) -> Result<(), u8> {
        if let Some(((_, m), _)) = pins.iter().find(|(key, _)| self.tombstones.contains(key)) {
            return Err(*m);
        }
        for (key, chunks) in pins {
            self.pin(*key, chunks);
        }
        for key in unpins {
            self.unpin(*key);
        }
        self.sealed.extend(sealed.iter().copied());
        Ok(())
    }

    /// Deletes what no pin needs (and, with a grace, is old); returns the
    /// report the store must give.
    fn gc(&mut self, grace: bool) -> GcReport {
        let referenced = self.refcounts();
        let pinned: HashSet<u8> = self.pins.keys().map(|&(_, m)| m).collect();
        let unreferenced: Vec<u8> = self.chunk_files.iter().copied().filter(|c| !referenced.contains_key(c)).collect();
        let (spared, dead_chunks): (Vec<u8>, Vec<u8>) =
            unreferenced.into_iter().partition(|c| grace && self.new_chunks.contains(c));
        let dead_manifests: Vec<u8> = self
            .manifest_files
            .iter()
            .copied()
            .filter(|m| !(pinned.contains(m) || (grace && self.new_manifests.contains(m))))
            .collect();
        let examined = self.chunk_files.len() as u64;
        let mut bytes_freed = 0;
        for c in &dead_chunks {
            self.chunk_files.remove(c);
            bytes_freed += chunk_bytes(*c).len() as u64;
        }
        for m in &dead_manifests {
            self.manifest_files.remove(m);
            bytes_freed += envelope(*m).len() as u64;
        }
        let sealed_before = self.sealed.len();
        let files = &self.chunk_files;
        self.sealed.retain(|_, c| referenced.contains_key(c) || files.contains(c));
        GcReport {
            chunks_examined: examined,
            chunks_deleted: dead_chunks.len() as u64,
            chunks_spared: spared.len() as u64,
            manifests_deleted: dead_manifests.len() as u64,
            bytes_freed,
            sealed_entries_forgotten: (sealed_before - self.sealed.len()) as u64,
        }
    }

    /// Each owner with a pin that keeps a chunk: the distinct chunks its
    /// pins keep that are on disk, and their bytes.
    fn owner_usage(&self) -> HashMap<u8, (u64, u64)> {
        let mut kept: HashMap<u8, HashSet<u8>> = HashMap::new();
        for (&(o, _), chunks) in &self.pins {
            if !chunks.is_empty() {
                kept.entry(o).or_default().extend(chunks);
            }
        }
        kept.into_iter()
            .map(|(o, chunks)| {
                let here: Vec<u8> = chunks.into_iter().filter(|c| self.chunk_files.contains(c)).collect();
                (o, (here.len() as u64, here.iter().map(|&c| chunk_bytes(c).len() as u64).sum()))
            })
            .collect()
    }
}

/// Fails unless `store` holds exactly what `model` says.
fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let meta = store.meta();
    let refcounts: HashMap<ChunkId, u64> = model.refcounts().into_iter().map(|(c, n)| (chunk(c), n)).collect();
    prop_assert_eq!(meta.refcounts().unwrap(), refcounts.clone(), "refcounts");
    prop_assert_eq!(meta.referenced_chunks().unwrap(), refcounts.keys().copied().collect::<HashSet<_>>());
    let pinned: HashSet<ManifestId> = model.pins.keys().map(|&(_, m)| manifest(m)).collect();
    prop_assert_eq!(meta.pinned_manifests().unwrap(), pinned);
    prop_assert_eq!(meta.pin_count().unwrap(), model.pins.len() as u64);
    let tombstones: HashSet<(OwnerId, ManifestId)> =
        model.tombstones.iter().map(|&(o, m)| (owner(o), manifest(m))).collect();
    prop_assert_eq!(meta.tombstones().unwrap(), tombstones);
    for o in 0..OWNERS {
        for m in 0..MANIFESTS {
            let mut expected = model.pins.get(&(o, m)).map(|cs| cs.iter().map(|&c| chunk(c)).collect::<Vec<_>>());
            let mut held = meta.pin_of(&owner(o), &manifest(m)).unwrap();
            // The store keeps a pin's chunks in id order, the model in index order.
            for list in [&mut expected, &mut held].into_iter().flatten() {
                list.sort_unstable();
            }
            prop_assert_eq!(held, expected, "the pin of owner {} on manifest {}", o, m);
        }
    }
    for c in 0..CHUNKS {
        prop_assert_eq!(store.has_chunk(&chunk(c)), model.chunk_files.contains(&c), "chunk {} on disk", c);
    }
    for m in 0..MANIFESTS {
        prop_assert_eq!(
            store.manifest_len(&manifest(m)).is_some(),
            model.manifest_files.contains(&m),
            "manifest {}",
            m
        );
    }
    let usage: HashMap<u8, (u64, u64)> =
        store.owner_usage().unwrap().into_iter().map(|u| (u.owner.0[0] - 1, (u.chunks, u.bytes))).collect();
    prop_assert_eq!(usage, model.owner_usage(), "usage per owner");
    for t in 0..TAGS {
        prop_assert_eq!(meta.lookup_sealed(&[t; 32]).unwrap(), model.sealed.get(&t).map(|&c| chunk(c)), "tag {}", t);
    }
    Ok(())
}

/// Applies `op` (all but [`Op::Reopen`]) to the store and the model.
fn apply(store: &Store, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Commit { pins, unpins, sealed } => {
            let records: Vec<PinRecord> = pins.iter().map(|(key, chunks)| pin_record(*key, chunks)).collect();
            let unpins_ids: Vec<(OwnerId, ManifestId)> = unpins.iter().map(|&(o, m)| (owner(o), manifest(m))).collect();
            let sealed_ids: Vec<([u8; 32], ChunkId)> = sealed.iter().map(|&(t, c)| ([t; 32], chunk(c))).collect();
            let result = store.meta().commit(&[], &records, &unpins_ids, &sealed_ids);
            match (model.commit(pins, unpins, sealed), result) {
                (Ok(()), Ok(())) => {}
                (Err(m), Err(StoreError::PinRevoked(id))) => prop_assert_eq!(id, manifest(m)),
                (expected, got) => prop_assert!(false, "commit: the model says {expected:?}, the store {got:?}"),
            }
        }
        Op::Pin(key, chunks) => {
            let got = store.pin(&pin_record(*key, chunks)).unwrap();
            prop_assert_eq!(got, model.pin(*key, chunks), "pin {:?}", key);
        }
        Op::Unpin((o, m)) => {
            let got = store.meta().unpin(&owner(*o), &manifest(*m)).unwrap();
            prop_assert_eq!(got, model.unpin((*o, *m)), "unpin {:?}", (o, m));
        }
        Op::PutChunk(c) => {
            let written = store.put_chunk(&chunk(*c), &chunk_bytes(*c)).unwrap();
            prop_assert_eq!(written, model.chunk_files.insert(*c), "put chunk {}", c);
            model.new_chunks.insert(*c);
        }
        Op::PutManifest(m) => {
            store.put_manifest(&manifest(*m), &envelope(*m)).unwrap();
            model.manifest_files.insert(*m);
            model.new_manifests.insert(*m);
        }
        Op::Has(c) => {
            let held = store.hold_chunks(&[chunk(*c)]);
            prop_assert_eq!(held, vec![model.chunk_files.contains(c)], "has chunk {}", c);
            if model.chunk_files.contains(c) {
                model.new_chunks.insert(*c);
            }
        }
        Op::Age => {
            let long_ago = std::time::SystemTime::now() - 2 * GRACE;
            let chunks = model.chunk_files.iter().map(|&c| store.chunk_path(&chunk(c)));
            let manifests = model.manifest_files.iter().map(|&m| store.manifest_path(&manifest(m)));
            for path in chunks.chain(manifests) {
                std::fs::File::open(path).unwrap().set_modified(long_ago).unwrap();
            }
            model.new_chunks.clear();
            model.new_manifests.clear();
        }
        Op::Gc { grace } => {
            let report = store.gc(if *grace { GRACE } else { Duration::ZERO }).unwrap();
            prop_assert_eq!(report, model.gc(*grace));
        }
        Op::Reopen { .. } => unreachable!("the caller reopens the store"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn pins_refcounts_and_gc_agree_with_a_plain_model(ops in vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let mut store = Store::open(&root).unwrap();
        let mut model = Model::default();
        for op in &ops {
            if let Op::Reopen { shared } = op {
                // The old handle goes first: one open database per file.
                drop(store);
                let sharing = if *shared {
                    super::Sharing::Shared { patience: std::time::Duration::from_secs(5) }
                } else {
                    super::Sharing::Exclusive
                };
                store = Store::open_with(&root, sharing).unwrap();
            } else {
                apply(&store, &mut model, op)?;
            }
            check(&store, &model)?;
        }
    }
}

/// The properties above are only as good as the model: a few of its
/// answers, worked out by hand.
#[test]
fn the_model_counts_as_the_design_says() {
    let mut model = Model::default();
    assert_eq!(model.pin((0, 0), &[1, 2, 2]), Pinned::New);
    assert_eq!(model.pin((1, 0), &[2, 3]), Pinned::New, "another owner's pin of one manifest is its own");
    assert_eq!(model.pin((0, 0), &[7]), Pinned::AlreadyHeld);
    assert_eq!(model.refcounts(), HashMap::from([(1, 1), (2, 2), (3, 1)]));
    assert!(model.unpin((0, 0)));
    assert!(!model.unpin((0, 0)), "a second unpin finds nothing");
    assert_eq!(model.pin((0, 0), &[1]), Pinned::Revoked);
    assert_eq!(model.commit(&[((2, 1), vec![4]), ((0, 0), vec![1])], &[], &[]), Err(0), "all or nothing");
    assert!(!model.pins.contains_key(&(2, 1)));
    model.chunk_files.extend([1, 2, 3, 4]);
    model.sealed.insert(0, 1);
    model.new_chunks.insert(4);
    let report = model.gc(true);
    assert_eq!((report.chunks_deleted, report.chunks_spared, report.sealed_entries_forgotten), (1, 1, 1));
    assert_eq!(model.chunk_files, HashSet::from([2, 3, 4]), "a new unreferenced chunk is spared");
    let report = model.gc(false);
    assert_eq!((report.chunks_deleted, report.sealed_entries_forgotten), (1, 0));
    assert_eq!(model.chunk_files, HashSet::from([2, 3]));
}
