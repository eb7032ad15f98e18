//! The owner's log as the network holds it, so that the owner key alone
//! brings every name and version back.
//!
//! Each owner's log is kept by [`LOG_HOLDERS`] members: the live ones that
//! rank highest for its OwnerId, by the same rendezvous hashing that places
//! chunks. The home keeps its own copy. [`NetworkLog`] wraps the home's
//! records ([`Catalog`]) and makes the two agree:
//!
//! - Reading ([`Catalog::log`]): each of the best-ranked members is asked
//!   for what it holds past the home's copy; every answer is verified (the
//!   owner's signature, the hash chain). The longest member copy wins (on
//!   a tie, the one whose last entry has the lowest hash, whichever members
//!   answered), and the home's copy if it carries that one further. A copy that went apart from it
//!   (two machines of the owner appended while they could not see each
//!   other) is not dropped: the versions and removals only it has are
//!   appended again on top of the winner, in their order ("rebased"), so no
//!   push is ever lost. Holders that lag get what they miss, and the home's
//!   copy takes the result (for commands that may write it).
//! - Appending ([`Catalog::record`]): the new entries go to the primary
//!   holder first (the best-ranked one whose copy agrees), which takes them
//!   only if they follow what it holds. If it refuses (`LogConflict`), another
//!   command of this owner appended first: the caller reads the log again
//!   and makes its entries on top (push and rm do, [`super::MAX_LOG_RETRIES`]
//!   times). Then the other holders, then the home's copy.
//!
//! A hostile member cannot forge an entry (they are signed) nor win with an
//! older copy (it is shorter); it can only withhold, which costs it its say.
//! Nor can it hold a command up by not answering: each log request has
//! [`LOG_REPLY_TIMEOUT`], and a member that misses it is dropped for the
//! rest of the command, as one that misses any deadline is.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::TransferError;
use super::catalog::{Catalog, Change};
use super::index::HistoryIndex;
use super::swarm::Swarm;
use crate::crypto::OwnerKeys;
use crate::id::{ChunkId, ManifestId};
use crate::manifest::log::{History, LogEntry, LogOp, LogRecord};
use crate::net::{NetError, Peer};
use crate::wire::ErrorCode;

/// How many members hold each owner's log.
pub const LOG_HOLDERS: usize = 3;
/// How many of the best-ranked members a read asks: the holders, and a few
/// after them, which held the log before newer members outranked them.
const LOG_READERS: usize = 2 * LOG_HOLDERS;
/// How long a member may take to answer one log request (a `GetLog` page,
/// an `AppendLog`). A node answers either with one small store transaction,
/// so far sooner; the general `REPLY_TIMEOUT` (30 s) would let one member
/// that answers everything else but the log hold each of the owner's
/// commands that long, once per read.
pub const LOG_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one member's whole copy may take to read, every page of it: a
/// holder that sends one entry a page, each just inside
/// [`LOG_REPLY_TIMEOUT`], holds a command this long at most, not 5 s per
/// entry. An honest node sends up to `MAX_LOG_BATCH` entries a page.
pub const LOG_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The home's records, with the owner's log kept in step with the members
/// that hold it (see the module doc).
pub struct NetworkLog<'a> {
    inner: &'a dyn Catalog,
    /// What the home has verified of the log: where an incremental read
    /// starts, and what it must agree with.
    index: &'a HistoryIndex,
    swarm: &'a Swarm,
    /// Whether the home's copy of the log may be rewritten (push, rm);
    /// read-only commands only read it.
    persist: bool,
    /// What the last read found.
    synced: Mutex<Synced>,
    /// What went wrong with members along the way, for the summary.
    notes: Mutex<Vec<String>>,
}

/// What the last read found: the members whose copies agree with the
/// result (best first), how long the result was, and whose log it is.
#[derive(Clone, Default)]
struct Synced {
    holders: Vec<usize>,
    len: u64,
    owner: Option<OwnerKeys>,
}

