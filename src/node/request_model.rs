//! The node's data requests checked against a plain model (issue 13), as
//! redb checks its API against a `BTreeMap` and quinn drives its stream
//! state machine from a fuzz target.
//!
//! A [`Scenario`] is a sequence of requests from three owners (`PutChunk`
//! with right and wrong bytes, `Has`, `GetChunk`, `Pin` and `Unpin` signed
//! by their owner, by another owner or badly, replays of earlier pins and
//! unpins) and of what happens to a node between them (time passing beyond
//! the grace, a collection with or without its grace, a restart). [`run`]
//! applies each request through [`super::requests`], the very functions
//! the QUIC handler calls, to a real [`Store`] in a directory, and to a
//! [`Model`] of ordinary maps and sets; after every step the two must agree
//! on every reply and on everything the store holds, or the run panics
//! naming the step and what differed. The `node_requests` fuzz target
//! runs it on inputs the fuzzer picks; the unit tests below on a few fixed
//! ones, with their answers worked out by hand.
//!
//! The model keeps no counters: a chunk's refcount, the bytes stored and
//! each owner's usage are recomputed from its pins and chunks when they are
//! compared, so they are right by construction, and a count the store gets
//! wrong (a chunk collected while a pin needs it, kept forever after its
//! last pin went, or a quota that leaks) shows up as a difference.
//!
//! Time: GC looks only at a chunk file's age. The model knows, for every
//! chunk here, whether it is *fresh*: written, or said to be here (by `Has`,
//! or by a `PutChunk` of a copy held already), since time last passed.
//! [`Op::TimePasses`] sets every chunk file's time back beyond the grace,
//! as the store's own tests do; [`Op::Gc`] collects with the grace (fresh
//! chunks no pin needs must stay: a push told they are here may pin them
//! yet) or after it (every chunk no pin needs must go). No clock is read
//! by the model and nothing sleeps, so a run is deterministic.
//!
//! Not public API: it exists in this crate's unit tests and under
//! `--cfg fuzzing`, which cargo-fuzz sets for every crate it builds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::requests::{Refusal, StoreRequests};
use crate::crypto::{OwnerKeys, Signature, TAG_LEN};
use crate::id::{ChunkId, ManifestId, OwnerId};
use crate::store::{GcReport, OwnerUsage, PinRecord, SignedPin, Store, StoredPin};
use crate::transfer::record::{signed_pin, signed_unpin};
use crate::wire::{self, Ack, ChunkData, ErrorCode, Frame, HasReply, NotFound, Stripes};

/// Owners that send requests.
const OWNERS: u8 = 3;
/// Chunk contents anyone may send; one id more is a chunk no one has.
const CHUNKS: u8 = 8;
/// Manifests that may be pinned.
const MANIFESTS: u8 = 6;
/// The most steps one run takes: each costs a few fsyncs.
const MAX_STEPS: usize = 64;
/// The most ids in one `Has` or one pin's list.
const MAX_IDS: usize = 9;
/// Earlier pins and unpins a replay picks from.
const HISTORY: usize = 16;
/// The node's grace for unreferenced chunks; [`Op::TimePasses`] ages files beyond it.
const GRACE: Duration = Duration::from_secs(3600);
/// Quotas are taken modulo this: the eight chunks take 352 bytes together,
/// so some quotas hold them all and most do not.
const QUOTA_RANGE: u16 = 512;

/// One run: the node's quota and the steps.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Scenario {
    /// `serve --max-storage` in bytes (modulo 512), or none.
    pub quota: Option<u16>,
    /// The steps, in order (at most 64 are taken).
    pub ops: Vec<Op>,
}

/// One step. Small numbers pick owners, chunks and manifests (modulo how
/// many there are), so the fuzzer meets the same ones again and again.
#[derive(Debug, Clone)]
pub enum Op {
    /// `PutChunk` under chunk `chunk`'s id (the ninth is an id no bytes
    /// are known for), its payload arriving in two pieces split at `split`.
    PutChunk {
        /// Which chunk's id.
        chunk: u8,
        /// Bytes other than the chunk's, or (half the time) the chunk's own.
        wrong: Option<WrongBytes>,
        /// Where the payload is cut in two.
        split: u8,
    },
    /// `Has` for these chunks.
    Has {
        /// Which chunks (at most nine).
        chunks: Vec<u8>,
    },
    /// `GetChunk`.
    GetChunk {
        /// Which chunk.
        chunk: u8,
    },
    /// `Pin` of `manifest` for `owner`, keeping `chunks`.
    Pin {
        /// Which owner the pin names.
        owner: u8,
        /// Which manifest.
        manifest: u8,
        /// The chunks listed (at most nine); for an erasure pin, cut to whole stripes.
        chunks: Vec<u8>,
        /// An erasure code (K, M: one or two each), or whole chunks.
        erasure: Option<(u8, u8)>,
        /// Who signs it, and how.
        signing: PinSigning,
    },
    /// `Unpin` of `manifest` for `owner`.
    Unpin {
        /// Which owner the unpin names.
        owner: u8,
        /// Which manifest.
        manifest: u8,
        /// Who signs it, and how.
        signing: UnpinSigning,
    },
    /// One of the last 16 pins or unpins sent, sent again byte for byte.
    Replay {
        /// Which one (modulo how many were sent).
        sent: u8,
    },
    /// Every chunk file becomes older than the grace.
    TimePasses,
    /// A collection: with the node's grace, or after it (`Duration::ZERO`).
    Gc {
        /// Whether files younger than the grace are spared.
        within_grace: bool,
    },
    /// The store is closed and opened again from its directory.
    Restart,
}

