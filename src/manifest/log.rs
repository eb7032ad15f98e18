//! The per-owner version log: append-only, hash-chained, sealed and signed
//! (docs/FORMAT.md, "Log entry").
//!
//! Each [`LogEntry`] records one push or one removal. Its body is sealed with
//! the owner's log key (names are private), its header names the owner, its
//! sequence number and the hash of the previous entry, and the owner's
//! signature covers all of it, so a storage node can check an entry without
//! reading it. [`History::replay`] verifies a whole log and folds it into the
//! versions the CLI shows. Time is a parameter; this module does no I/O.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError, OwnerKeys, SIGNATURE_LEN, Signature, XNONCE_LEN};
use crate::id::{IdPrefix, ManifestId, OwnerId};

/// Version of the log entry layout.
pub const LOG_ENTRY_VERSION: u8 = 1;
/// Largest encoded log entry accepted, in bytes.
pub const MAX_LOG_ENTRY_LEN: usize = 64 * 1024;
const SIGN_DOMAIN: &str = "p2pfs log-entry v1";

/// BLAKE3 of an encoded entry; each entry names its predecessor's.
pub type EntryHash = [u8; 32];

/// One entry as stored and sent: header, sealed record, signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Layout version, [`LOG_ENTRY_VERSION`].
    pub version: u8,
    /// Whose log this is.
    pub owner: OwnerId,
    /// Position in the log, from 0 without gaps.
    pub seq: u64,
    /// Hash of entry `seq - 1`; all zeros for entry 0.
    pub prev: EntryHash,
    /// Nonce of the sealed record.
    pub nonce: [u8; XNONCE_LEN],
    /// The [`LogRecord`], postcard-encoded and sealed with the log key.
    pub sealed: Vec<u8>,
    /// Ed25519 signature by `owner` over everything above.
    pub signature: Vec<u8>,
}

/// What one entry says, once opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What happened.
    pub op: LogOp,
}

/// The operations a log records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    /// A new version of `name` was pushed.
    Push {
        /// The file's name.
        name: String,
        /// The version's manifest.
        manifest: ManifestId,
        /// Plaintext size in bytes.
        size: u64,
        /// Number of chunks.
        chunks: u64,
        /// Plaintext bytes of chunks the store did not have before.
        new_bytes: u64,
    },
    /// A version was removed (a tombstone).
    Remove {
        /// The removed version's manifest.
        manifest: ManifestId,
    },
}

/// A log that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// An entry's bytes do not decode.
    #[error("log entry {seq} is malformed: {reason}")]
    Malformed {
        /// Its position.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// Entries are missing or out of order.
    #[error("log entry {found} follows entry {expected_prev}: entries are missing")]
    Gap {
        /// The sequence number expected before `found`.
        expected_prev: u64,
        /// The sequence number found.
        found: u64,
    },
    /// An entry names the wrong predecessor.
    #[error("log entry {0} does not chain to its predecessor: the log was altered")]
    BrokenChain(u64),
    /// An entry belongs to another owner's log.
    #[error("log entry {0} belongs to another owner")]
    WrongOwner(u64),
    /// Signature or seal failed.
    #[error("log entry {seq} fails verification")]
    Crypto {
        /// Its position.
        seq: u64,
        /// What failed.
        source: CryptoError,
    },
    /// A tombstone names a version the log does not have, or has removed already.
    #[error("log entry {seq} removes {manifest}, which is not a live version")]
    RemoveUnknown {
        /// Its position.
        seq: u64,
        /// The manifest it names.
        manifest: ManifestId,
    },
}

impl LogEntry {
    /// Seals and signs `record` as entry `seq` after `prev`.
    pub fn seal(owner: &OwnerKeys, seq: u64, prev: EntryHash, record: &LogRecord, nonce: [u8; XNONCE_LEN]) -> Self {
        let mut entry = Self {
            version: LOG_ENTRY_VERSION,
            owner: owner.owner_id(),
            seq,
            prev,
            nonce,
            sealed: Vec::new(),
            signature: Vec::new(),
        };
        let record = postcard::to_stdvec(record).expect("log records always encode");
        entry.sealed = crypto::xseal(owner.log_key(), &nonce, &entry.associated_data(), &record);
        entry.signature = owner.sign(SIGN_DOMAIN, &entry.signed_bytes()).to_bytes().to_vec();
        entry
    }

