//! `p2pfs serve`'s storage options: live collection and the quota.

use std::time::Duration;

use super::units;
use crate::node::StoragePolicy;

/// How a node keeps its store (flattened into `serve`'s options).
#[derive(Debug, clap::Args)]
pub(super) struct StorageArgs {
    /// Keep chunks and manifests no pin needs for this long after they were
    /// last written or asked about, so that a push in flight is never
    /// collected: a whole number and s, m, h or d (0s, 90s, 10m, 1h, 2d)
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = units::parse_duration)]
    gc_grace: Duration,
    /// Store at most this many chunk bytes: a node at its quota refuses new
    /// chunks (pushes place them on the next node). Bytes, or a number and
    /// a unit: K, M, G, T are powers of 1000, KiB, MiB, GiB, TiB of 1024
    /// (500MiB, 10G)
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    max_storage: Option<u64>,
}

impl StorageArgs {
    /// The node's storage policy.
    pub(super) fn policy(&self) -> StoragePolicy {
        StoragePolicy { gc_grace: self.gc_grace, max_storage: self.max_storage }
    }
}