/// One byte picks the step, from a table of 16 weighted by what finds
/// bugs: stores and pins most, restarts (the slowest step) least. The
/// derived impl took four bytes for it, and runs of 0xff bytes, which the
/// fuzzer makes often, all picked the last step: its corpus filled with
/// restarts, and rarely met `TimePasses` and `Has`, which the grace needs.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Op {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.arbitrary::<u8>()? % 16 {
            0..=2 => Op::PutChunk { chunk: u.arbitrary()?, wrong: u.arbitrary()?, split: u.arbitrary()? },
            3 | 4 => Op::Has { chunks: u.arbitrary()? },
            5 => Op::GetChunk { chunk: u.arbitrary()? },
            6..=8 => Op::Pin {
                owner: u.arbitrary()?,
                manifest: u.arbitrary()?,
                chunks: u.arbitrary()?,
                erasure: u.arbitrary()?,
                signing: u.arbitrary()?,
            },
            9 | 10 => Op::Unpin { owner: u.arbitrary()?, manifest: u.arbitrary()?, signing: u.arbitrary()? },
            11 => Op::Replay { sent: u.arbitrary()? },
            12 => Op::TimePasses,
            13 | 14 => Op::Gc { within_grace: u.arbitrary()? },
            _ => Op::Restart,
        })
    }
}

/// Bytes a `PutChunk` carries that are not (or may not be) its chunk's.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum WrongBytes {
    /// Another chunk's bytes (the right ones if it picks the same chunk).
    OtherChunk(u8),
    /// The chunk's bytes with one bit flipped.
    FlippedBit(u8),
    /// The chunk's first bytes, fewer than a tag: no chunk at all.
    Truncated(u8),
    /// The chunk's bytes and one more.
    OneByteMore,
}

/// How a `Pin` is signed.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PinSigning {
    /// By the owner it names: the only one kept.
    ByOwner,
    /// By another owner, naming this one.
    ByAnotherOwner(u8),
    /// By the owner, with one bit of the signature flipped.
    Corrupted(u8),
    /// By the owner, as a whole-chunk pin if it is an erasure pin and the
    /// other way round: one signature must not pass for the other.
    OtherDomain,
    /// By the owner, over a list other than the one sent.
    ListChanged,
}

/// How an `Unpin` is signed.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum UnpinSigning {
    /// By the owner it names.
    ByOwner,
    /// By another owner, naming this one: must change nothing.
    ByAnotherOwner(u8),
    /// By the owner, with one bit of the signature flipped.
    Corrupted(u8),
}

/// What a step came to: the node's answer, as the model predicts it and
/// as the node gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reply and its payload (empty but for `ChunkData`).
    Reply(Frame, Vec<u8>),
    /// An `Error` reply with this code.
    Refused(ErrorCode),
    /// A collection, and what it reported.
    Collected(GcReport),
    /// A step with no answer: time passing, a restart, a replay of nothing.
    Done,
}

/// A request's outcome, as the node answered it.
fn answered(result: Result<Frame, Refusal>) -> Outcome {
    match result {
        Ok(frame) => Outcome::Reply(frame, Vec::new()),
        Err(refusal) => Outcome::Refused(refusal.code),
    }
}

/// The owners' keys and the chunks' contents, the same in every run.
struct World {
    owners: Vec<OwnerKeys>,
    /// Chunk `c`'s bytes are `contents[c]`, its id `ids[c]`; `ids[CHUNKS]`
    /// is an id no bytes are known for.
    contents: Vec<Vec<u8>>,
    ids: Vec<ChunkId>,
    manifests: Vec<ManifestId>,
}