    /// Checks the signature against the owner the entry names.
    pub fn verify_signature(&self) -> Result<(), LogError> {
        let signature: &[u8; SIGNATURE_LEN] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| LogError::Crypto { seq: self.seq, source: CryptoError::BadSignature })?;
        crypto::verify(&self.owner, SIGN_DOMAIN, &self.signed_bytes(), &Signature::from_bytes(signature))
            .map_err(|source| LogError::Crypto { seq: self.seq, source })
    }

    /// Verifies and opens the record. Only the owner can.
    pub fn open(&self, owner: &OwnerKeys) -> Result<LogRecord, LogError> {
        if self.owner != owner.owner_id() {
            return Err(LogError::WrongOwner(self.seq));
        }
        self.verify_signature()?;
        let record = crypto::xopen(owner.log_key(), &self.nonce, &self.associated_data(), &self.sealed)
            .map_err(|source| LogError::Crypto { seq: self.seq, source })?;
        let malformed = |reason: String| LogError::Malformed { seq: self.seq, reason };
        let (record, rest) = postcard::take_from_bytes(&record).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes in record".into()));
        }
        Ok(record)
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("log entries always encode")
    }

    /// Parses the stored form, refusing oversize input and trailing bytes.
    pub fn decode(seq: u64, bytes: &[u8]) -> Result<Self, LogError> {
        let malformed = |reason: String| LogError::Malformed { seq, reason };
        if bytes.len() > MAX_LOG_ENTRY_LEN {
            return Err(malformed(format!("{} bytes, more than {MAX_LOG_ENTRY_LEN}", bytes.len())));
        }
        let (entry, rest): (Self, _) = postcard::take_from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        if entry.version != LOG_ENTRY_VERSION {
            return Err(malformed(format!("unknown version {}", entry.version)));
        }
        Ok(entry)
    }

    /// This entry's hash, which the next entry names as `prev`.
    pub fn hash(&self) -> EntryHash {
        *blake3::hash(&self.encode()).as_bytes()
    }

    fn associated_data(&self) -> Vec<u8> {
        postcard::to_stdvec(&(self.version, &self.owner, self.seq, &self.prev)).expect("tuples of plain values encode")
    }

    fn signed_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&(self.version, &self.owner, self.seq, &self.prev, &self.nonce, &self.sealed))
            .expect("tuples of plain values encode")
    }
}

/// One pushed version, as the log tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The file's name.
    pub name: String,
    /// 1 for the first push of the name, then 2, 3, …; never reused.
    pub number: u32,
    /// Its manifest.
    pub manifest: ManifestId,
    /// When it was pushed (ms since the Unix epoch).
    pub pushed_ms: u64,
    /// Plaintext size.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Plaintext bytes that were new to the store.
    pub new_bytes: u64,
    /// When it was removed, if it was.
    pub removed_ms: Option<u64>,
}

impl Version {
    /// Version `number` of what `record` pushed (`None` if it removes one).
    pub fn pushed(number: u32, record: &LogRecord) -> Option<Self> {
        let LogOp::Push { name, manifest, size, chunks, new_bytes } = &record.op else { return None };
        Some(Version {
            name: name.clone(),
            number,
            manifest: *manifest,
            pushed_ms: record.time_ms,
            size: *size,
            chunks: *chunks,
            new_bytes: *new_bytes,
            removed_ms: None,
        })
    }

    /// Whether it has not been removed.
    pub fn is_live(&self) -> bool {
        self.removed_ms.is_none()
    }

    /// `name@number`, the way users name it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.number)
    }
}

/// Why a name or id does not select a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing matches.
    #[error("no file or version '{0}' in the log; `p2pfs ls` lists what there is")]
    NotFound(String),
    /// No name matches, and as an id prefix it is too short to use.
    #[error(
        "no file named '{0}' in the log, and an id prefix needs {min} or more hex digits; `p2pfs log` shows the ids",
        min = crate::id::MIN_PREFIX_LEN
    )]
    ShortPrefix(String),
    /// The name exists but not that version.
    #[error("'{name}' has no version {number}; its versions are {existing}")]
    NoSuchVersion {
        /// The name.
        name: String,
        /// The version asked for.
        number: u32,
        /// The versions it has, e.g. "1, 2, 4".
        existing: String,
    },
    /// The version was removed.
    #[error("{0} was removed; `p2pfs log` shows the live versions")]
    Removed(String),
    /// An id prefix matches several versions.
    #[error("id prefix '{prefix}' is ambiguous: it matches {candidates}; give more characters")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The matching versions.
        candidates: String,
    },
}

/// The verified, folded log of one owner.
#[derive(Debug, Clone, Default)]
pub struct History {
    versions: Vec<Version>,
    next_seq: u64,
    head: EntryHash,
}

