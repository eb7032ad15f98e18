//! The scrub: every chunk this node stores is read through BLAKE3 now and
//! then, and a copy whose bytes no longer match its id is quarantined.
//!
//! A node serves chunks without hashing them (the client verifies each one
//! by its id: docs/PROTOCOL.md, "Who verifies a chunk"), so this walk is
//! what finds a copy gone bad that no client has reported. It keeps to
//! [`SCRUB_RATE`], so it costs a node a small, fixed share of a core and of
//! its disk, whatever it is asked for meanwhile. A pass starts at a random
//! chunk directory and wraps around, so a node that restarts more often
//! than a pass takes still gets to every chunk in time. A quarantined chunk
//! is handed to repair, which fetches it again from a replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::NodeState;
use crate::id::ChunkId;
use crate::store::{Store, StoreError};

/// Chunk bytes the scrub reads per second: about a hundredth of a core for
/// BLAKE3, and a pass over a terabyte in a day and a half.
pub const SCRUB_RATE: u64 = 8 << 20;
/// How long after the node starts the first pass begins.
pub const SCRUB_FIRST_DELAY: Duration = Duration::from_secs(60);
/// How long after one pass begins the next one may: a pass that takes
/// longer is followed by the next at once.
pub const SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScrubReport {
    /// Chunks found good.
    pub(crate) good: u64,
    /// Chunks found bad, and quarantined.
    pub(crate) quarantined: u64,
    /// Bytes of the good ones.
    pub(crate) bytes: u64,
}

/// Runs a pass [`SCRUB_FIRST_DELAY`] after the start (or one interval, if
/// `--scrub-interval` is shorter), then one every [`SCRUB_INTERVAL`] (or
/// `--scrub-interval`), until the task is aborted (at shutdown: between two
/// chunks, since each is checked on the blocking pool on its own).
pub(super) async fn scrub_now_and_then(state: Arc<NodeState>) {
    let interval = state.repair.config.scrub_interval;
    tokio::time::sleep(SCRUB_FIRST_DELAY.min(interval)).await;
    loop {
        let started = Instant::now();
        let report = scrub_pass(&state, |s| s.home.store(), SCRUB_RATE, |s, id| s.repair.fetch_later(id)).await;
        info!(
            "scrub: {} chunks ({} bytes) good, {} quarantined, in {:.0} s",
            report.good,
            report.bytes,
            report.quarantined,
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep_until(started + interval).await;
    }
}

/// Checks every chunk of `store(owner)` once, at `rate` bytes per second,
/// quarantining those that do not match their ids and telling `quarantined`
/// of each. A chunk that cannot be read is logged and passed over; the next
/// pass tries it again.
pub(crate) async fn scrub_pass<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    store: fn(&T) -> &Store,
    rate: u64,
    quarantined: impl Fn(&T, ChunkId),
) -> ScrubReport {
    let mut report = ScrubReport::default();
    let dirs = match blocking(owner, move |o| store(o).chunk_dirs()).await {
        Some(Ok(dirs)) => dirs,
        Some(Err(e)) => {
            warn!("scrub: {e:#}");
            return report;
        }
        None => return report,
    };
    let first = if dirs.is_empty() { 0 } else { rand::random_range(0..dirs.len()) };
    let (started, mut read) = (Instant::now(), 0u64);
    for dir in dirs[first..].iter().chain(&dirs[..first]) {
        let dir = dir.clone();
        let ids = match blocking(owner, move |o| store(o).chunks_in(&dir)).await {
            Some(Ok(ids)) => ids,
            Some(Err(e)) => {
                warn!("scrub: {e:#}");
                continue;
            }
            None => continue,
        };
        for id in ids {
            match blocking(owner, move |o| store(o).verify_chunk(&id)).await {
                Some(Ok(Some(len))) => {
                    report.good += 1;
                    report.bytes += len;
                    read += len;
                }
                Some(Ok(None)) | None => {}
                Some(Err(e @ StoreError::ChunkCorrupted { .. })) => {
                    warn!("scrub: {e}");
                    report.quarantined += 1;
                    quarantined(owner, id);
                }
                Some(Err(e)) => warn!("scrub: {e:#}"),
            }
            // On schedule: `read` bytes take `read / rate` seconds.
            tokio::time::sleep_until(started + Duration::from_secs_f64(read as f64 / rate.max(1) as f64)).await;
        }
    }
    report
}