impl World {
    fn get() -> &'static World {
        static WORLD: OnceLock<World> = OnceLock::new();
        WORLD.get_or_init(|| {
            // Chunk c: 16 + 8c bytes (a tag's length at least), each its own.
            let contents: Vec<Vec<u8>> = (0..CHUNKS).map(|c| vec![0xc0 | c; TAG_LEN + 8 * usize::from(c)]).collect();
            let mut ids: Vec<ChunkId> = contents.iter().map(|bytes| ChunkId::of(bytes)).collect();
            ids.push(ChunkId([0xee; 32]));
            World {
                owners: (0..OWNERS).map(|o| OwnerKeys::derive(&[o + 1; 32])).collect(),
                contents,
                ids,
                manifests: (0..MANIFESTS).map(|m| ManifestId([m + 1; 32])).collect(),
            }
        })
    }

    fn owner(&self, o: u8) -> &OwnerKeys {
        &self.owners[usize::from(o % OWNERS)]
    }

    /// Another owner than `o`, picked by `pick`.
    fn other_owner(&self, o: u8, pick: u8) -> &OwnerKeys {
        self.owner(o % OWNERS + 1 + pick % (OWNERS - 1))
    }

    fn manifest(&self, m: u8) -> ManifestId {
        self.manifests[usize::from(m % MANIFESTS)]
    }

    fn chunk_index(c: u8) -> usize {
        usize::from(c % (CHUNKS + 1))
    }

    fn chunk_id(&self, c: u8) -> ChunkId {
        self.ids[Self::chunk_index(c)]
    }

    /// Chunk `c`'s bytes; none for the chunk no one has.
    fn content(&self, c: u8) -> Option<&[u8]> {
        self.contents.get(Self::chunk_index(c)).map(Vec::as_slice)
    }

    /// The bytes a `PutChunk` of chunk `c` carries.
    fn payload(&self, c: u8, wrong: Option<WrongBytes>) -> Vec<u8> {
        let own = self.content(c).unwrap_or(&self.contents[0]).to_vec();
        match wrong {
            None => own,
            Some(WrongBytes::OtherChunk(d)) => self.contents[usize::from(d % CHUNKS)].clone(),
            Some(WrongBytes::FlippedBit(bit)) => {
                let mut bytes = own;
                let at = usize::from(bit) % bytes.len();
                bytes[at] ^= 1 << (bit % 8);
                bytes
            }
            Some(WrongBytes::Truncated(n)) => own[..usize::from(n) % TAG_LEN].to_vec(),
            Some(WrongBytes::OneByteMore) => [own.as_slice(), &[0]].concat(),
        }
    }
}

/// A pin or unpin as it was sent, and whether its owner signed it (the
/// model's knowledge, from how it was made: a replay is judged the same).
#[derive(Debug, Clone)]
enum Sent {
    Pin { pin: wire::Pin, ids: Vec<ChunkId>, signed_by_owner: bool },
    Unpin { unpin: wire::Unpin, signed_by_owner: bool },
}

/// A pin the model holds: what it keeps, and the `Pin` as its owner signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldPin {
    kept: BTreeSet<ChunkId>,
    signed: SignedPin,
}

/// What the node must hold, in plain maps and sets.
#[derive(Debug, Default)]
struct Model {
    /// Live pins by (owner, manifest), the store's key order.
    pins: BTreeMap<(OwnerId, ManifestId), HeldPin>,
    /// Pins their owner unpinned: a pin of one is refused forever after.
    tombstones: BTreeSet<(OwnerId, ManifestId)>,
    /// Chunks here, and their bytes.
    chunks: BTreeMap<ChunkId, Vec<u8>>,
    /// Chunks here written or said to be here since time last passed:
    /// a collection within the grace spares them.
    fresh: BTreeSet<ChunkId>,
}

impl Model {
    /// How many live pins keep each chunk.
    fn refcounts(&self) -> BTreeMap<ChunkId, u64> {
        let mut counts = BTreeMap::new();
        for pin in self.pins.values() {
            for id in &pin.kept {
                *counts.entry(*id).or_default() += 1;
            }
        }
        counts
    }

    /// Bytes of the chunks here.
    fn used(&self) -> u64 {
        self.chunks.values().map(|bytes| bytes.len() as u64).sum()
    }

    /// `PutChunk`: refused if too short to be a chunk; under a quota,
    /// refused if it does not fit, unless it is here (then it is said to be
    /// here, whatever bytes follow); refused if the bytes are not the
    /// chunk's; else stored, or its copy here kept: either way fresh.
    fn put_chunk(&mut self, id: ChunkId, bytes: &[u8], right: bool, quota: Option<u64>) -> Outcome {
        if bytes.len() < TAG_LEN {
            return Outcome::Refused(ErrorCode::BAD_FRAME);
        }
        if let Some(quota) = quota {
            if self.chunks.contains_key(&id) {
                self.fresh.insert(id);
            } else if self.used() + bytes.len() as u64 > quota {
                return Outcome::Refused(ErrorCode::STORAGE_FULL);
            }
        }
        if !right {
            return Outcome::Refused(ErrorCode::BAD_FRAME);
        }
        self.chunks.entry(id).or_insert_with(|| bytes.to_vec());
        self.fresh.insert(id);
        Outcome::Reply(Frame::Ack(Ack { id: id.0 }), Vec::new())
    }

    /// `Has`: the truth, and every chunk said to be here is fresh.
    fn has(&mut self, ids: &[ChunkId]) -> Outcome {
        let flags: Vec<bool> = ids.iter().map(|id| self.chunks.contains_key(id)).collect();
        self.fresh.extend(ids.iter().filter(|id| self.chunks.contains_key(id)));
        let reply = HasReply::from_flags(&flags).expect("at most MAX_IDS flags");
        Outcome::Reply(Frame::HasReply(reply), Vec::new())
    }

