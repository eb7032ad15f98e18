//! A hostile holder of an owner's log (docs/PROTOCOL.md, "The owner's
//! log"): a member written with the library that ranks first among the
//! log's holders for the owner and answers `GetLog` and `AppendLog` as an
//! attacker would, while three real `p2pfs serve` nodes and the real `p2pfs`
//! binary do the owner's work. It forges entries, streams pages without
//! end, refuses every append (holding nothing newer, or keeping the entry
//! it refuses), freezes on an old prefix, or never answers the log; each
//! time the owner's commands finish, show exactly the versions pushed and
//! removed, and a new home with only the owner key sees the same.
//!
//! Each test was checked against the client with its defence taken out
//! (verification of what a holder sends, progress on "more", refusals
//! believed only from a copy that grew, the longest copy winning, the log's
//! own deadline): it fails then.
//!
//! Every other request (chunks, manifests, pins, peer exchange) the fake
//! passes on to a real node, so it is an honest member in all but the log,
//! and is not dropped from a push for failing to store a chunk.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pfs::crypto::OwnerKeys;
use p2pfs::id::{ManifestId, NodeId, OwnerId};
use p2pfs::manifest::log::{LogEntry, LogOp, LogRecord};
use p2pfs::net::stream::{FrameReader, Pace, SENDER_RATE, write_frame};
use p2pfs::net::{Net, Peer, REPLY_TIMEOUT};
use p2pfs::transfer::network_log::LOG_HOLDERS;
use p2pfs::transfer::placement;
use p2pfs::wire::{self, Ack, Bounded, BoundedBytes, BoundedString, ErrorCode, Frame, Log};
use quinn::{RecvStream, SendStream};

use common::{Node, Server, client, random_bytes, runtime, try_peak_rss_mib};

/// How long any one command may take here: far more than it needs, and
/// finite, so a client that never stops reading fails the test instead of
/// hanging it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// The client's peak RSS while a holder streams pages at it must stay under this.
const CLIENT_RSS_LIMIT_MIB: u64 = 100;
/// Most `GetLog` requests one command may send the fake: a read asks each
/// holder for a page or two, a push reads the log twice and checks a refusal.
const READS_PER_COMMAND: u64 = 16;

/// How long a command may take while the fake never answers the log:
/// well under `REPLY_TIMEOUT` (30 s), which each read or append would
/// cost without the log's own deadline.
const SILENT_HOLDER_COST: Duration = Duration::from_secs(20);

/// What the fake holder does with the owner's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keeps it as a real node does.
    Honest,
    /// Serves what it holds and one or more entries the owner never wrote.
    Forging,
    /// Says every page has more after it: the entries it holds, then
    /// pages of `Filler`, for as long as it is asked.
    Endless(Filler),
    /// Refuses every append as a conflict, holding nothing newer.
    Refusing,
    /// Keeps every entry that follows its copy, as a real node does, and
    /// still answers each append with a conflict: its copy has grown by the
    /// very entry it refused.
    Pocketing,
    /// Acks every append and keeps none: serves an old prefix for ever.
    Frozen,
    /// Answers no log request at all.
    Silent,
    /// Serves what it holds, and never answers an append.
    SilentOnAppends,
}

/// What an endless holder's pages hold past its real entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filler {
    /// Nothing: an empty page that says more follow.
    Nothing,
    /// As many bytes of junk as a page holds.
    Junk,
}

/// The forgeries a forging holder cycles through, one per read.
const FORGERIES: usize = 5;

/// The fake holder's state, shared by its connection tasks.
struct Holder {
    mode: Mutex<Mode>,
    /// The entries it took while it kept the log, encoded.
    held: Mutex<Vec<Vec<u8>>>,
    /// Whose log it is asked for (public: every entry names it).
    victim: OwnerId,
    /// A real node that every request other than the log's is passed to.
    backend: Peer,
    /// `GetLog` requests answered.
    reads: AtomicU64,
    /// `AppendLog` requests refused as conflicts.
    appends_refused: AtomicU64,
}

/// A fake member that ranks first among the log holders of one owner.
struct FakeHolder {
    node: NodeId,
    addr: SocketAddr,
    state: Arc<Holder>,
    _net: Net,
}