impl History {
    /// Verifies `entries` (in sequence order) and folds them into versions.
    pub fn replay(owner: &OwnerKeys, entries: impl IntoIterator<Item = LogEntry>) -> Result<Self, LogError> {
        let mut history = Self::default();
        for entry in entries {
            if entry.seq != history.next_seq {
                return Err(LogError::Gap { expected_prev: history.next_seq.wrapping_sub(1), found: entry.seq });
            }
            if entry.prev != history.head {
                return Err(LogError::BrokenChain(entry.seq));
            }
            let record = entry.open(owner)?;
            history.apply(entry.seq, entry.hash(), record)?;
        }
        Ok(history)
    }

    /// Makes the next entry for `record` and applies it.
    pub fn append(
        &mut self,
        owner: &OwnerKeys,
        record: LogRecord,
        nonce: [u8; XNONCE_LEN],
    ) -> Result<LogEntry, LogError> {
        let entry = LogEntry::seal(owner, self.next_seq, self.head, &record, nonce);
        self.apply(entry.seq, entry.hash(), record)?;
        Ok(entry)
    }

    fn apply(&mut self, seq: u64, hash: EntryHash, record: LogRecord) -> Result<(), LogError> {
        match record.op {
            LogOp::Push { ref name, .. } => {
                let number = self.versions.iter().filter(|v| v.name == *name).count() as u32 + 1;
                self.versions.extend(Version::pushed(number, &record));
            }
            LogOp::Remove { manifest } => {
                let version = self
                    .versions
                    .iter_mut()
                    .find(|v| v.manifest == manifest && v.is_live())
                    .ok_or(LogError::RemoveUnknown { seq, manifest })?;
                version.removed_ms = Some(record.time_ms);
            }
        }
        self.next_seq = seq + 1;
        self.head = hash;
        Ok(())
    }

    /// Every version ever pushed, oldest first, removed ones included.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The versions of one name, oldest first, removed ones included.
    pub fn versions_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Version> + 'a {
        self.versions.iter().filter(move |v| v.name == name)
    }

    /// The version with this manifest, if the log has it.
    pub fn by_manifest(&self, id: &ManifestId) -> Option<&Version> {
        self.versions.iter().find(|v| v.manifest == *id)
    }

    /// Names with at least one live version, sorted.
    pub fn live_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.versions.iter().filter(|v| v.is_live()).map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The versions `spec` selects: `NAME` (all its live versions, oldest
    /// first), `NAME@N` (one), or a unique manifest id prefix of at least 8
    /// hex characters (one). An exact live name wins over an id prefix.
    pub fn select<'a>(&'a self, spec: &'a str) -> Result<Vec<&'a Version>, ResolveError> {
        let exact: Vec<&Version> = self.versions_of(spec).filter(|v| v.is_live()).collect();
        if !exact.is_empty() {
            return Ok(exact);
        }
        if let Some((name, number)) = spec.rsplit_once('@')
            && let Ok(number) = number.parse::<u32>()
            && self.versions_of(name).next().is_some()
        {
            let version = self.versions_of(name).find(|v| v.number == number).ok_or_else(|| {
                let existing = self.versions_of(name).filter(|v| v.is_live()).map(|v| v.number.to_string());
                ResolveError::NoSuchVersion {
                    name: name.to_owned(),
                    number,
                    existing: existing.collect::<Vec<_>>().join(", "),
                }
            })?;
            return live(version).map(|v| vec![v]);
        }
        if let Ok(prefix) = spec.parse::<IdPrefix>() {
            let matches: Vec<&Version> = self.versions.iter().filter(|v| prefix.matches(&v.manifest)).collect();
            match matches.as_slice() {
                [] => {}
                [one] => return live(one).map(|v| vec![v]),
                many => {
                    let candidates = many.iter().map(|v| format!("{} ({})", v.manifest.short(12), v.label()));
                    return Err(ResolveError::Ambiguous {
                        prefix: prefix.as_str().to_owned(),
                        candidates: candidates.collect::<Vec<_>>().join(", "),
                    });
                }
            }
        }
        if self.versions_of(spec).next().is_some() {
            return Err(ResolveError::Removed(format!("every version of '{spec}'")));
        }
        if spec.len() >= 4 && spec.len() < crate::id::MIN_PREFIX_LEN && spec.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ResolveError::ShortPrefix(spec.to_owned()));
        }
        Err(ResolveError::NotFound(spec.to_owned()))
    }

    /// The one version `spec` selects; a bare name selects its latest live version.
    pub fn select_one<'a>(&'a self, spec: &'a str) -> Result<&'a Version, ResolveError> {
        let versions = self.select(spec)?;
        Ok(versions.last().copied().expect("select never returns an empty list"))
    }
}