    /// `GetChunk`: the bytes as they were stored, or `NotFound`.
    fn get_chunk(&self, id: ChunkId) -> Outcome {
        match self.chunks.get(&id) {
            Some(bytes) => Outcome::Reply(Frame::ChunkData(ChunkData { id, len: bytes.len() as u32 }), bytes.clone()),
            None => Outcome::Reply(Frame::NotFound(NotFound { id: id.0 }), Vec::new()),
        }
    }

    /// `Pin`: refused unless its owner signed it, and if that owner
    /// unpinned the manifest before; a pin held already stays as it was
    /// first signed (acked again); a new one keeps its chunks (for an
    /// erasure pin, the shards: every id but the first of each stripe),
    /// whether or not they are here.
    fn pin(&mut self, pin: &wire::Pin, ids: &[ChunkId], signed_by_owner: bool) -> Outcome {
        if !signed_by_owner {
            return Outcome::Refused(ErrorCode::BAD_SIGNATURE);
        }
        let key = (pin.owner, pin.manifest);
        if self.tombstones.contains(&key) {
            return Outcome::Refused(ErrorCode::UNPINNED);
        }
        // A pin held already stays as its owner first signed it.
        self.pins.entry(key).or_insert_with(|| {
            let kept = match pin.erasure {
                Some(stripes) => {
                    let stride = stripes.stride() as usize;
                    ids.iter().enumerate().filter(|(i, _)| i % stride != 0).map(|(_, id)| *id).collect()
                }
                None => ids.iter().copied().collect(),
            };
            let signed = SignedPin {
                signature: pin.signature.to_bytes(),
                chunks: ids.to_vec(),
                erasure: pin.erasure.map(|e| [e.data(), e.parity()]),
            };
            HeldPin { kept, signed }
        });
        Outcome::Reply(Frame::Ack(Ack { id: pin.manifest.0 }), Vec::new())
    }

    /// `Unpin`: refused unless its owner signed it; acked whether or not a
    /// pin was held, and only a pin that was held leaves a tombstone.
    fn unpin(&mut self, unpin: &wire::Unpin, signed_by_owner: bool) -> Outcome {
        if !signed_by_owner {
            return Outcome::Refused(ErrorCode::BAD_SIGNATURE);
        }
        let key = (unpin.owner, unpin.manifest);
        if self.pins.remove(&key).is_some() {
            self.tombstones.insert(key);
        }
        Outcome::Reply(Frame::Ack(Ack { id: unpin.manifest.0 }), Vec::new())
    }

    /// A collection: every chunk no live pin keeps goes, but for the fresh
    /// ones when it keeps the grace. A chunk a pin keeps is never touched,
    /// so whatever a pin needs and was here stays readable.
    fn gc(&mut self, within_grace: bool) -> Outcome {
        let referenced = self.refcounts();
        let mut report = GcReport { chunks_examined: self.chunks.len() as u64, ..GcReport::default() };
        let unreferenced: Vec<ChunkId> =
            self.chunks.keys().filter(|id| !referenced.contains_key(id)).copied().collect();
        for id in unreferenced {
            if within_grace && self.fresh.contains(&id) {
                report.chunks_spared += 1;
            } else if let Some(bytes) = self.chunks.remove(&id) {
                self.fresh.remove(&id);
                report.chunks_deleted += 1;
                report.bytes_freed += bytes.len() as u64;
            }
        }
        Outcome::Collected(report)
    }

    /// Each owner whose pins keep a chunk (here or not): the distinct
    /// chunks they keep that are here, and their bytes.
    fn owner_usage(&self) -> Vec<OwnerUsage> {
        let mut kept: BTreeMap<OwnerId, BTreeSet<ChunkId>> = BTreeMap::new();
        for ((owner, _), pin) in &self.pins {
            if !pin.kept.is_empty() {
                kept.entry(*owner).or_default().extend(&pin.kept);
            }
        }
        kept.into_iter()
            .map(|(owner, ids)| {
                let here: Vec<&Vec<u8>> = ids.iter().filter_map(|id| self.chunks.get(id)).collect();
                OwnerUsage { owner, chunks: here.len() as u64, bytes: here.iter().map(|b| b.len() as u64).sum() }
            })
            .collect()
    }
}

/// Runs `scenario` on a new store at `root` (which must not hold one) and
/// returns the node's outcome of each step; panics at the first step where
/// the node and the model disagree.
pub fn run(root: &Path, scenario: &Scenario) -> Vec<Outcome> {
    let mut node = Node::open(root, scenario.quota.map(|q| u64::from(q % QUOTA_RANGE)));
    let mut outcomes = Vec::new();
    for (step, op) in scenario.ops.iter().take(MAX_STEPS).enumerate() {
        outcomes.push(node.step(step, op));
    }
    outcomes
}