impl FakeHolder {
    /// Starts a fake holder on `rt`, with the servers' network key and a
    /// node key whose NodeId ranks first for `owner` among `servers`;
    /// requests that are not the log's go to the first server.
    fn start(rt: &tokio::runtime::Runtime, servers: &[Server], owner: OwnerId, mode: Mode) -> Self {
        let others: Vec<NodeId> = servers.iter().map(|s| s.id.parse().unwrap()).collect();
        let node_key = key_ranking_first(&owner, &others);
        let keys = p2pfs::home::Keys::load(&servers[0].node.home).unwrap();
        let net = {
            let _guard = rt.enter();
            Net::bind("127.0.0.1:0".parse().unwrap(), &node_key, keys.network, Default::default(), true).unwrap()
        };
        let backend = rt.block_on(net.connect(others[0], servers[0].addr.parse().unwrap())).unwrap();
        let state = Arc::new(Holder {
            mode: Mutex::new(mode),
            held: Mutex::new(Vec::new()),
            victim: owner,
            backend,
            reads: AtomicU64::new(0),
            appends_refused: AtomicU64::new(0),
        });
        let (node, addr) = (net.node_id(), net.local_addr().unwrap());
        let (accepting, holder) = (net.clone(), Arc::clone(&state));
        rt.spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let (net, holder) = (accepting.clone(), Arc::clone(&holder));
                tokio::spawn(async move {
                    let Ok(candidate) = net.handshake(incoming).await else { return };
                    let Ok(peer) = candidate.welcome(p2pfs::net::MEMBER_RECEIVE_WINDOW).await else { return };
                    while let Ok((send, recv)) = peer.accept_stream().await {
                        tokio::spawn(Arc::clone(&holder).answer(send, recv));
                    }
                });
            }
        });
        Self { node, addr, state, _net: net }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// How many entries it holds.
    fn held(&self) -> usize {
        self.state.held.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn reads(&self) -> u64 {
        self.state.reads.load(Ordering::Relaxed)
    }

    fn short(&self) -> String {
        self.node.short(16)
    }
}

/// A node key whose NodeId ranks first for `owner`'s log among `others`
/// and itself, by the placement every client computes.
fn key_ranking_first(owner: &OwnerId, others: &[NodeId]) -> [u8; 32] {
    loop {
        let key: [u8; 32] = rand::random();
        let node = NodeId(ed25519_dalek::SigningKey::from_bytes(&key).verifying_key().to_bytes());
        let mut all = others.to_vec();
        all.push(node);
        if placement::rank(&all, owner.as_bytes())[0] == others.len() {
            return key;
        }
    }
}

impl Holder {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> Vec<Vec<u8>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Answers one request stream: the log's requests itself, the rest by the backend.
    async fn answer(self: Arc<Self>, mut send: SendStream, recv: RecvStream) {
        let mut reader = FrameReader::new(recv);
        let Ok(frame) = reader.next_frame().await else { return };
        let silent = match self.mode() {
            Mode::Silent => matches!(frame, Frame::GetLog(_) | Frame::AppendLog(_)),
            Mode::SilentOnAppends => matches!(frame, Frame::AppendLog(_)),
            _ => false,
        };
        if silent {
            // The stream stays open and nothing comes: the runtime's end ends this.
            std::future::pending::<()>().await;
        }
        let reply = match frame {
            Frame::GetLog(get) => {
                let read = self.reads.fetch_add(1, Ordering::Relaxed);
                self.log_reply(get.from, read)
            }
            Frame::AppendLog(append) => self.append_reply(&append.entry),
            other => return self.relay(other, reader, send).await,
        };
        let _ = write_frame(&mut send, &reply, Bytes::new(), Pace::at_rate(SENDER_RATE)).await;
        let _ = send.finish();
    }