fn live(version: &Version) -> Result<&Version, ResolveError> {
    if version.is_live() { Ok(version) } else { Err(ResolveError::Removed(version.label())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner() -> OwnerKeys {
        OwnerKeys::derive(&[7; 32])
    }

    fn push(name: &str, manifest: u8) -> LogRecord {
        LogRecord {
            time_ms: 1_700_000_000_000 + u64::from(manifest),
            op: LogOp::Push {
                name: name.into(),
                manifest: ManifestId([manifest; 32]),
                size: 10,
                chunks: 1,
                new_bytes: 10,
            },
        }
    }

    fn remove(manifest: u8) -> LogRecord {
        LogRecord { time_ms: 1_800_000_000_000, op: LogOp::Remove { manifest: ManifestId([manifest; 32]) } }
    }

    fn build(records: Vec<LogRecord>) -> (History, Vec<LogEntry>) {
        let mut history = History::default();
        let entries =
            records.into_iter().enumerate().map(|(i, r)| history.append(&owner(), r, [i as u8; 24]).unwrap()).collect();
        (history, entries)
    }

    #[test]
    fn replay_rebuilds_versions_and_tombstones() {
        let (_, entries) = build(vec![push("a", 1), push("b", 2), push("a", 3), remove(1)]);
        let history = History::replay(&owner(), entries).unwrap();
        let a: Vec<_> = history.versions_of("a").map(|v| (v.number, v.is_live())).collect();
        assert_eq!(a, [(1, false), (2, true)]);
        assert_eq!(history.live_names(), ["a", "b"]);
        assert_eq!(history.select_one("a").unwrap().manifest, ManifestId([3; 32]));
        assert_eq!(history.select("a@1"), Err(ResolveError::Removed("a@1".into())));
        assert!(matches!(history.select("a@7"), Err(ResolveError::NoSuchVersion { number: 7, .. })));
        assert_eq!(history.select_one(&"02".repeat(5)).unwrap().name, "b");
        assert!(matches!(history.select("c"), Err(ResolveError::NotFound(_))));
    }

    #[test]
    fn ambiguous_prefix_is_refused() {
        let mut a = [0xaa; 32];
        let mut b = [0xaa; 32];
        a[31] = 1;
        b[31] = 2;
        let record = |m: [u8; 32]| LogRecord {
            time_ms: 0,
            op: LogOp::Push { name: "f".into(), manifest: ManifestId(m), size: 0, chunks: 0, new_bytes: 0 },
        };
        let (history, _) = build(vec![record(a), record(b)]);
        assert!(matches!(history.select("aaaaaaaa"), Err(ResolveError::Ambiguous { .. })));
    }

    #[test]
    fn altered_logs_are_refused() {
        let (_, entries) = build(vec![push("a", 1), push("b", 2), push("c", 3)]);

        let mut dropped = entries.clone();
        dropped.remove(1);
        assert!(matches!(History::replay(&owner(), dropped), Err(LogError::Gap { .. })));

        let mut tampered = entries.clone();
        tampered[1].sealed[0] ^= 1;
        assert!(matches!(History::replay(&owner(), tampered), Err(LogError::Crypto { seq: 1, .. })));

        let mut swapped = entries.clone();
        swapped[1].prev = [9; 32];
        assert!(History::replay(&owner(), swapped).is_err());

        let other = OwnerKeys::derive(&[8; 32]);
        assert_eq!(History::replay(&other, entries).unwrap_err(), LogError::WrongOwner(0));
    }

    #[test]
    fn removing_twice_is_refused() {
        let mut history = History::default();
        history.append(&owner(), push("a", 1), [0; 24]).unwrap();
        history.append(&owner(), remove(1), [1; 24]).unwrap();
        assert!(matches!(history.append(&owner(), remove(1), [2; 24]), Err(LogError::RemoveUnknown { .. })));
    }

    proptest! {
        #[test]
        fn entries_round_trip(name in ".{0,40}", manifest in any::<u8>(), seq in any::<u64>(), prev in any::<[u8; 32]>()) {
            let entry = LogEntry::seal(&owner(), seq, prev, &push(&name, manifest), [5; 24]);
            let decoded = LogEntry::decode(seq, &entry.encode()).unwrap();
            prop_assert_eq!(&decoded, &entry);
            prop_assert_eq!(decoded.open(&owner()).unwrap(), push(&name, manifest));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = LogEntry::decode(0, &bytes);
        }
    }
}