/// A store, the model of it, and what was sent so far.
struct Node {
    root: std::path::PathBuf,
    store: Option<Store>,
    quota: Option<u64>,
    model: Model,
    sent: VecDeque<Sent>,
    world: &'static World,
}

impl Node {
    fn open(root: &Path, quota: Option<u64>) -> Self {
        let mut node = Node {
            root: root.to_owned(),
            store: None,
            quota,
            model: Model::default(),
            sent: VecDeque::new(),
            world: World::get(),
        };
        node.reopen();
        node
    }

    /// Opens the store as a node does: counted before any request.
    fn reopen(&mut self) {
        // The old handle goes first: one open database per file.
        self.store = None;
        let store = Store::open(&self.root).unwrap_or_else(|e| panic!("opening the store: {e:#}"));
        store.chunk_usage().unwrap_or_else(|e| panic!("counting the store: {e:#}"));
        self.store = Some(store);
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open between steps")
    }

    fn requests(&self) -> StoreRequests<'_> {
        StoreRequests::new(self.store(), self.quota)
    }

    /// Applies `op` to the store and the model, compares their outcomes,
    /// then everything the store holds.
    fn step(&mut self, step: usize, op: &Op) -> Outcome {
        let (got, expected) = self.apply(op);
        assert_eq!(got, expected, "step {step} ({op:?}): the node's answer (left) is not the model's (right)");
        self.check(step, op);
        got
    }

    /// The node's outcome and the model's.
    fn apply(&mut self, op: &Op) -> (Outcome, Outcome) {
        let world = self.world;
        match *op {
            Op::PutChunk { chunk, wrong, split } => {
                let id = world.chunk_id(chunk);
                let bytes = world.payload(chunk, wrong);
                let at = usize::from(split) % (bytes.len() + 1);
                let parts = [&bytes[..at], &bytes[at..]];
                let len = bytes.len() as u32;
                // As the handler does: the length, then room under the
                // quota (held until the end), then the bytes.
                let got = (|| {
                    StoreRequests::check_chunk_len(len)?;
                    let _room = self.requests().reserve_chunk_room(&id, len)?;
                    self.requests().put_chunk(&id, &parts)
                })();
                let right = world.content(chunk) == Some(bytes.as_slice());
                (answered(got), self.model.put_chunk(id, &bytes, right, self.quota))
            }
            Op::Has { ref chunks } => {
                let ids: Vec<ChunkId> = chunks.iter().take(MAX_IDS).map(|&c| world.chunk_id(c)).collect();
                (answered(Ok(self.requests().has(&ids))), self.model.has(&ids))
            }
            Op::GetChunk { chunk } => {
                let id = world.chunk_id(chunk);
                (self.get_chunk(id), self.model.get_chunk(id))
            }
            Op::Pin { owner, manifest, ref chunks, erasure, signing } => {
                let sent = pin_request(world, owner, manifest, chunks, erasure, signing);
                self.send(sent)
            }
            Op::Unpin { owner, manifest, signing } => {
                let keys = world.owner(owner);
                let manifest = world.manifest(manifest);
                let (unpin, signed_by_owner) = match signing {
                    UnpinSigning::ByOwner => (signed_unpin(keys, manifest), true),
                    UnpinSigning::ByAnotherOwner(pick) => {
                        let unpin = signed_unpin(world.other_owner(owner, pick), manifest);
                        (wire::Unpin { owner: keys.owner_id(), ..unpin }, false)
                    }
                    UnpinSigning::Corrupted(bit) => {
                        let unpin = signed_unpin(keys, manifest);
                        (wire::Unpin { signature: flip(&unpin.signature, bit), ..unpin }, false)
                    }
                };
                self.send(Sent::Unpin { unpin, signed_by_owner })
            }
            Op::Replay { sent } => {
                if self.sent.is_empty() {
                    return (Outcome::Done, Outcome::Done);
                }
                let again = self.sent[usize::from(sent) % self.sent.len()].clone();
                self.send(again)
            }
            Op::TimePasses => {
                let long_ago = SystemTime::now() - 2 * GRACE;
                for id in self.chunk_files() {
                    let path = self.store().chunk_path(&id);
                    std::fs::File::open(&path)
                        .and_then(|file| file.set_modified(long_ago))
                        .unwrap_or_else(|e| panic!("ageing {}: {e}", path.display()));
                }
                self.model.fresh.clear();
                (Outcome::Done, Outcome::Done)
            }
            Op::Gc { within_grace } => {
                let grace = if within_grace { GRACE } else { Duration::ZERO };
                let report = self.store().gc(grace).unwrap_or_else(|e| panic!("collecting: {e:#}"));
                (Outcome::Collected(report), self.model.gc(within_grace))
            }
            Op::Restart => {
                self.reopen();
                (Outcome::Done, Outcome::Done)
            }
        }
    }

    /// Sends a pin or unpin (kept for replays) to the node and the model.
    fn send(&mut self, sent: Sent) -> (Outcome, Outcome) {
        let outcomes = match &sent {
            Sent::Pin { pin, ids, signed_by_owner } => {
                let payload: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
                (answered(self.requests().pin(pin, payload)), self.model.pin(pin, ids, *signed_by_owner))
            }
            Sent::Unpin { unpin, signed_by_owner } => {
                let got = self.requests().unpin(unpin).map(|(frame, _removed)| frame);
                (answered(got), self.model.unpin(unpin, *signed_by_owner))
            }
        };
        if self.sent.len() == HISTORY {
            self.sent.pop_front();
        }
        self.sent.push_back(sent);
        outcomes
    }

    fn get_chunk(&self, id: ChunkId) -> Outcome {
        match self.requests().get_chunk(&id, Vec::new()) {
            Ok((frame, payload)) => Outcome::Reply(frame, payload),
            Err(refusal) => Outcome::Refused(refusal.code),
        }
    }

    /// Every chunk file in the store, by a walk of its directories.
    fn chunk_files(&self) -> BTreeSet<ChunkId> {
        let store = self.store();
        let dirs = store.chunk_dirs().unwrap_or_else(|e| panic!("listing chunk directories: {e:#}"));
        dirs.iter().flat_map(|dir| store.chunks_in(dir).unwrap_or_else(|e| panic!("listing chunks: {e:#}"))).collect()
    }

    /// Panics unless the store holds exactly what the model says.
    fn check(&self, step: usize, op: &Op) {
        let (store, model) = (self.store(), &self.model);
        let at = |what: &str| format!("step {step} ({op:?}): {what}: the node (left) is not the model (right)");
        let expect_chunks: BTreeSet<ChunkId> = model.chunks.keys().copied().collect();
        assert_eq!(self.chunk_files(), expect_chunks, "{}", at("chunk files on disk"));
        // Every chunk here, pinned or not, is served byte for byte; any
        // other is not found.
        for &id in &self.world.ids {
            assert_eq!(self.get_chunk(id), model.get_chunk(id), "{}", at(&format!("GetChunk {}", id.short(16))));
        }
        let usage = store.chunk_usage().unwrap_or_else(|e| panic!("{}: {e:#}", at("chunk usage")));
        assert_eq!(usage, (model.used(), model.chunks.len() as u64), "{}", at("chunk bytes and count"));
        let meta = store.meta();
        let refcounts: BTreeMap<ChunkId, u64> = meta.refcounts().expect("refcounts read").into_iter().collect();
        assert_eq!(refcounts, model.refcounts(), "{}", at("refcounts"));
        let tombstones: BTreeSet<(OwnerId, ManifestId)> =
            meta.tombstones().expect("tombstones read").into_iter().collect();
        assert_eq!(tombstones, model.tombstones, "{}", at("tombstones"));
        let pins = meta.pins_after(None, usize::MAX, 1 << 20).expect("pins read");
        let expect_pins: Vec<StoredPin> = model
            .pins
            .iter()
            .map(|(&(owner, manifest), held)| StoredPin {
                record: PinRecord { owner, manifest, chunks: held.kept.iter().copied().collect() },
                signed: Some(held.signed.clone()),
            })
            .collect();
        assert_eq!(pins, expect_pins, "{}", at("pins and their signed form"));
        assert_eq!(meta.pin_count().expect("pin count read"), model.pins.len() as u64, "{}", at("pin count"));
        let owners = store.owner_usage().unwrap_or_else(|e| panic!("{}: {e:#}", at("usage per owner")));
        assert_eq!(owners, model.owner_usage(), "{}", at("usage per owner"));
    }
}