    /// The `Log` reply to the `read`-th `GetLog`, from `from`.
    fn log_reply(&self, from: u64, read: u64) -> Frame {
        let held = self.held();
        let tail = |copy: &[Vec<u8>]| copy.iter().skip(from as usize).cloned().collect::<Vec<_>>();
        let (entries, more) = match self.mode() {
            Mode::Honest | Mode::Refusing | Mode::Pocketing | Mode::Frozen | Mode::Silent | Mode::SilentOnAppends => {
                (tail(&held), false)
            }
            Mode::Forging => (tail(&self.forged_copy(&held, read as usize % FORGERIES)), false),
            Mode::Endless(filler) => {
                let mut page = tail(&held);
                if filler == Filler::Junk {
                    page.extend((0..30u64).map(|i| random_bytes(4096, read * 100 + i)));
                }
                (page, true)
            }
        };
        let entries = entries.into_iter().map(|e| BoundedBytes::new(e).unwrap()).collect();
        Frame::Log(Log { entries: Bounded::new(entries).unwrap(), more })
    }

    /// What it holds, and then something the owner never wrote, so that
    /// its copy is the longest: an entry signed by another key, one of
    /// another owner, an entry of the owner's at a place it was not
    /// written, a skipped sequence number, or bytes that are no entry.
    fn forged_copy(&self, held: &[Vec<u8>], forgery: usize) -> Vec<Vec<u8>> {
        let mallory = OwnerKeys::derive(&[0x66; 32]);
        let last = held.last().map(|bytes| LogEntry::decode(held.len() as u64 - 1, bytes).unwrap());
        let (seq, prev) = (held.len() as u64, last.map_or([0; 32], |e| e.hash()));
        let record = LogRecord {
            time_ms: 1_700_000_000_000,
            op: LogOp::Push {
                name: "forged.bin".into(),
                manifest: ManifestId([0xf0; 32]),
                size: 1,
                chunks: 1,
                new_bytes: 1,
            },
        };
        let claiming_victim = |seq: u64| {
            let mut entry = LogEntry::seal(&mallory, seq, prev, &record, [seq as u8; 24]);
            entry.owner = self.victim;
            entry.encode()
        };
        let mut copy = held.to_vec();
        match forgery {
            0 => copy.push(claiming_victim(seq)),
            1 => copy.push(LogEntry::seal(&mallory, seq, prev, &record, [1; 24]).encode()),
            2 => copy.extend(held.first().cloned()),
            3 => copy.extend([claiming_victim(seq + 1), claiming_victim(seq + 2)]),
            _ => copy.push(random_bytes(300, seq)),
        }
        copy
    }

    /// The reply to an `AppendLog` of `bytes`.
    fn append_reply(&self, bytes: &[u8]) -> Frame {
        let Ok(entry) = LogEntry::decode(0, bytes) else { return refusal(ErrorCode::BAD_FRAME, "not a log entry") };
        let conflict = || refusal(ErrorCode::LOG_CONFLICT, "log entry does not follow this node's copy of the log");
        match self.mode() {
            Mode::Refusing => {
                self.appends_refused.fetch_add(1, Ordering::Relaxed);
                conflict()
            }
            Mode::Frozen => Frame::Ack(Ack { id: entry.hash() }),
            Mode::Pocketing => {
                self.keep(&entry, bytes);
                self.appends_refused.fetch_add(1, Ordering::Relaxed);
                conflict()
            }
            Mode::Honest | Mode::Forging | Mode::Endless(_) | Mode::Silent | Mode::SilentOnAppends => {
                match self.keep(&entry, bytes) {
                    true => Frame::Ack(Ack { id: entry.hash() }),
                    false => conflict(),
                }
            }
        }
    }