/// What an incremental read of one member's copy found.
enum Read {
    /// Its entries from the one asked for on (not empty).
    Tail(Vec<LogEntry>),
    /// It holds nothing from there on; its newest entry, if any, which
    /// comes before.
    Head(Option<LogEntry>),
    /// It holds nothing from there on, and said no more: its whole copy.
    Whole(Vec<LogEntry>),
}

/// One member's copy of the log, as read.
struct Copy {
    member: usize,
    /// The whole log it holds, verified; `None` if it sent what does not verify.
    entries: Option<Vec<LogEntry>>,
}

impl<'a> NetworkLog<'a> {
    /// Wraps `inner`, the home's records; with `persist`, reads also bring
    /// the home's copy of the log up to date.
    pub fn new(inner: &'a dyn Catalog, index: &'a HistoryIndex, swarm: &'a Swarm, persist: bool) -> Self {
        Self { inner, index, swarm, persist, synced: Mutex::default(), notes: Mutex::new(Vec::new()) }
    }

    /// What went wrong with members' copies (unreachable, refused, altered),
    /// once per member.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        notes.dedup();
        notes
    }

    fn note(&self, note: String) {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner).push(note);
    }

    /// Reads each of the best-ranked members' copies: past the home's copy
    /// when they agree with its last entry, whole when they do not.
    fn read_copies(&self, owner: &OwnerKeys, local: &[LogEntry]) -> Vec<Copy> {
        let readers: Vec<usize> =
            self.swarm.ranked(owner.owner_id().as_bytes()).into_iter().take(LOG_READERS).collect();
        let overlap = local.len().saturating_sub(1) as u64;
        let last = local.last().map(LogEntry::encode);
        let reads = readers.iter().map(|&index| {
            let last = last.clone();
            self.swarm.with_retry(index, move |peer| {
                let last = last.clone();
                let short = peer.node_id().short(16);
                let read = async move {
                    let tail = read_chain(&peer, owner, overlap, None).await?;
                    // It agrees with the home's copy up to its last entry:
                    // what it sent is the rest. Otherwise read it whole.
                    match (&last, tail.first()) {
                        (None, _) => Ok((0, tail)),
                        (Some(last), Some(first)) if first.encode() == *last => Ok((overlap, tail)),
                        _ => Ok((0, read_chain(&peer, owner, 0, None).await?)),
                    }
                };
                async move {
                    tokio::time::timeout(LOG_READ_TIMEOUT, read)
                        .await
                        .map_err(|_| NetError::Timeout { node: short, what: "reading the owner's log" })?
                }
            })
        });
        let results = self.swarm.client().run_all(reads);
        readers
            .into_iter()
            .zip(results)
            .filter_map(|(member, result)| {
                let short = self.swarm.member(member).node().short(16);
                match result {
                    Ok((from, tail)) => {
                        let entries = self.verify(owner, local, from, tail);
                        if entries.is_none() {
                            self.note(format!("{short} holds a copy of the log that does not verify; it is ignored"));
                        }
                        Some(Copy { member, entries })
                    }
                    Err(e) => {
                        self.note(format!("{short} did not give its copy of the log: {e}"));
                        self.failed(member, &e);
                        None
                    }
                }
            })
            .collect()
    }

    /// The whole log a member holds: the home's entries before `from`, then
    /// what it sent, if all of it verifies as one chain.
    fn verify(&self, owner: &OwnerKeys, local: &[LogEntry], from: u64, tail: Vec<LogEntry>) -> Option<Vec<LogEntry>> {
        let mut entries: Vec<LogEntry> = local[..from as usize].to_vec();
        entries.extend(tail);
        History::replay(owner, entries.iter().cloned()).ok()?;
        Some(entries)
    }

    /// The log to use, from the home's copy and the members' (see the
    /// module doc), made known to the holders that lag and, with
    /// `persist`, to the home's copy.
    fn sync(&self, owner: &OwnerKeys) -> Result<Vec<LogEntry>, TransferError> {
        let local = self.inner.log_from(owner, 0)?;
        // The home's own copy is checked as any other (replay fails on damage).
        History::replay(owner, local.iter().cloned())?;
        let copies = self.read_copies(owner, &local);
        let valid: Vec<(usize, &Vec<LogEntry>)> =
            copies.iter().filter_map(|c| c.entries.as_ref().map(|e| (c.member, e))).collect();

        // The longest member copy (on a tie, the one whose last entry has
        // the lowest hash: the same choice whichever members answered),
        // then the home's if it carries that one further.
        let rank = |entries: &Vec<LogEntry>| (entries.len(), std::cmp::Reverse(entries.last().map(LogEntry::hash)));
        let mut base: Vec<LogEntry> =
            valid.iter().map(|(_, e)| *e).max_by_key(|e| rank(e)).cloned().unwrap_or_default();
        if is_prefix(&base, &local) {
            base = local.clone();
        }
        let mut history = History::replay(owner, base.iter().cloned())?;
        let mut chain = base;
        // What only another copy has goes on top, oldest first.
        let mut seen: HashSet<[u8; 32]> = chain.iter().map(LogEntry::hash).collect();
        let others = std::iter::once(&local).chain(valid.iter().map(|(_, e)| *e));
        for other in others {
            for entry in other {
                if !seen.insert(entry.hash()) {
                    continue;
                }
                let record = entry.open(owner)?;
                if needs_rebase(&history, &record) {
                    let nonce = rebase_nonce(&entry.hash(), chain.len() as u64, chain.last().map(LogEntry::hash));
                    chain.push(history.append(owner, record, nonce)?);
                }
            }
        }

        // Holders that agree with the result, best first; they get what they lack.
        let mut agreeing = Vec::new();
        let mut catch_up = Vec::new();
        for (member, entries) in &valid {
            if is_prefix(entries, &chain) {
                agreeing.push(*member);
                if entries.len() < chain.len() {
                    catch_up.push((*member, entries.len()));
                }
            } else {
                let short = self.swarm.member(*member).node().short(16);
                self.note(format!("{short} holds a copy of the log that went apart; its versions were kept"));
            }
        }
        let holders: Vec<usize> = agreeing.iter().copied().take(LOG_HOLDERS).collect();
        catch_up.retain(|(member, _)| holders.contains(member));
        self.append_to(&catch_up, &chain);
        // One that missed a deadline taking what it lacks is no holder now.
        let live = self.swarm.live_members();
        let holders: Vec<usize> = holders.into_iter().filter(|m| live.contains(m)).collect();
        *self.synced.lock().unwrap_or_else(PoisonError::into_inner) =
            Synced { holders, len: chain.len() as u64, owner: Some(owner.clone()) };

        if self.persist && chain != local {
            let common = local.iter().zip(&chain).take_while(|(a, b)| a == b).count();
            self.inner.adopt_log(owner, common as u64, &chain[common..])?;
        }
        Ok(chain)
    }

    /// The log from entry `from` on, read incrementally: the home's index
    /// holds entry `from`, and every copy that answers either carries that
    /// same entry (then only what follows it is read and checked) or ends
    /// before it and is a prefix of the home's copy. `None` when some copy
    /// went apart, or the home's own copy does not hold the entry: the
    /// whole log is then merged ([`Self::sync`]).
    fn sync_from(&self, owner: &OwnerKeys, from: u64) -> Result<Option<Vec<LogEntry>>, TransferError> {
        let owner_id = owner.owner_id();
        let Some(anchor) = self.index.hash_at(&owner_id, from)? else { return Ok(None) };
        let home = self.inner.log_from(owner, from)?;
        // The home's copy may end before the entry (a command that only
        // reads does not write it, so it lags what the index learned from
        // members before); one that appends builds on it, so merges whole.
        let home_lags = home.is_empty() && !self.persist;
        if home.first().map(LogEntry::hash) != Some(anchor) && !home_lags {
            return Ok(None);
        }
        let readers: Vec<usize> = self.swarm.ranked(owner_id.as_bytes()).into_iter().take(LOG_READERS).collect();
        let reads = readers.iter().map(|&index| {
            self.swarm.with_retry(index, move |peer| {
                let short = peer.node_id().short(16);
                let read = async move {
                    let tail = read_chain(&peer, owner, from, None).await?;
                    if !tail.is_empty() {
                        return Ok(Read::Tail(tail));
                    }
                    // A copy that ends before `from` says where it ends with
                    // its head (one entry), not by being read whole; unless
                    // it has no head to give, or a newer one (a head also
                    // comes to every member when a version is published).
                    let head = in_time(&peer, peer.get_head(owner)).await.ok();
                    let decoded = head.as_ref().map(|h| h.as_deref().map(|b| LogEntry::decode(0, b)));
                    match decoded {
                        Some(None) => Ok(Read::Head(None)),
                        Some(Some(Ok(entry))) if entry.seq < from => Ok(Read::Head(Some(entry))),
                        _ => Ok(Read::Whole(read_chain(&peer, owner, 0, None).await?)),
                    }
                };
                async move {
                    tokio::time::timeout(LOG_READ_TIMEOUT, read)
                        .await
                        .map_err(|_| NetError::Timeout { node: short, what: "reading the owner's log" })?
                }
            })
        });
        let results = self.swarm.client().run_all(reads);
        // The copies that carry the anchor: what they hold from `from` on;
        // and the copies that end before it: their lengths.
        let mut extending: Vec<(usize, Vec<LogEntry>)> = Vec::new();
        let mut lagging: Vec<(usize, u64)> = Vec::new();
        for (member, result) in readers.into_iter().zip(results) {
            let short = self.swarm.member(member).node().short(16);
            match result {
                Ok(Read::Tail(copy)) => {
                    if copy.first().map(LogEntry::hash) != Some(anchor) {
                        return Ok(None);
                    }
                    extending.push((member, copy));
                }
                Ok(Read::Head(None)) => lagging.push((member, 0)),
                Ok(Read::Head(Some(head))) => {
                    // The owner's entry, before `from`: a prefix of what the
                    // index holds, or a copy that went apart (merged whole).
                    if head.owner != owner_id || head.verify_signature().is_err() {
                        self.note(format!("{short} sent a head of the log that is not the owner's; it is ignored"));
                        continue;
                    }
                    if self.index.hash_at(&owner_id, head.seq)? != Some(head.hash()) {
                        return Ok(None);
                    }
                    lagging.push((member, head.seq + 1));
                }
                Ok(Read::Whole(copy)) => {
                    // Read whole (checked as it came): a prefix, or apart.
                    let len = copy.len() as u64;
                    let last = copy.last().map(LogEntry::hash);
                    if len >= from || (len > 0 && self.index.hash_at(&owner_id, len - 1)? != last) {
                        return Ok(None);
                    }
                    lagging.push((member, len));
                }
                Err(e) => {
                    self.note(format!("{short} did not give its copy of the log: {e}"));
                    self.failed(member, &e);
                }
            }
        }

        // The longest member copy (on a tie, the one whose last entry has
        // the lowest hash), then the home's if it carries that one further;
        // every other copy must be where it starts, or the whole log is merged.
        let rank = |entries: &Vec<LogEntry>| (entries.len(), std::cmp::Reverse(entries.last().map(LogEntry::hash)));
        let mut chain: Vec<LogEntry> =
            extending.iter().map(|(_, e)| e).max_by_key(|e| rank(e)).cloned().unwrap_or_default();
        if is_prefix(&chain, &home) {
            chain = home.clone();
        }
        if !is_prefix(&home, &chain) || extending.iter().any(|(_, e)| !is_prefix(e, &chain)) {
            return Ok(None);
        }
        // What the copies that stop short lack: from the home's copy before
        // `from`, then the chain.
        let end = from + chain.len() as u64;
        let mut ranked: Vec<(usize, u64)> =
            extending.iter().map(|(m, e)| (*m, from + e.len() as u64)).chain(lagging).collect();
        let order = self.swarm.ranked(owner_id.as_bytes());
        ranked.sort_by_key(|(m, _)| order.iter().position(|o| o == m));
        ranked.truncate(LOG_HOLDERS);
        let holders: Vec<usize> = ranked.iter().map(|(m, _)| *m).collect();
        let mut catch_up = Vec::new();
        for (member, len) in ranked.into_iter().filter(|(_, len)| *len < end) {
            let mut missing: Vec<LogEntry> = Vec::new();
            if len < from {
                // From the home's copy, each entry the one the index holds
                // (never an old branch of the home's).
                for entry in self.inner.log_from(owner, len)?.into_iter().take((from - len) as usize) {
                    if self.index.hash_at(&owner_id, entry.seq)? != Some(entry.hash()) {
                        break;
                    }
                    missing.push(entry);
                }
                if missing.len() as u64 != from - len {
                    // The home's copy lacks them too: a later command catches it up.
                    continue;
                }
            }
            missing.extend(chain[(len.max(from) - from) as usize..].iter().cloned());
            catch_up.push((member, missing));
        }
        self.catch_up(&catch_up);
        let live = self.swarm.live_members();
        let holders: Vec<usize> = holders.into_iter().filter(|m| live.contains(m)).collect();
        *self.synced.lock().unwrap_or_else(PoisonError::into_inner) =
            Synced { holders, len: end, owner: Some(owner.clone()) };
        if chain.is_empty() {
            // No copy holds the entry the index ends with: merge whole.
            return Ok(None);
        }
        if self.persist && chain.len() > home.len() {
            // Only what opens: the home's copy never takes an entry the
            // index would refuse.
            for entry in &chain[home.len()..] {
                entry.open(owner)?;
            }
            self.inner.adopt_log(owner, from + home.len() as u64, &chain[home.len()..])?;
        }
        Ok(Some(chain))
    }

    /// Sends each member the entries it lacks, all members at once, each
    /// within [`LOG_READ_TIMEOUT`]; failures are only noted (the next
    /// command catches them up).
    fn catch_up(&self, lacking: &[(usize, Vec<LogEntry>)]) {
        let calls = lacking.iter().map(|(member, entries)| async move {
            let short = self.swarm.member(*member).node().short(16);
            tokio::time::timeout(LOG_READ_TIMEOUT, self.append(*member, entries))
                .await
                .map_err(|_| NetError::Timeout { node: short, what: "taking the log entries it lacks" })?
        });
        for ((member, _), result) in lacking.iter().zip(self.swarm.client().run_all(calls)) {
            if let Err(e) = result {
                let short = self.swarm.member(*member).node().short(16);
                self.note(format!("{short} did not take the log entries it lacks: {e}"));
                self.failed(*member, &e);
            }
        }
    }

    /// Sends each member the entries of `chain` from its length on, in
    /// order; failures are only noted (the next read catches them up).
    fn append_to(&self, members: &[(usize, usize)], chain: &[LogEntry]) {
        let calls = members.iter().map(|&(member, from)| self.append(member, &chain[from..]));
        for ((member, _), result) in members.iter().zip(self.swarm.client().run_all(calls)) {
            if let Err(e) = result {
                let short = self.swarm.member(*member).node().short(16);
                self.note(format!("{short} did not take the log entries it lacks: {e}"));
                self.failed(*member, &e);
            }
        }
    }

    async fn append(&self, member: usize, entries: &[LogEntry]) -> Result<(), NetError> {
        for entry in entries {
            let (encoded, hash) = (entry.encode(), entry.hash());
            let encoded = &encoded;
            let append = |peer: Peer| async move { in_time(&peer, peer.append_log(encoded.clone(), hash)).await };
            self.swarm.with_retry(member, append).await?;
        }
        Ok(())
    }

    /// Drops `member` for the rest of the command if `e` says it is gone
    /// or missed a deadline, as the chunk pipelines do.
    fn failed(&self, member: usize, e: &NetError) {
        if Swarm::disqualifies(e) {
            self.swarm.drop_member(member, e);
        }
    }
}

