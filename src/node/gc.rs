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

/// A `serve` size: plain bytes, or a number with a unit: `K`/`KB`
/// (1000), `KiB` (1024), and likewise `M`, `G`, `T` (powers of 1000) and
/// `MiB`, `GiB`, `TiB` (powers of 1024); case does not matter, `B` may follow.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let bad = || format!("{text:?} is not a size: write bytes (1048576) or a number and a unit (500MiB, 10G, 2TB)");
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "ti" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is more bytes than a node can count"));
    }
    Ok(bytes as u64)
}

/// A `serve` duration: a whole number and a unit, `s`, `m`, `h` or `d`
/// (`0s`, `90s`, `10m`, `1h`, `2d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration: write a whole number and s, m, h or d (90s, 10m, 1h, 2d)");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let number: u64 = text[..split].parse().map_err(|_| bad())?;
    let unit: u64 = match &text[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_kinds_of_unit() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10_000_000_000));
        assert_eq!(parse_size("10 gib"), Ok(10 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        for bad in ["", "MiB", "10 furlongs", "1.2.3G", "-5", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "10", "h", "1.5h", "10 m", "-1s", "1w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passes_come_every_grace_within_bounds() {
        assert_eq!(gc_period(Duration::ZERO), MIN_GAP);
        assert_eq!(gc_period(Duration::from_secs(90)), Duration::from_secs(90));
        assert_eq!(gc_period(DEFAULT_GC_GRACE), MAX_GC_PERIOD);
    }
}
