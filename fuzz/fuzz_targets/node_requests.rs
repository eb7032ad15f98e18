//! Sequences of data requests from several owners (chunks with right and
//! wrong bytes, `Has`, pins and unpins signed well and badly, replays) and
//! collections and restarts between them, applied to a real store through
//! the node's own request logic and checked after every step against a
//! plain model (`p2pfs::node::request_model`): it panics, naming the step
//! and what differed, at the first disagreement.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p2pfs::node::request_model::{Scenario, run};

/// This process's scratch directory, emptied before and after each input.
/// Under /dev/shm where there is one: every step fsyncs, which on a disk
/// would slow the run a hundredfold, and nothing here outlives a crash.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let parent = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        parent.join(format!("p2pfs-fuzz-node-requests-{}", std::process::id()))
    })
}

fuzz_target!(|scenario: Scenario| {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    run(&dir.join("store"), &scenario);
    let _ = std::fs::remove_dir_all(dir);
});