impl Catalog for NetworkLog<'_> {
    /// From `from` on when every copy agrees with the home's index up to
    /// there and none went apart after it; otherwise the whole log, merged
    /// as the module doc says.
    fn log_from(&self, owner: &OwnerKeys, from: u64) -> Result<Vec<LogEntry>, TransferError> {
        if from > 0
            && let Some(tail) = self.sync_from(owner, from)?
        {
            return Ok(tail);
        }
        self.sync(owner)
    }

    fn sealed(&self, tag: &[u8; 32]) -> Result<Option<ChunkId>, TransferError> {
        self.inner.sealed(tag)
    }

    fn manifest(&self, id: &ManifestId) -> Result<Option<Vec<u8>>, TransferError> {
        self.inner.manifest(id)
    }

    /// The entries go to the primary holder, which must take them, then to
    /// the other holders, then into the home's records.
    fn record(&self, change: Change<'_>) -> Result<(), TransferError> {
        let Synced { holders, len, owner } = self.synced.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if change.entries.is_empty() {
            return self.inner.record(change);
        }
        let mut refusals = Vec::new();
        let mut primary = None;
        for (i, &member) in holders.iter().enumerate() {
            let short = self.swarm.member(member).node().short(16);
            match self.swarm.client().run(self.append(member, change.entries)) {
                Ok(()) => {
                    primary = Some(i);
                    break;
                }
                Err(e) if e.remote_code() == Some(ErrorCode::LOG_CONFLICT.0) => {
                    // A real conflict means the holder's copy moved on since
                    // it was read; a holder that refuses without holding more
                    // is not believed, and the next one is asked.
                    let moved_on = owner.as_ref().is_none_or(|owner| {
                        let peer = self.swarm.member(member).peer();
                        let newer = self.swarm.client().run(read_chain(&peer, owner, len, None));
                        newer.is_ok_and(|more| !more.is_empty())
                    });
                    if moved_on {
                        return Err(TransferError::Node { source: e });
                    }
                    self.note(format!("{short} refused the new log entries though it holds nothing newer"));
                    refusals.push(format!("{short}: {e}"));
                }
                // Unreachable or failing: the next holder becomes the primary.
                Err(e) => {
                    self.failed(member, &e);
                    refusals.push(format!("{short}: {e}"));
                }
            }
        }
        match primary {
            Some(i) => {
                // The primary took them: the rest only follow.
                let rest: Vec<(usize, usize)> = holders[i + 1..].iter().map(|&m| (m, 0)).collect();
                let calls = rest.iter().map(|&(m, _)| self.append(m, change.entries));
                for (&(m, _), result) in rest.iter().zip(self.swarm.client().run_all(calls)) {
                    if let Err(e) = result {
                        let short = self.swarm.member(m).node().short(16);
                        self.note(format!("{short} did not take the new log entries: {e}"));
                        self.failed(m, &e);
                    }
                }
            }
            None if !holders.is_empty() => {
                return Err(TransferError::LogUnpublished { reasons: refusals.join("; ") });
            }
            None => {}
        }
        self.inner.record(change)
    }

    fn adopt_log(&self, owner: &OwnerKeys, from: u64, entries: &[LogEntry]) -> Result<(), TransferError> {
        self.inner.adopt_log(owner, from, entries)
    }
}