    /// Keeps `entry` (encoded as `bytes`) if it is the next one of its copy,
    /// as a real node does; whether it holds it now.
    fn keep(&self, entry: &LogEntry, bytes: &[u8]) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = entry.seq as usize;
        if held.get(seq).is_some_and(|kept| kept == bytes) {
            return true;
        }
        let prev = held.last().map_or([0; 32], |last| LogEntry::decode(0, last).unwrap().hash());
        if seq != held.len() || entry.prev != prev {
            return false;
        }
        held.push(bytes.to_vec());
        true
    }

    /// Passes a request (and its payload) to the backend and its reply
    /// (and payload) back.
    async fn relay(&self, frame: Frame, mut reader: FrameReader, mut send: SendStream) {
        let len = match &frame {
            Frame::PutChunk(put) => put.len as usize,
            Frame::PutManifest(put) => put.len as usize,
            Frame::Pin(pin) => pin.chunks as usize * 32,
            _ => 0,
        };
        let mut payload = Vec::new();
        if reader.payload(len, &mut payload, Pace::at_rate(SENDER_RATE)).await.is_err() {
            return;
        }
        let Ok((mut up, down)) = self.backend.open().await else { return };
        if write_frame(&mut up, &frame, payload.into(), Pace::at_rate(SENDER_RATE)).await.is_err() {
            return;
        }
        let _ = up.finish();
        let mut down = FrameReader::new(down);
        let Ok(reply) = down.next_frame_within(REPLY_TIMEOUT).await else { return };
        let len = match &reply {
            Frame::ChunkData(data) => data.len as usize,
            Frame::ManifestData(data) => data.len as usize,
            _ => 0,
        };
        let mut payload = Vec::new();
        if down.payload(len, &mut payload, Pace::at_rate(SENDER_RATE)).await.is_err() {
            return;
        }
        let _ = write_frame(&mut send, &reply, payload.into(), Pace::at_rate(SENDER_RATE)).await;
        let _ = send.finish();
    }
}

fn refusal(code: ErrorCode, message: &str) -> Frame {
    Frame::Error(wire::Error { code, message: BoundedString::truncating(message) })
}

/// Three real nodes, a fake holder ranking first for the owner of a new
/// home, and that home, which knows all four.
struct Network {
    servers: Vec<Server>,
    token: String,
    fake: FakeHolder,
    owner_home: Node,
    rt: tokio::runtime::Runtime,
}

impl Network {
    fn start(mode: Mode) -> Self {
        let servers = common::three_nodes();
        let token = servers[0].invite();
        let owner_home = client(&token);
        let owner = p2pfs::home::Keys::load(&owner_home.home).unwrap().owner_keys().owner_id();
        let rt = runtime();
        let fake = FakeHolder::start(&rt, &servers, owner, mode);
        let network = Self { servers, token, fake, owner_home, rt };
        network.point_at_all(&network.owner_home);
        network
    }