/// A `Pin` made as `signing` says, and whether its owner signed it.
fn pin_request(
    world: &World,
    owner: u8,
    manifest: u8,
    chunks: &[u8],
    erasure: Option<(u8, u8)>,
    signing: PinSigning,
) -> Sent {
    let keys = world.owner(owner);
    let manifest = world.manifest(manifest);
    let erasure = erasure.and_then(|(k, m)| Stripes::new(1 + k % 2, 1 + m % 2));
    let mut ids: Vec<ChunkId> = chunks.iter().take(MAX_IDS).map(|&c| world.chunk_id(c)).collect();
    if let Some(stripes) = erasure {
        // Whole stripes only: the decoder refuses any other list.
        ids.truncate(ids.len() - ids.len() % stripes.stride() as usize);
    }
    let (pin, sent_ids, signed_by_owner) = match signing {
        PinSigning::ByOwner => (signed_pin(keys, manifest, &ids, erasure), ids, true),
        PinSigning::ByAnotherOwner(pick) => {
            let pin = signed_pin(world.other_owner(owner, pick), manifest, &ids, erasure);
            (wire::Pin { owner: keys.owner_id(), ..pin }, ids, false)
        }
        PinSigning::Corrupted(bit) => {
            let pin = signed_pin(keys, manifest, &ids, erasure);
            (wire::Pin { signature: flip(&pin.signature, bit), ..pin }, ids, false)
        }
        PinSigning::OtherDomain => {
            let other = match erasure {
                Some(_) => None,
                None => Stripes::new(1, 1),
            };
            let pin = signed_pin(keys, manifest, &ids, other);
            (wire::Pin { erasure, ..pin }, ids, false)
        }
        PinSigning::ListChanged => {
            // Signed over this list with its first id replaced (or over a
            // stripe of the chunk no one has, when it is empty).
            let mut signed = ids.clone();
            match signed.first_mut() {
                Some(first) => *first = if *first == world.ids[0] { world.ids[1] } else { world.ids[0] },
                None => signed = vec![world.ids[usize::from(CHUNKS)]; erasure.map_or(1, |s| s.stride() as usize)],
            }
            let pin = signed_pin(keys, manifest, &signed, erasure);
            (wire::Pin { chunks: ids.len() as u32, ..pin }, ids, false)
        }
    };
    Sent::Pin { pin, ids: sent_ids, signed_by_owner }
}