/// A member's copy of the owner's log from `from` on, page by page, each
/// entry checked as it arrives: it decodes, has the next sequence number,
/// names its predecessor's hash and carries the owner's signature. A member
/// can so send no more than the owner wrote; the first entry that fails
/// ends the read with an error.
async fn read_chain(
    peer: &Peer,
    owner: &OwnerKeys,
    from: u64,
    mut prev: Option<[u8; 32]>,
) -> Result<Vec<LogEntry>, NetError> {
    let bad = |why: String| NetError::Stream {
        node: peer.node_id().short(16),
        reason: format!("its copy of the log: {why}"),
    };
    let mut entries: Vec<LogEntry> = Vec::new();
    loop {
        let next = from + entries.len() as u64;
        let (page, more) = in_time(peer, peer.get_log_page(owner, next)).await?;
        let got = page.len();
        for (seq, bytes) in (next..).zip(page) {
            let entry = LogEntry::decode(seq, &bytes).map_err(|e| bad(e.to_string()))?;
            let chained = entry.seq == seq && entry.owner == owner.owner_id() && prev.is_none_or(|p| p == entry.prev);
            if !chained {
                return Err(bad(format!("entry {seq} does not follow the one before")));
            }
            entry.verify_signature().map_err(|e| bad(e.to_string()))?;
            prev = Some(entry.hash());
            entries.push(entry);
        }
        if !more || got == 0 {
            return Ok(entries);
        }
    }
}

