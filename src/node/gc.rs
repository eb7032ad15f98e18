//! Live garbage collection and the storage quota: `serve --gc-grace` and
//! `--max-storage`.
//!
//! A node collects what no pin needs while it serves ([`collect_now_and_then`]):
//! a pass every [`gc_period`] of its grace, and one soon after unpins
//! arrive (they are gathered for [`UNPIN_DEBOUNCE`] first), never two
//! passes closer than [`MIN_GAP`] nor than [`GAP_FACTOR`] times the last
//! pass took, so collection takes at most a fifth of the time. A pass runs
//! on the blocking pool and walks the store in bounded memory
//! ([`crate::store::Store::gc`]); requests go on meanwhile, each waiting at
//! most for one batch of deletions.
//!
//! A chunk is collected only once its file is older than the grace: `Has`,
//! and a `PutChunk` of a chunk already here, refresh its time, so a push
//! in flight (told a chunk is here, pinning it later) loses nothing as
//! long as it pins within the grace (ARCHITECTURE.md, "Garbage collection").

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::NodeState;

/// The grace period a node gives unreferenced chunks by default.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);
/// The longest time between two passes.
pub const MAX_GC_PERIOD: Duration = Duration::from_secs(600);
/// The shortest time between two passes.
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// After a pass that took `t`, the next waits at least `GAP_FACTOR × t`.
pub const GAP_FACTOR: u32 = 4;
/// How long a node gathers unpins before the pass they call for.
pub const UNPIN_DEBOUNCE: Duration = Duration::from_secs(1);

/// How a node keeps its store: `serve --gc-grace` and `--max-storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoragePolicy {
    /// How long a chunk or manifest no pin needs is kept after it was last
    /// written or asked about (`Has`), so that a push in flight is never
    /// collected.
    pub gc_grace: Duration,
    /// The most chunk bytes the node stores; `None`: as many as the disk holds.
    pub max_storage: Option<u64>,
}

impl Default for StoragePolicy {
    fn default() -> Self {
        Self { gc_grace: DEFAULT_GC_GRACE, max_storage: None }
    }
}

/// The time between two scheduled passes for a grace of `grace`: the
/// grace (a chunk spared by one pass is due by the next), at most
/// [`MAX_GC_PERIOD`], at least [`MIN_GAP`].
pub fn gc_period(grace: Duration) -> Duration {
    grace.clamp(MIN_GAP, MAX_GC_PERIOD)
}

/// Raised by every unpin that removed a pin: a pass is due soon.
#[derive(Default)]
pub(crate) struct GcTrigger {
    unpinned: Notify,
}

impl GcTrigger {
    /// Asks for a pass soon (after [`UNPIN_DEBOUNCE`]).
    pub(crate) fn unpinned(&self) {
        self.unpinned.notify_one();
    }
}

/// Collects garbage now and then, and soon after unpins, until aborted.
pub(super) async fn collect_now_and_then(state: Arc<NodeState>) {
    let grace = state.storage.gc_grace;
    let period = gc_period(grace);
    let mut earliest = tokio::time::Instant::now();
    let mut scheduled = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(scheduled) => {}
            () = state.gc_trigger.unpinned.notified() => {
                // Unpins come in bursts (one `rm` of many versions): one pass for all.
                tokio::time::sleep(UNPIN_DEBOUNCE).await;
            }
        }
        tokio::time::sleep_until(earliest).await;
        let started = Instant::now();
        let pass = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || pass.home.store().gc(grace)).await {
            Ok(Ok(report)) if report.chunks_deleted + report.manifests_deleted > 0 => info!(
                "gc: deleted {} chunks and {} manifests ({} bytes); {} unreferenced chunks are within the grace",
                report.chunks_deleted, report.manifests_deleted, report.bytes_freed, report.chunks_spared
            ),
            Ok(Ok(report)) => debug!("gc: nothing to delete; {} chunks within the grace", report.chunks_spared),
            Ok(Err(e)) => warn!("gc: {e:#}"),
            Err(e) => warn!("gc: the pass failed: {e}"),
        }
        let took = started.elapsed();
        let now = tokio::time::Instant::now();
        earliest = now + (took * GAP_FACTOR).max(MIN_GAP);
        scheduled = now + period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_come_every_grace_within_bounds() {
        assert_eq!(gc_period(Duration::ZERO), MIN_GAP);
        assert_eq!(gc_period(Duration::from_secs(90)), Duration::from_secs(90));
        assert_eq!(gc_period(DEFAULT_GC_GRACE), MAX_GC_PERIOD);
    }
}