/// Runs `work` on the blocking pool; `None` if the task failed.
async fn blocking<T: Send + Sync + 'static, R: Send + 'static>(
    owner: &Arc<T>,
    work: impl FnOnce(&T) -> R + Send + 'static,
) -> Option<R> {
    let owner = Arc::clone(owner);
    tokio::task::spawn_blocking(move || work(&owner)).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_doc_states_the_scrub_and_repair_figures_in_the_code() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section =
            doc.split("### Who verifies a chunk").nth(1).expect("the section").split("\n### ").next().unwrap();
        assert_eq!(SCRUB_RATE, 8 << 20);
        assert!(section.contains("8 MiB/s"));
        assert_eq!(SCRUB_INTERVAL, Duration::from_secs(24 * 60 * 60));
        assert!(section.contains("a pass a day at most"));
        assert_eq!(SCRUB_FIRST_DELAY, Duration::from_secs(60));
        assert!(section.contains("a minute after"));
        assert_eq!(crate::transfer::fetch::REPAIR_TIMEOUT, Duration::from_secs(5));
        assert!(section.contains("waiting at most 5 s"));

        let repair = doc.split("### Repair (").nth(1).expect("the repair section").split("\n### ").next().unwrap();
        let flat = repair.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(super::super::DEFAULT_REPLICAS, 3);
        assert!(flat.contains("default 3"));
        assert_eq!(super::super::DEFAULT_REPAIR_INTERVAL, Duration::from_secs(600));
        assert!(flat.contains("(default 10 min)"));
        assert_eq!(super::super::UNREACHABLE_AFTER, Duration::from_secs(60));
        assert!(flat.contains("has not answered for a minute"));
        assert!(flat.contains("every 15 s at most"));
        assert_eq!((super::super::PINS_PER_BATCH, super::super::IDS_PER_BATCH), (256, 32 * 1024));
        assert!(flat.contains("at most 256 pins and 32 Ki chunk ids"));
        assert_eq!(super::super::DEFAULT_REPAIR_RATE, 32 << 20);
        assert!(flat.contains("(default 32 MiB/s;"));
    }

    #[tokio::test]
    async fn a_pass_quarantines_the_bad_copies_and_keeps_the_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let ids: Vec<ChunkId> = (0..12u8)
            .map(|i| {
                let bytes = vec![i; 100];
                let id = ChunkId::of(&bytes);
                store.put_chunk(&id, &bytes).unwrap();
                id
            })
            .collect();
        for bad in &ids[..3] {
            let path = store.chunk_path(bad);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[7] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
        }
        let told = std::sync::Mutex::new(Vec::new());
        let report = scrub_pass(&store, |s| s, u64::MAX, |_, id| told.lock().unwrap().push(id)).await;
        assert_eq!(report, ScrubReport { good: 9, quarantined: 3, bytes: 900 });
        let mut told = told.into_inner().unwrap();
        told.sort_unstable();
        let mut bad = ids[..3].to_vec();
        bad.sort_unstable();
        assert_eq!(told, bad, "each quarantined chunk is handed on to be fetched again");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(store.has_chunk(id), i >= 3, "chunk {i}");
        }
        let again = scrub_pass(&store, |s| s, u64::MAX, |_, _| {}).await;
        assert_eq!(again, ScrubReport { good: 9, quarantined: 0, bytes: 900 }, "nothing left to find");
    }

    #[tokio::test]
    async fn a_pass_keeps_to_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        for i in 0..4u8 {
            let bytes = vec![i; 1000];
            store.put_chunk(&ChunkId::of(&bytes), &bytes).unwrap();
        }
        let started = Instant::now();
        let report = scrub_pass(&store, |s| s, 20_000, |_, _| {}).await;
        assert_eq!(report.good, 4);
        // 4000 bytes at 20 000 a second: a fifth of a second at least.
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    }
}