/// A log request to `peer`, which must answer within [`LOG_REPLY_TIMEOUT`].
async fn in_time<T>(peer: &Peer, request: impl Future<Output = Result<T, NetError>>) -> Result<T, NetError> {
    tokio::time::timeout(LOG_REPLY_TIMEOUT, request)
        .await
        .map_err(|_| NetError::Timeout { node: peer.node_id().short(16), what: "a log request" })?
}

/// The nonce of an entry rebased as entry `seq` after `prev`: derived, so
/// the same merge makes the same entries wherever and whenever it runs (a
/// command that cannot store its result does not see a rewritten log the
/// next time). It repeats only for the same record at the same place after
/// the same entry, which seals to the very same bytes.
fn rebase_nonce(original: &[u8; 32], seq: u64, prev: Option<[u8; 32]>) -> [u8; crate::crypto::XNONCE_LEN] {
    let mut hasher = blake3::Hasher::new_derive_key("p2pfs log rebase nonce v1");
    hasher.update(original).update(&seq.to_le_bytes()).update(&prev.unwrap_or_default());
    let mut nonce = [0; crate::crypto::XNONCE_LEN];
    hasher.finalize_xof().fill(&mut nonce);
    nonce
}

/// Whether `short` is where `long` starts.
fn is_prefix(short: &[LogEntry], long: &[LogEntry]) -> bool {
    short.len() <= long.len() && short.iter().zip(long).all(|(a, b)| a == b)
}

/// Whether an entry of another copy says something `history` lacks: a
/// version it does not have, or the removal of one it has live.
fn needs_rebase(history: &History, record: &LogRecord) -> bool {
    match &record.op {
        LogOp::Push { manifest, .. } => history.by_manifest(manifest).is_none(),
        LogOp::Remove { manifest } => history.by_manifest(manifest).is_some_and(|v| v.is_live()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_request_gets_less_time_than_other_replies() {
        // A holder that answers all but the log must cost a command less
        // than the general reply deadline each time it is asked.
        assert!(LOG_REPLY_TIMEOUT < crate::net::REPLY_TIMEOUT);
        assert_eq!(LOG_REPLY_TIMEOUT, Duration::from_secs(5), "docs/PROTOCOL.md, \"Deadlines\"");
        assert_eq!(LOG_READ_TIMEOUT, Duration::from_secs(20), "docs/PROTOCOL.md, \"Deadlines\"");
    }
}