/// `signature` with one bit flipped.
fn flip(signature: &Signature, bit: u8) -> Signature {
    let mut bytes = signature.to_bytes();
    bytes[usize::from(bit / 8) % 64] ^= 1 << (bit % 8);
    Signature::from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_fresh(quota: Option<u16>, ops: Vec<Op>) -> Vec<Outcome> {
        let dir = tempfile::tempdir().unwrap();
        run(&dir.path().join("store"), &Scenario { quota, ops })
    }

    fn put(chunk: u8) -> Op {
        Op::PutChunk { chunk, wrong: None, split: chunk }
    }

    fn pin(owner: u8, manifest: u8, chunks: &[u8], signing: PinSigning) -> Op {
        Op::Pin { owner, manifest, chunks: chunks.to_vec(), erasure: None, signing }
    }

    fn unpin(owner: u8, manifest: u8, signing: UnpinSigning) -> Op {
        Op::Unpin { owner, manifest, signing }
    }

    fn ack(id: [u8; 32]) -> Outcome {
        Outcome::Reply(Frame::Ack(Ack { id }), Vec::new())
    }

    fn refused(code: ErrorCode) -> Outcome {
        Outcome::Refused(code)
    }

    fn chunk(c: u8) -> ChunkId {
        World::get().chunk_id(c)
    }

    fn manifest(m: u8) -> [u8; 32] {
        World::get().manifest(m).0
    }

    fn collected(examined: u64, deleted: u64, spared: u64, bytes_freed: u64) -> Outcome {
        Outcome::Collected(GcReport {
            chunks_examined: examined,
            chunks_deleted: deleted,
            chunks_spared: spared,
            bytes_freed,
            ..GcReport::default()
        })
    }

    #[test]
    fn a_replayed_pin_stays_refused_after_its_unpin_a_collection_and_a_restart() {
        let ops = vec![
            put(0),
            put(1),
            pin(0, 0, &[0, 1], PinSigning::ByOwner),
            Op::Gc { within_grace: false },
            unpin(0, 0, UnpinSigning::ByOwner),
            Op::Replay { sent: 0 },
            Op::Gc { within_grace: false },
            Op::Restart,
            Op::Replay { sent: 0 },
            pin(0, 0, &[0, 1], PinSigning::ByOwner),
            Op::GetChunk { chunk: 0 },
        ];
        let outcomes = run_fresh(None, ops);
        assert_eq!(
            outcomes,
            vec![
                ack(chunk(0).0),
                ack(chunk(1).0),
                ack(manifest(0)),
                collected(2, 0, 0, 0),
                ack(manifest(0)),
                refused(ErrorCode::UNPINNED),
                collected(2, 2, 0, 16 + 24),
                Outcome::Done,
                refused(ErrorCode::UNPINNED),
                refused(ErrorCode::UNPINNED),
                Outcome::Reply(Frame::NotFound(NotFound { id: chunk(0).0 }), Vec::new()),
            ]
        );
    }

    #[test]
    fn only_the_owner_pins_and_unpins_what_it_names() {
        let ops = vec![
            put(2),
            pin(0, 1, &[2], PinSigning::ByAnotherOwner(0)),
            pin(0, 1, &[2], PinSigning::Corrupted(77)),
            pin(0, 1, &[2], PinSigning::OtherDomain),
            pin(0, 1, &[2], PinSigning::ListChanged),
            pin(0, 1, &[2], PinSigning::ByOwner),
            unpin(0, 1, UnpinSigning::ByAnotherOwner(1)),
            unpin(0, 1, UnpinSigning::Corrupted(3)),
            // Another owner's pin of the same manifest is its own.
            pin(1, 1, &[], PinSigning::ByOwner),
            unpin(1, 1, UnpinSigning::ByOwner),
            Op::Gc { within_grace: false },
            Op::GetChunk { chunk: 2 },
        ];
        let outcomes = run_fresh(None, ops);
        let bytes = World::get().contents[2].clone();
        assert_eq!(
            outcomes,
            vec![
                ack(chunk(2).0),
                refused(ErrorCode::BAD_SIGNATURE),
                refused(ErrorCode::BAD_SIGNATURE),
                refused(ErrorCode::BAD_SIGNATURE),
                refused(ErrorCode::BAD_SIGNATURE),
                ack(manifest(1)),
                refused(ErrorCode::BAD_SIGNATURE),
                refused(ErrorCode::BAD_SIGNATURE),
                ack(manifest(1)),
                ack(manifest(1)),
                collected(1, 0, 0, 0),
                Outcome::Reply(Frame::ChunkData(ChunkData { id: chunk(2), len: bytes.len() as u32 }), bytes),
            ]
        );
    }

    #[test]
    fn wrong_bytes_are_refused_and_store_nothing() {
        let ops = vec![
            Op::PutChunk { chunk: 3, wrong: Some(WrongBytes::OtherChunk(4)), split: 5 },
            Op::PutChunk { chunk: 3, wrong: Some(WrongBytes::FlippedBit(200)), split: 0 },
            Op::PutChunk { chunk: 3, wrong: Some(WrongBytes::Truncated(20)), split: 1 },
            Op::PutChunk { chunk: 3, wrong: Some(WrongBytes::OneByteMore), split: 255 },
            Op::PutChunk { chunk: CHUNKS, wrong: None, split: 0 },
            Op::Has { chunks: vec![3, CHUNKS] },
            put(3),
            Op::PutChunk { chunk: 3, wrong: Some(WrongBytes::FlippedBit(1)), split: 9 },
            Op::Has { chunks: vec![3, CHUNKS, 3] },
        ];
        let outcomes = run_fresh(None, ops);
        let has = |flags: &[bool]| Outcome::Reply(Frame::HasReply(HasReply::from_flags(flags).unwrap()), Vec::new());
        assert_eq!(
            outcomes,
            vec![
                refused(ErrorCode::BAD_FRAME),
                refused(ErrorCode::BAD_FRAME),
                refused(ErrorCode::BAD_FRAME),
                refused(ErrorCode::BAD_FRAME),
                refused(ErrorCode::BAD_FRAME),
                has(&[false, false]),
                ack(chunk(3).0),
                refused(ErrorCode::BAD_FRAME),
                has(&[true, false, true]),
            ]
        );
    }

    #[test]
    fn a_chunk_said_to_be_here_outlives_the_grace_it_was_given() {
        let ops = vec![
            put(0),
            put(1),
            put(2),
            Op::TimePasses,
            Op::Has { chunks: vec![0] },
            // A copy here, sent again, is as good as said to be here.
            put(1),
            Op::Gc { within_grace: true },
            Op::Restart,
            Op::Gc { within_grace: true },
            Op::TimePasses,
            Op::Gc { within_grace: true },
        ];
        let outcomes = run_fresh(None, ops);
        assert_eq!(outcomes[6], collected(3, 1, 2, 32), "the old chunk no one asked about goes");
        assert_eq!(outcomes[8], collected(2, 0, 2, 0), "a restart changes nothing");
        assert_eq!(outcomes[10], collected(2, 2, 0, 16 + 24), "once time passes again, they go");
    }

    #[test]
    fn the_quota_counts_what_is_stored_and_no_refused_chunk() {
        // Chunks 0, 1, 2 take 16, 24 and 32 bytes.
        let ops = vec![
            put(0),
            put(1),
            put(2),
            Op::PutChunk { chunk: 0, wrong: Some(WrongBytes::FlippedBit(0)), split: 0 },
            put(0),
            pin(2, 0, &[0], PinSigning::ByOwner),
            Op::Gc { within_grace: false },
            put(1),
        ];
        let outcomes = run_fresh(Some(QUOTA_RANGE + 40), ops);
        assert_eq!(
            outcomes,
            vec![
                ack(chunk(0).0),
                ack(chunk(1).0),
                refused(ErrorCode::STORAGE_FULL),
                // Held already: past the quota, then refused for its bytes.
                refused(ErrorCode::BAD_FRAME),
                ack(chunk(0).0),
                ack(manifest(0)),
                collected(2, 1, 0, 24),
                ack(chunk(1).0),
            ]
        );
    }

    #[test]
    fn an_erasure_pin_keeps_its_shards_not_the_chunk_that_leads_each_stripe() {
        let ops = vec![
            put(0),
            put(1),
            put(2),
            put(3),
            // K = 1, M = 1: stripes of three ids, the fourth id is cut.
            Op::Pin {
                owner: 1,
                manifest: 2,
                chunks: vec![0, 1, 2, 3],
                erasure: Some((0, 0)),
                signing: PinSigning::ByOwner,
            },
            Op::Gc { within_grace: false },
        ];
        let outcomes = run_fresh(None, ops);
        assert_eq!(outcomes[4], ack(manifest(2)));
        assert_eq!(outcomes[5], collected(4, 2, 0, 16 + 40), "chunk 0 leads the stripe, chunk 3 is in none");
    }
}
