//! GC benchmark: a store with N chunk records (default 1,000,000), half of
//! them kept by pins and half not, collected once; prints the pass's time
//! and the peak resident memory of the process that ran it.
//!
//! ```text
//! cargo run --release --example gc_bench [-- N]      (scripts/bench-gc.sh)
//! ```
//!
//! The store is built through the library in a temp dir on tmpfs
//! (`/dev/shm`, or `$P2PFS_BENCH_DIR`) and removed after. Chunk files are
//! empty: a collection's work per chunk (list, look up, stat, delete) does
//! not depend on its size, and a million real chunks would not fit in
//! memory on tmpfs. The pins are 1000 chunks each, one owner. The
//! collection runs in a child process of its own, so that its peak RSS
//! (`getrusage` `ru_maxrss`) is the collection's, not the build's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use p2pfs::id::{ChunkId, ManifestId, OwnerId};
use p2pfs::store::{PinRecord, Store};

/// Chunks per pin.
const PIN_LEN: usize = 1000;

fn chunk(i: u64) -> ChunkId {
    ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid start.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss
}

fn build(root: &Path, records: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(root)?;
    let owner = OwnerId([7; 32]);
    let referenced = records / 2;
    let mut ids = Vec::with_capacity(PIN_LEN);
    for i in 0..records {
        let id = chunk(i);
        let path = store.chunk_path(&id);
        let dir = path.parent().expect("chunk paths have a parent");
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
        }
        fs::File::create(&path)?;
        if i < referenced {
            ids.push(id);
            if ids.len() == PIN_LEN || i + 1 == referenced {
                let manifest = ManifestId(*blake3::hash(&i.to_be_bytes()).as_bytes());
                store.meta().pin(&PinRecord { owner, manifest, chunks: std::mem::take(&mut ids) })?;
            }
        }
    }
    Ok(())
}

fn collect(root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(root)?;
    let started = Instant::now();
    let report = store.gc(Duration::ZERO)?;
    let took = started.elapsed();
    println!(
        "gc: {} chunk records examined, {} deleted in {:.2} s ({:.0} records/s); peak RSS {} MiB",
        report.chunks_examined,
        report.chunks_deleted,
        took.as_secs_f64(),
        report.chunks_examined as f64 / took.as_secs_f64(),
        peak_rss_kib() / 1024
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("--collect") {
        collect(Path::new(&args[2]))
    } else {
        let records: u64 = match args.get(1).map(|n| n.parse()) {
            None => 1_000_000,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                eprintln!("usage: gc_bench [RECORDS]");
                return ExitCode::from(2);
            }
        };
        let base = std::env::var_os("P2PFS_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| if Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() });
        (|| -> Result<(), Box<dyn std::error::Error>> {
            let dir = tempfile_dir(&base)?;
            let root = dir.join("store");
            let started = Instant::now();
            let built = build(&root, records);
            eprintln!("built {records} chunk records ({}) in {:.1} s", dir.display(), started.elapsed().as_secs_f64());
            let collected = built.and_then(|()| {
                let status = Command::new(std::env::current_exe()?).arg("--collect").arg(&root).status()?;
                if status.success() { Ok(()) } else { Err(format!("the collection failed: {status}").into()) }
            });
            fs::remove_dir_all(&dir)?;
            collected
        })()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gc_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A new directory under `base`.
fn tempfile_dir(base: &Path) -> std::io::Result<PathBuf> {
    let dir = base.join(format!("p2pfs-gc-bench-{}", std::process::id()));
    fs::create_dir(&dir)?;
    Ok(dir)
}
