//! Harness for tests that run the real `p2pfs` binary against temp homes.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Chunk sizes small enough that a few MiB make many chunks.
pub const SMALL_CHUNKS: (u32, u32, u32) = (16 * 1024, 64 * 1024, 256 * 1024);

/// Every chunk file in the store of the home at `home`.
pub fn chunk_files_in(home: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for outer in read_dir(&home.join("store/chunks")) {
        for inner in read_dir(&outer) {
            out.extend(read_dir(&inner));
        }
    }
    out
}

/// One home directory and a working directory for inputs and outputs.
pub struct Node {
    pub home: PathBuf,
    pub work: PathBuf,
    _dir: TempDir,
}

impl Node {
    /// A node whose home does not exist yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        Self { home, work, _dir: dir }
    }

    /// A node with an initialised home using `chunks` (min, avg, max).
    pub fn with_chunks(chunks: (u32, u32, u32)) -> Self {
        let node = Self::new();
        node.ok(&["init"]);
        node.set_chunker(chunks);
        node
    }

    /// The binary, with this node's home and working directory.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_p2pfs"));
        command.env("P2PFS_HOME", &self.home).env_remove("RUST_LOG").current_dir(&self.work);
        command
    }

    /// Runs `p2pfs ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().expect("run p2pfs")
    }

    /// Runs `p2pfs ARGS` with `input` on its standard input.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run p2pfs");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().expect("wait for p2pfs")
    }

    /// Runs `p2pfs ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "p2pfs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Runs `p2pfs ARGS`, which must fail with `code`; returns its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "p2pfs {args:?}: expected exit {code}, stderr: {stderr}");
        stderr
    }

    /// Pushes a file and returns the manifest id it printed.
    pub fn push(&self, file: &Path, extra: &[&str]) -> String {
        let mut args = vec!["push", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let id = self.ok(&args).trim().to_owned();
        assert_eq!(id.len(), 64, "push prints a 64-hex id, got {id:?}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        id
    }

    /// Pushes with `--json` and returns the report.
    pub fn push_json(&self, file: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["push", "--json", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&args)).expect("push --json prints JSON")
    }

    /// Writes `config.toml` with these chunk sizes.
    pub fn set_chunker(&self, (min, avg, max): (u32, u32, u32)) {
        let text = format!("[chunker]\nmin_size = {min}\navg_size = {avg}\nmax_size = {max}\n");
        fs::write(self.home.join("config.toml"), text).unwrap();
    }

    /// Writes a file in the working directory.
    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.work.join(name);
        fs::write(&path, data).unwrap();
        path
    }

    /// Every chunk file in the store.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        chunk_files_in(&self.home)
    }

    /// Every manifest file in the store.
    pub fn manifest_files(&self) -> Vec<PathBuf> {
        read_dir(&self.home.join("store/manifests"))
    }

    /// Every file under the working directory.
    pub fn work_files(&self) -> Vec<PathBuf> {
        read_dir(&self.work)
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// `len` pseudo-random bytes, the same for the same seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

/// The NodeIds a `peers.json` lists with at least one verified address.
pub fn verified_peers(peers_file: &Path) -> Vec<String> {
    let table: serde_json::Value =
        fs::read(peers_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let peers = table["peers"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .filter(|p| p["addrs"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|p| p["node"].as_str().map(str::to_owned))
        .collect()
}

/// A tokio runtime for a test's own network client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// An endpoint bound at `bind` with a fresh node key and `server`'s network
/// key: a member of its network, as far as keys go.
pub fn member_net(server: &Server, rt: &tokio::runtime::Runtime, bind: &str) -> p2pfs::net::Net {
    let keys = p2pfs::home::Keys::load(&server.node.home).unwrap();
    let _guard = rt.enter();
    p2pfs::net::Net::bind(bind.parse().unwrap(), &rand::random(), keys.network, Default::default(), false).unwrap()
}

/// A member of `server`'s network (a library client with its own node key), connected to it.
pub fn member_client(server: &Server, rt: &tokio::runtime::Runtime) -> (p2pfs::net::Net, p2pfs::net::Peer) {
    let net = member_net(server, rt, "127.0.0.1:0");
    let node: p2pfs::id::NodeId = server.id.parse().unwrap();
    let peer = rt.block_on(net.connect(node, server.addr.parse().unwrap())).unwrap();
    (net, peer)
}

/// The largest manifest there can be: `manifest::MAX_CHUNKS` chunks of the
/// largest size (made-up ids), with the longest name, sealed for `owner`.
/// Returns its id, its envelope and its chunk ids.
pub fn largest_manifest(owner: &p2pfs::crypto::OwnerKeys) -> (p2pfs::id::ManifestId, Vec<u8>, Vec<p2pfs::id::ChunkId>) {
    use p2pfs::crypto::{ChunkKey, EnvelopeRandomness, FileKey};
    use p2pfs::manifest::{ChunkRef, MAX_CHUNKS, MAX_NAME_LEN, Manifest};
    use p2pfs::sealing::Sealing;

    let chunks: Vec<ChunkRef> = (0..MAX_CHUNKS as u32)
        .map(|i| {
            let mut id = [0xff; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            ChunkRef { id: p2pfs::id::ChunkId(id), key: ChunkKey([0xee; 32]), len: p2pfs::chunk::MAX_CHUNK_SIZE }
        })
        .collect();
    let ids = chunks.iter().map(|c| c.id).collect();
    let fresh = EnvelopeRandomness { file_key: FileKey([5; 32]), wrap_nonce: [6; 24], body_nonce: [7; 24] };
    let (id, envelope) = Manifest::new("n".repeat(MAX_NAME_LEN), Sealing::current(3), chunks).seal(owner, &fresh);
    (id, envelope, ids)
}

/// The peak resident memory of process `pid` so far (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    try_peak_rss_mib(pid).expect("a VmHWM line")
}

/// [`peak_rss_mib`], or `None` once the process has exited (a zombie has no
/// memory to report), for sampling a process that may end at any moment.
pub fn try_peak_rss_mib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Polls `condition` until it holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A running `p2pfs serve` on 127.0.0.1, killed when dropped.
pub struct Server {
    pub node: Node,
    pub child: std::process::Child,
    pub addr: String,
    pub id: String,
    /// `serve` options beyond `--listen` and `--bootstrap`, kept for restarts.
    pub options: Vec<String>,
}

impl Server {
    /// Starts a node on a free port (`127.0.0.1:0`) with a fresh home.
    pub fn start() -> Self {
        let node = Node::new();
        node.ok(&["init"]);
        Self::start_in(node, "127.0.0.1:0", &[])
    }

    /// Starts a node with `home` listening on `listen`, optionally bootstrapping.
    pub fn start_in(node: Node, listen: &str, bootstrap: &[&str]) -> Self {
        Self::start_with(node, listen, bootstrap, &[])
    }

    /// [`Server::start_in`] with more `serve` options, its log (`-v`) in `work/serve.log`.
    pub fn start_with(node: Node, listen: &str, bootstrap: &[&str], options: &[&str]) -> Self {
        let mut command = node.command();
        command.args(["serve", "--listen", listen]).args(options);
        for peer in bootstrap {
            command.args(["--bootstrap", peer]);
        }
        let log = if options.is_empty() {
            Stdio::null()
        } else {
            command.arg("-v");
            let file = fs::OpenOptions::new().create(true).append(true).open(node.work.join("serve.log"));
            file.map_or_else(|_| Stdio::null(), Stdio::from)
        };
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn serve");
        let pid = child.id();
        let serve_file = node.home.join("serve.json");
        let mut info = serde_json::Value::Null;
        wait_until(Duration::from_secs(20), "the node writes serve.json", || {
            info = fs::read(&serve_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            info["pid"].as_u64() == Some(u64::from(pid))
        });
        let addr = info["addrs"][0].as_str().unwrap().to_owned();
        let id = info["node"].as_str().unwrap().to_owned();
        Self { node, child, addr, id, options: options.iter().map(|o| o.to_string()).collect() }
    }

    /// `NODEID@ADDR`.
    pub fn node_addr(&self) -> String {
        format!("{}@{}", self.id, self.addr)
    }

    /// The join token of this node's network.
    pub fn invite(&self) -> String {
        self.node.ok(&["invite"]).trim().to_owned()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
        let status = self.child.wait().expect("wait for serve");
        assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");
    }

    /// Kills the node and starts it again on the same home and port.
    pub fn restart(mut self) -> Self {
        self.revive();
        self
    }

    /// [`Server::restart`], in place.
    pub fn revive(&mut self) {
        self.kill();
        let addr = self.addr.clone();
        let node = std::mem::replace(&mut self.node, Node::new());
        let options: Vec<&str> = self.options.iter().map(String::as_str).collect();
        *self = Server::start_with(node, &addr, &[], &options);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nodes that know each other through the first one's bootstrap.
pub fn three_nodes() -> Vec<Server> {
    let a = Server::start();
    let token = a.invite();
    let mut servers = vec![a];
    for _ in 0..2 {
        let node = Node::new();
        node.ok(&["init", "--join", &token]);
        servers.push(Server::start_in(node, "127.0.0.1:0", &[&servers[0].node_addr()]));
    }
    // Peer exchange: the first node hears of the others when they dial it,
    // and dials them back to verify their addresses.
    let peers_file = servers[0].node.home.join("peers.json");
    wait_until(Duration::from_secs(20), "the first node has verified the other two", || {
        let verified = verified_peers(&peers_file);
        servers[1..].iter().all(|s| verified.contains(&s.id))
    });
    servers
}

/// A client home with small chunks that knows one peer, `node` at `addr`,
/// and nothing else: not by a join token but by its peer table, so the
/// address can be a relay or an impostor. It holds `network_of`'s network
/// key, or its own (a non-member) if that is `None`.
pub fn client_pointed_at(node: &str, addr: &str, network_of: Option<&Server>) -> Node {
    let client = Node::new();
    client.ok(&["init"]);
    client.set_chunker(SMALL_CHUNKS);
    if let Some(server) = network_of {
        let key = "keys/network.key";
        fs::copy(server.node.home.join(key), client.home.join(key)).unwrap();
    }
    let table = format!(r#"{{"peers":[{{"node":"{node}","addrs":["{addr}"]}}]}}"#);
    fs::write(client.home.join("peers.json"), table).unwrap();
    client
}

/// A client home that joined the network with `token`, with small chunks.
pub fn client(token: &str) -> Node {
    let node = Node::new();
    node.ok(&["init", "--join", token]);
    node.set_chunker(SMALL_CHUNKS);
    node
}

/// A lossy, slow link: a UDP relay on 127.0.0.1 that forwards datagrams
/// both ways to `target`, dropping a fixed share of them (a seeded generator
/// per direction decides which) and delaying the rest. Each client address
/// gets its own socket towards the target, as behind a NAT, so two
/// processes (or two endpoints) using the link at once never get each
/// other's packets. Stops when dropped.
pub struct LossyLink {
    pub addr: std::net::SocketAddr,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One direction of a [`LossyLink`] flow: drops or delays each datagram,
/// and hands each that survives to its sender once its delay is over.
#[derive(Clone)]
struct Direction {
    seed: u64,
    loss_percent: u64,
    delay: Duration,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Direction {
    /// Starts the sender thread; returns where the reader queues what it keeps.
    fn sender(&self, send: impl Fn(&[u8]) + Send + 'static) -> std::sync::mpsc::Sender<(Instant, Vec<u8>)> {
        let (queue, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            for (when, datagram) in due {
                // The link's latency itself, not a wait for anything.
                std::thread::sleep(when.saturating_duration_since(Instant::now()));
                send(&datagram);
            }
        });
        queue
    }

    /// Whether the next datagram is lost; queues it if not.
    fn pass(&self, state: &mut u64, datagram: &[u8], queue: &std::sync::mpsc::Sender<(Instant, Vec<u8>)>) {
        use std::sync::atomic::Ordering;
        // xorshift64: the same drops for the same traffic, run after run.
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        if *state % 100 < self.loss_percent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
            let _ = queue.send((Instant::now() + self.delay, datagram.to_vec()));
        }
    }
}

impl LossyLink {
    /// Drops `loss_percent` of the datagrams in each direction and delays the rest by `delay`.
    pub fn start(target: std::net::SocketAddr, loss_percent: u64, delay: Duration) -> Self {
        use std::collections::HashMap;
        use std::net::UdpSocket;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        front.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let link = Self {
            addr: front.local_addr().unwrap(),
            dropped: Arc::new(AtomicU64::new(0)),
            forwarded: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let direction = |seed| Direction {
            seed,
            loss_percent,
            delay,
            dropped: Arc::clone(&link.dropped),
            forwarded: Arc::clone(&link.forwarded),
        };
        let stop = Arc::clone(&link.stop);
        let (inbound, outbound) = (direction(1), direction(2));
        std::thread::spawn(move || {
            let mut flows = HashMap::new();
            let mut state = inbound.seed;
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, client)) = front.recv_from(&mut buf) else { continue };
                let queue = flows.entry(client).or_insert_with(|| {
                    // A new client: its own socket towards the target, and a
                    // reader of the target's replies to it.
                    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                    back.connect(target).unwrap();
                    back.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let (reply_front, stop) = (Arc::clone(&front), Arc::clone(&stop));
                    let replies = outbound.sender(move |datagram| {
                        let _ = reply_front.send_to(datagram, client);
                    });
                    let (reader, outbound) = (Arc::clone(&back), outbound.clone());
                    std::thread::spawn(move || {
                        let mut state = outbound.seed ^ client.port() as u64;
                        let mut buf = vec![0u8; 65536];
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(len) = reader.recv(&mut buf) else { continue };
                            outbound.pass(&mut state, &buf[..len], &replies);
                        }
                    });
                    inbound.sender(move |datagram| {
                        let _ = back.send(datagram);
                    })
                });
                inbound.pass(&mut state, &buf[..len], queue);
            }
        });
        link
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `n` nodes that have all verified each other, each started with `options`
/// (and each bootstrapping from every earlier one).
pub fn verified_nodes(n: usize, options: &[&str]) -> Vec<Server> {
    let first = Node::new();
    first.ok(&["init"]);
    let mut servers = vec![Server::start_with(first, "127.0.0.1:0", &[], options)];
    let token = servers[0].invite();
    for _ in 1..n {
        let node = Node::new();
        node.ok(&["init", "--join", &token]);
        let earlier: Vec<String> = servers.iter().map(Server::node_addr).collect();
        let earlier: Vec<&str> = earlier.iter().map(String::as_str).collect();
        servers.push(Server::start_with(node, "127.0.0.1:0", &earlier, options));
    }
    wait_until(Duration::from_secs(30), "every node has verified every other", || {
        servers.iter().all(|s| {
            let verified = verified_peers(&s.node.home.join("peers.json"));
            servers.iter().filter(|o| o.id != s.id).all(|o| verified.contains(&o.id))
        })
    });
    servers
}
