//! What a command costs at 100,000 versions against 10 (issue 13): `push`
//! of a small file, `pull` of the latest version, the first 10 lines of
//! `log NAME`, and `ls`, each the real `p2pfs` binary on a local home, in
//! the same run. The histories are built through the library (signed,
//! sealed log entries committed to the home's store, as `push` commits
//! them); the first command after that indexes them, which is timed apart.
//!
//! `cargo bench --bench history [-- VERSIONS RUNS]` (defaults 100000 and 7).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p2pfs::home::Home;
use p2pfs::id::ManifestId;
use p2pfs::manifest::log::{History, LogOp, LogRecord};

const BIN: &str = env!("CARGO_BIN_EXE_p2pfs");
/// The name most versions are of, whose log is read.
const BIG: &str = "big.bin";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let large: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().expect("a temp dir");
    if std::env::var_os("P2PFS_BENCH_KEEP").is_some() {
        println!("keeping the homes in {}", dir.path().display());
    }
    let mut small = Bench::new(dir.path(), "small", 10);
    let mut large = Bench::new(dir.path(), "large", large);
    for bench in [&mut small, &mut large] {
        let started = Instant::now();
        bench.run(&["ls"]);
        bench.index_build = Some(started.elapsed());
    }
    println!(
        "index built by the first command: {:.3} s at {} versions, {:.3} s at {} versions",
        small.index_build.unwrap_or_default().as_secs_f64(),
        small.versions,
        large.index_build.unwrap_or_default().as_secs_f64(),
        large.versions
    );

    let mut rows = Vec::new();
    for (what, measure) in [
        ("push (4 KiB, new content)", Bench::push as fn(&Bench, usize) -> Duration),
        ("pull of the latest version", Bench::pull),
        ("log NAME, first 10 lines", Bench::log_head),
        ("ls", Bench::ls),
    ] {
        // The two homes take turns, so drift in the machine's speed hits both.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for run in 0..runs {
            a.push(measure(&small, run));
            b.push(measure(&large, run));
        }
        rows.push((what, median(a), median(b)));
    }
    println!(
        "\n{:<28} {:>14} {:>16} {:>7}",
        "median of runs",
        format!("{} versions", small.versions),
        format!("{} versions", large.versions),
        "ratio"
    );
    for (what, a, b) in &rows {
        let ratio = b.as_secs_f64() / a.as_secs_f64();
        println!("{what:<28} {:>11.1} ms {:>13.1} ms {ratio:>6.2}x", ms(*a), ms(*b));
    }
    for bench in [&small, &large] {
        println!(
            "{} versions: history.redb {:.2} MiB, store meta.redb {:.2} MiB",
            bench.versions,
            mib(&bench.home.join("history.redb")),
            mib(&bench.home.join("store/meta.redb"))
        );
    }
    if std::env::var_os("P2PFS_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
}

struct Bench {
    home: PathBuf,
    work: PathBuf,
    versions: u64,
    index_build: Option<Duration>,
}

impl Bench {
    /// A home whose log has `versions` versions: most of `BIG`, one each of
    /// five other names, and one real version of `bench.bin` to pull.
    fn new(root: &Path, label: &str, versions: u64) -> Self {
        let home = root.join(label).join("home");
        let work = root.join(label).join("work");
        std::fs::create_dir_all(&work).expect("a work dir");
        let bench = Self { home, work, versions, index_build: None };
        bench.run(&["init"]);
        bench.push(0);
        let home = Home::open(&bench.home).expect("the home opens");
        let owner = home.keys().owner_keys();
        let store = home.store();
        let mut history = History::replay(&owner, store.meta().log(&owner.owner_id(), 0).expect("the log reads"))
            .expect("the log replays");
        let mut batch = Vec::new();
        for n in 1..versions {
            let name = if n <= 5 { format!("other-{n}.bin") } else { BIG.to_owned() };
            let manifest = ManifestId(*blake3::hash(format!("{label} {n}").as_bytes()).as_bytes());
            let op = LogOp::Push { name, manifest, size: 4096 + n, chunks: 1, new_bytes: 4096 };
            let record = LogRecord { time_ms: 1_700_000_000_000 + n * 3_600_000, op };
            batch.push(history.append(&owner, record, rand_nonce(n)).expect("the entry seals"));
            if batch.len() == 1000 || n + 1 == versions {
                store.meta().commit(&batch, &[], &[], &[]).expect("the entries commit");
                batch.clear();
            }
        }
        bench
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).env("P2PFS_HOME", &self.home).env_remove("RUST_LOG").current_dir(&self.work);
        command
    }

    fn run(&self, args: &[&str]) {
        let out = self.command(args).output().expect("p2pfs runs");
        assert!(out.status.success(), "p2pfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn timed(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        self.run(args);
        started.elapsed()
    }

    fn push(&self, run: usize) -> Duration {
        let file = self.work.join("bench.bin");
        // New bytes each time, so each push records a version.
        let mut data = vec![0u8; 4096];
        let seed = format!("{} {run} {:?}", self.versions, std::time::SystemTime::now());
        blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut data);
        std::fs::write(&file, &data).expect("the input writes");
        self.timed(&["-q", "push", file.to_str().expect("a UTF-8 path")])
    }

    fn pull(&self, _run: usize) -> Duration {
        self.timed(&["-q", "pull", "bench.bin", "-o", "pulled.bin", "--force"])
    }

    fn ls(&self, _run: usize) -> Duration {
        self.timed(&["ls"])
    }

    /// Until the command exits after its reader took 10 lines and left.
    fn log_head(&self, _run: usize) -> Duration {
        let started = Instant::now();
        let mut child = self.command(&["log", BIG]).stdout(Stdio::piped()).spawn().expect("p2pfs runs");
        let stdout = child.stdout.take().expect("piped");
        let lines = BufReader::new(stdout).lines().take(10).count();
        // The header, then the versions of BIG (all but the first six).
        assert_eq!(lines, 10.min(1 + self.versions as usize - 6), "log lines");
        let status = child.wait().expect("p2pfs exits");
        assert!(status.success(), "log {BIG} exits cleanly when its reader leaves");
        started.elapsed()
    }
}

fn rand_nonce(n: u64) -> [u8; 24] {
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    nonce
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
}
