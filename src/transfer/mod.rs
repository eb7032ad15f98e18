//! The pipelines that move file versions in and out of a store.
//!
//! - [`push`]: chunk → seal → store, then manifest and log entry.
//! - [`pull`]: read → verify → open → write in order.
//! - [`swarm`]: the peers of one transfer; [`replicate`] makes them a push
//!   destination, [`fetch`] a pull source; [`placement`] ranks them.
//! - [`record`]: recording a version and retracting one (pins, unpins, log
//!   entries): one path for every kind of home.
//! - [`catalog`]: a home's records, in its store or through the node that
//!   serves it ([`daemon`]).
//!
//! Both pipelines run on a fixed number of threads with a fixed number of
//! chunk buffers ([`Parallelism`]): memory does not grow with file size.

pub mod catalog;
pub mod check;
pub mod daemon;
pub mod fetch;
pub mod index;
pub mod network_log;
pub mod placement;
pub mod pull;
pub mod push;
pub mod record;
pub mod replicate;
pub mod shards;
pub mod swarm;

use std::io;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::chunk::InvalidChunkerConfig;
use crate::id::{ChunkId, ManifestId};
use crate::manifest::ManifestError;
use crate::manifest::log::LogError;
use crate::store::StoreError;

/// A push, pull or removal that failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading the input failed.
    #[error("reading the input")]
    ReadInput {
        /// The OS error.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing the output")]
    WriteOutput {
        /// The OS error.
        source: io::Error,
    },
    /// The output file could not be created or moved into place.
    #[error("creating {path}")]
    CreateOutput {
        /// The output path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A chunk matched its id but did not decrypt: the manifest's key for it is wrong.
    #[error("chunk {0} does not decrypt with the key its manifest gives")]
    ChunkAuth(ChunkId),
    /// A pipeline thread stopped before finishing its work.
    #[error("the transfer was interrupted before every chunk was processed")]
    Interrupted,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest could not be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The owner's log could not be read or extended.
    #[error("the version log cannot be used")]
    Log(#[from] LogError),
    /// A chunk did not reach enough peers.
    #[error("chunk {chunk} reached {acked} of the {wanted} peers it needs: {reasons}")]
    Replication {
        /// The chunk.
        chunk: ChunkId,
        /// Durable acks received.
        acked: usize,
        /// Replicas wanted.
        wanted: usize,
        /// What went wrong with the others.
        reasons: String,
    },
    /// No peer kept a version's manifest and pin.
    #[error("no peer kept manifest {manifest} and its pin: {reasons}")]
    Unpublished {
        /// The manifest.
        manifest: ManifestId,
        /// What each peer said.
        reasons: String,
    },
    /// No member that holds the owner's log took a new entry.
    #[error("no peer holding this owner's log took the new entry: {reasons}")]
    LogUnpublished {
        /// What each holder said.
        reasons: String,
    },
    /// The input has more chunks than one manifest may list.
    #[error(
        "the input is over {max_chunks} chunks, the most one version may have ({max_gib} GiB at this home's \
         average chunk size): raise [chunker] avg_size in config.toml (up to 4 MiB), or split the input"
    )]
    TooManyChunks {
        /// The limit (`manifest::MAX_CHUNKS`).
        max_chunks: usize,
        /// What that is in GiB at the configured average chunk size.
        max_gib: u64,
    },
    /// An erasure-coded input has more chunks than one pin may list with their shards.
    #[error(
        "the input is {chunks} chunks; erasure coded, one version may have at most {most} (a pin lists each \
         chunk and its shards): raise [chunker] avg_size in config.toml, use fewer shards, or split the input"
    )]
    TooManyStripes {
        /// Chunks of the input.
        chunks: usize,
        /// The most an erasure-coded version may have with this code.
        most: usize,
    },
    /// Fewer peers answered than an erasure-coded push needs.
    #[error(
        "--erasure {code} puts each chunk's {width} shards on {width} different nodes, and only {live} answered: \
         start more nodes, or choose a code with K+M at most {live} (e.g. --erasure {hint}), or use --replicas"
    )]
    TooFewNodes {
        /// The code asked for, K+M.
        code: String,
        /// K + M.
        width: usize,
        /// Peers that answered.
        live: usize,
        /// A code that fits.
        hint: String,
    },
    /// No live peer could give a chunk.
    #[error("no peer could give chunk {chunk} ({live} peers still usable): {reasons}")]
    ChunkUnavailable {
        /// The chunk.
        chunk: ChunkId,
        /// Peers still usable.
        live: usize,
        /// What each peer said.
        reasons: String,
    },
    /// No peer could give a manifest.
    #[error("none of {peers} peers has manifest {manifest}: {reasons}")]
    ManifestUnavailable {
        /// The manifest.
        manifest: ManifestId,
        /// Peers asked.
        peers: usize,
        /// What each peer said.
        reasons: String,
    },
    /// The node serving this home failed a request.
    #[error("the node serving this home: {source}")]
    Node {
        /// What went wrong.
        source: crate::net::NetError,
    },
    /// A name, version or id does not resolve in the owner's log.
    #[error(transparent)]
    Resolve(#[from] crate::manifest::log::ResolveError),
    /// A share ticket cannot be read.
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    /// A chunk could not be cut into shards or rebuilt from them.
    #[error(transparent)]
    Erasure(#[from] crate::erasure::ErasureError),
    /// Shards that each match their id rebuilt bytes that do not match the
    /// chunk's: the manifest's stripe for it is wrong.
    #[error("the shards of chunk {0} rebuild other bytes than the chunk: its manifest's stripe is wrong")]
    StripeMismatch(ChunkId),
    /// The chunker configuration is invalid.
    #[error(transparent)]
    Chunker(#[from] InvalidChunkerConfig),
}

impl TransferError {
    /// Whether the home's log moved on while this command ran (another
    /// push or rm of the same owner appended first): making the entry again
    /// on top of the log as it is now is the fix.
    pub fn is_log_conflict(&self) -> bool {
        match self {
            TransferError::Store(StoreError::LogConflict { .. }) => true,
            TransferError::Node { source } => source.remote_code() == Some(crate::wire::ErrorCode::LOG_CONFLICT.0),
            _ => false,
        }
    }
}

/// How often a command makes its log entries again after another command
/// of the same owner appended first.
pub(crate) const MAX_LOG_RETRIES: usize = 8;

/// How many threads and chunk buffers a pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Worker threads (sealing and storing, or reading and opening).
    pub workers: usize,
    /// Chunk buffers in flight; memory is at most this × the maximum chunk size.
    pub buffers: usize,
}

impl Parallelism {
    /// Enough workers to keep every core busy while others wait on fsync,
    /// and enough buffers to keep every worker fed.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = (2 * cores).clamp(4, 32);
        Self { workers, buffers: workers + 4 }
    }

    /// For transfers to and from peers: each worker waits on one request in
    /// flight, so there are more of them than cores.
    pub fn for_network() -> Self {
        Self { workers: 16, buffers: 20 }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_time_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