    /// Gives `home` a peer table with the three nodes and the fake.
    fn point_at_all(&self, home: &Node) {
        let mut peers: Vec<String> =
            self.servers.iter().map(|s| format!(r#"{{"node":"{}","addrs":["{}"]}}"#, s.id, s.addr)).collect();
        peers.push(format!(r#"{{"node":"{}","addrs":["{}"]}}"#, self.fake.node, self.fake.addr));
        fs::write(home.home.join("peers.json"), format!(r#"{{"peers":[{}]}}"#, peers.join(","))).unwrap();
    }

    /// A new home of the network that has only the owner key (and knows the fake too).
    fn home_from_key(&self) -> Node {
        let key = self.owner_home.ok(&["key", "export"]);
        let home = client(&self.token);
        fs::write(home.work.join("owner.key"), key).unwrap();
        home.ok(&["key", "import", "owner.key"]);
        self.point_at_all(&home);
        home
    }

    /// How many entries of the owner's log each real node holds.
    fn held_by_servers(&self) -> Vec<usize> {
        let owner = p2pfs::home::Keys::load(&self.owner_home.home).unwrap().owner_keys();
        self.servers
            .iter()
            .map(|server| {
                let (_net, peer) = common::member_client(server, &self.rt);
                self.rt.block_on(peer.get_log(&owner)).unwrap().len()
            })
            .collect()
    }
}

/// The versions `p2pfs log --json` lists: `name@number` and manifest id,
/// oldest first (it lists them newest first).
fn versions(home: &Node) -> Vec<(String, String)> {
    let listed: Vec<serde_json::Value> = serde_json::from_str(&home.ok(&["log", "--json"])).unwrap();
    listed
        .iter()
        .rev()
        .map(|v| {
            let label = format!("{}@{}", v["name"].as_str().unwrap(), v["number"]);
            (label, v["manifest"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The versions `p2pfs log` shows as removed.
fn removed(home: &Node) -> Vec<String> {
    let listed: Vec<serde_json::Value> = serde_json::from_str(&home.ok(&["log", "--json"])).unwrap();
    listed
        .iter()
        .filter(|v| !v["removed_ms"].is_null())
        .map(|v| format!("{}@{}", v["name"].as_str().unwrap(), v["number"]))
        .collect()
}

/// Pushes `data` as `name`; returns what `log` should list for it.
fn push(home: &Node, name: &str, number: u32, data: &[u8]) -> (String, String) {
    let id = home.push(&home.write(name, data), &[]);
    (format!("{name}@{number}"), id)
}

/// Pulls `spec` to standard output.
fn pulled(home: &Node, spec: &str) -> Vec<u8> {
    let out = home.run(&["pull", spec, "-o", "-"]);
    assert!(out.status.success(), "pull {spec}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Runs `p2pfs ARGS` in `home`, which must end within [`COMMAND_DEADLINE`];
/// returns its output and its peak RSS in MiB, sampled while it ran.
fn run_watched(home: &Node, args: &[&str]) -> (Output, u64) {
    let (stdout, stderr) = (home.work.join("watched.out"), home.work.join("watched.err"));
    let mut child = home
        .command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("run p2pfs");
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let mut peak = 0;
    let status = loop {
        // Sampled before the exit is seen: the last sample is at most one poll old.
        peak = peak.max(try_peak_rss_mib(child.id()).unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let failure = if peak >= CLIENT_RSS_LIMIT_MIB {
            format!("grew to {peak} MiB")
        } else if Instant::now() > deadline {
            format!("did not end within {COMMAND_DEADLINE:?}")
        } else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = child.kill();
        let _ = child.wait();
        panic!("p2pfs {args:?} {failure}");
    };
    let output = Output { status, stdout: fs::read(&stdout).unwrap(), stderr: fs::read(&stderr).unwrap() };
    (output, peak)
}

/// The owner's whole log (`len` entries) is on the real nodes among its
/// holders: all of them but the fake's place.
fn assert_whole_on_servers(net: &Network, len: usize) {
    let held = net.held_by_servers();
    let whole = held.iter().filter(|&&n| n == len).count();
    assert!(whole >= LOG_HOLDERS - 1, "entries each real node holds: {held:?}");
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Whether `home`'s `-v` log says the fake's copy of the log was not used.
fn rejected_in(stderr: &str, fake: &FakeHolder) -> bool {
    stderr.lines().any(|l| l.contains(&fake.short()) && l.contains("copy of the log"))
}

#[test]
fn a_holder_that_forges_entries_adds_no_version() {
    let net = Network::start(Mode::Honest);
    let home = &net.owner_home;
    let (a1, a2, b1) = (random_bytes(200_000, 1), random_bytes(200_000, 2), random_bytes(100_000, 3));
    let mut expected = vec![push(home, "a.bin", 1, &a1), push(home, "a.bin", 2, &a2), push(home, "b.bin", 1, &b1)];
    assert_eq!(net.fake.held(), 3, "the fake was a holder of the log while it was honest");

    net.fake.set_mode(Mode::Forging);
    let reads = net.fake.reads();
    assert_eq!(versions(home), expected, "the log shows the owner's versions and nothing else");
    let ls = home.ok(&["ls"]);
    assert!(ls.contains("a.bin") && ls.contains("b.bin") && !ls.contains("forged"), "{ls}");
    assert!(pulled(home, "a.bin") == a2, "NAME is the owner's latest version");
    let verbose = home.run(&["-v", "log"]);
    assert!(verbose.status.success());
    assert!(rejected_in(&stderr_of(&verbose), &net.fake), "the fake's copy was read and refused");

    // A new push goes on top of the owner's log, not the forged one.
    let c1 = random_bytes(150_000, 4);
    expected.push(push(home, "c.bin", 1, &c1));
    assert_eq!(versions(home), expected);

    // A home with only the owner key sees the same, though it has no copy to compare with.
    let fresh = net.home_from_key();
    assert_eq!(versions(&fresh), expected, "a home restored from the key");
    assert!(pulled(&fresh, "c.bin") == c1 && pulled(&fresh, "a.bin@1") == a1);
    assert!(!fresh.ok(&["ls"]).contains("forged"));
    assert!(net.fake.reads() - reads >= FORGERIES as u64, "every forgery was served at least once");
    assert_whole_on_servers(&net, 4);
}

#[test]
fn a_holder_that_streams_pages_without_end_costs_a_command_one_page() {
    let net = Network::start(Mode::Honest);
    let home = &net.owner_home;
    let (a1, b1) = (random_bytes(200_000, 11), random_bytes(200_000, 12));
    let mut expected = vec![push(home, "a.bin", 1, &a1), push(home, "b.bin", 1, &b1)];
    assert_eq!(net.fake.held(), 2);

    let fresh = net.home_from_key();
    let c1 = random_bytes(100_000, 13);
    let c_file = home.write("c.bin", &c1);
    let commands: [(Filler, &Node, Vec<&str>); 7] = [
        (Filler::Nothing, home, vec!["ls"]),
        (Filler::Junk, home, vec!["ls"]),
        (Filler::Nothing, home, vec!["push", c_file.to_str().unwrap()]),
        (Filler::Junk, home, vec!["log", "--json"]),
        (Filler::Nothing, &fresh, vec!["log", "--json"]),
        (Filler::Junk, &fresh, vec!["log", "--json"]),
        (Filler::Junk, &fresh, vec!["pull", "c.bin", "-o", "-"]),
    ];
    let mut outputs = Vec::new();
    for (filler, home, args) in &commands {
        net.fake.set_mode(Mode::Endless(*filler));
        let reads = net.fake.reads();
        let (output, peak) = run_watched(home, args);
        let asked = net.fake.reads() - reads;
        eprintln!(
            "p2pfs {args:?} against an endless holder ({filler:?}): {asked} log reads of it, peak RSS {peak} MiB"
        );
        assert!(output.status.success(), "p2pfs {args:?}: {}", stderr_of(&output));
        assert!(asked <= READS_PER_COMMAND, "p2pfs {args:?} asked the endless holder {asked} times");
        assert!(peak < CLIENT_RSS_LIMIT_MIB, "p2pfs {args:?} grew to {peak} MiB");
        outputs.push(output);
    }
    assert!(net.fake.reads() > 0, "the endless holder was asked");
    let ls = String::from_utf8_lossy(&outputs[0].stdout).into_owned();
    assert!(ls.contains("a.bin") && ls.contains("b.bin"), "{ls}");
    assert_eq!(outputs[0].stdout, outputs[1].stdout);
    let c_id = String::from_utf8_lossy(&outputs[2].stdout).trim().to_owned();
    expected.push(("c.bin@1".into(), c_id));
    for output in &outputs[3..6] {
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(listed.len(), expected.len(), "{listed:?}");
    }
    assert_eq!(versions(home), expected);
    assert_eq!(versions(&fresh), expected);
    assert!(outputs[6].stdout == c1, "the new version pulls whole from a home restored from the key");
}

#[test]
fn a_holder_that_refuses_every_append_does_not_stop_a_push() {
    let net = Network::start(Mode::Refusing);
    let home = &net.owner_home;
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(150_000, 20 + i)).collect();
    let mut expected = Vec::new();
    for (i, bytes) in data.iter().enumerate() {
        let file = home.write("doc.bin", bytes);
        let (output, _) = run_watched(home, &["-v", "push", file.to_str().unwrap()]);
        let stderr = stderr_of(&output);
        assert!(output.status.success(), "push {i} with a refusing holder: {stderr}");
        let refused_note = stderr.lines().any(|l| {
            l.contains(&net.fake.short()) && l.contains("refused the new log entries though it holds nothing newer")
        });
        assert!(refused_note, "the refusal was not believed, and said so: {stderr}");
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        expected.push((format!("doc.bin@{}", i + 1), id));
    }
    assert!(net.fake.state.appends_refused.load(Ordering::Relaxed) >= 3, "the fake was asked first each time");
    assert_eq!(net.fake.held(), 0);
    assert_eq!(versions(home), expected);

    let fresh = net.home_from_key();
    assert_eq!(versions(&fresh), expected, "a home restored from the key sees every version");
    assert!(pulled(&fresh, "doc.bin") == data[2]);
    assert!(pulled(&fresh, "doc.bin@1") == data[0]);
    assert_whole_on_servers(&net, 3);

    // Now it keeps what it is sent and refuses it all the same: a conflict
    // it is believed on, since its copy grew. The push reads again, finds
    // its entry there, and records it once.
    net.fake.set_mode(Mode::Pocketing);
    for (i, seed) in (3..6).zip(30..) {
        let bytes = random_bytes(150_000, seed);
        expected.push(push(home, "doc.bin", i + 1, &bytes));
        assert_eq!(versions(home), expected);
    }
    // And a removal, which finds its entry in the log on the retry.
    home.ok(&["rm", "doc.bin@1"]);
    assert_eq!(versions(&fresh), expected, "each version once, in order");
    assert_eq!(removed(&fresh), ["doc.bin@1"]);
    assert_eq!(net.fake.held(), 7, "the fake caught up, and then kept the entries it refused");
    assert!(pulled(&fresh, "doc.bin") == random_bytes(150_000, 32));
    assert_whole_on_servers(&net, 7);
}

#[test]
fn a_holder_frozen_on_an_old_prefix_loses_nothing() {
    let net = Network::start(Mode::Honest);
    let home = &net.owner_home;
    let a1 = random_bytes(150_000, 31);
    let mut expected = vec![push(home, "a.bin", 1, &a1)];
    assert_eq!(net.fake.held(), 1);

    // From now on it acks every entry and keeps none.
    net.fake.set_mode(Mode::Frozen);
    let (a2, b1) = (random_bytes(150_000, 32), random_bytes(150_000, 33));
    expected.push(push(home, "a.bin", 2, &a2));
    expected.push(push(home, "b.bin", 1, &b1));
    home.ok(&["rm", "a.bin@1"]);
    assert_eq!(net.fake.held(), 1, "the fake still serves its one-entry copy");

    let fresh = net.home_from_key();
    assert_eq!(versions(&fresh), expected, "the longest copy wins over the best-ranked one");
    assert_eq!(removed(&fresh), ["a.bin@1"], "the removal is there too");
    assert!(pulled(&fresh, "a.bin") == a2 && pulled(&fresh, "b.bin") == b1);

    // What the new home pushes goes on top of the longest copy, so the
    // real holders take it and the first home sees it.
    let c1 = random_bytes(150_000, 34);
    expected.push(push(&fresh, "c.bin", 1, &c1));
    assert_eq!(versions(home), expected);
    assert!(pulled(home, "c.bin") == c1);
    assert_whole_on_servers(&net, 5);
}

#[test]
fn a_holder_that_never_answers_the_log_holds_a_command_seconds_not_minutes() {
    let net = Network::start(Mode::Honest);
    let home = &net.owner_home;
    let mut expected = vec![push(home, "a.bin", 1, &random_bytes(100_000, 40))];
    assert_eq!(net.fake.held(), 1);

    for (mode, seed) in [(Mode::Silent, 41), (Mode::SilentOnAppends, 42)] {
        net.fake.set_mode(mode);
        let data = random_bytes(100_000, seed);
        let file = home.write("b.bin", &data);
        for args in [vec!["ls"], vec!["push", file.to_str().unwrap()]] {
            let started = Instant::now();
            let (output, _) = run_watched(home, &args);
            let took = started.elapsed();
            eprintln!("p2pfs {args:?} with a holder {mode:?}: {took:?}");
            assert!(output.status.success(), "p2pfs {args:?}: {}", stderr_of(&output));
            assert!(took < SILENT_HOLDER_COST, "p2pfs {args:?} with a holder {mode:?} took {took:?}");
            if args[0] == "push" {
                let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                expected.push((format!("b.bin@{}", expected.len()), id));
            }
        }
    }
    assert_eq!(versions(home), expected);
    let fresh = net.home_from_key();
    assert_eq!(versions(&fresh), expected, "a home restored from the key");
    assert_whole_on_servers(&net, 3);
}
