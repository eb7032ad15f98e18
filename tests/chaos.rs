//! Chaos: five real nodes, R = 3, rounds of SIGKILL and restart of up to
//! two nodes at random while pushes, pulls and removals run. At the end:
//! every push that reported success pulls back byte-identical, every
//! removed version's chunks are gone from every node, every store is
//! sound, and repair has brought every live chunk back to three copies.
//!
//! `cargo test --release --test chaos -- --nocapture` prints the figures;
//! `P2PFS_CHAOS_ROUNDS`, `P2PFS_CHAOS_SEED` and `P2PFS_CHAOS_MAX_FILE`
//! (bytes) change the run (defaults: 20 rounds, a fixed seed, 1 MiB).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Node, Server, client, random_bytes};
use p2pfs::crypto::OwnerKeys;
use p2pfs::id::{ChunkId, ManifestId};
use p2pfs::manifest::Manifest;

const NODES: usize = 5;
const REPLICAS: usize = 3;
/// Short enough for a test: chunks no pin needs go after a second, and
/// every node checks its chunks' replicas every two seconds.
const SERVE_OPTIONS: &[&str] = &["--gc-grace", "1s", "--repair-interval", "2s"];

/// xorshift64: the same run for the same seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A command started in the background.
fn spawn(home: &Node, args: &[&str]) -> Child {
    home.command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The chunk ids a version needs, from its manifest as a node stores it.
fn chunks_of(owner: &OwnerKeys, servers: &[&Server], id: &ManifestId) -> Vec<ChunkId> {
    for server in servers {
        if let Ok(envelope) = fs::read(server.node.home.join("store/manifests").join(id.to_string())) {
            return Manifest::open(owner, *id, &envelope).unwrap().1.chunks.iter().map(|c| c.id).collect();
        }
    }
    panic!("no node holds manifest {id}");
}

/// The chunk ids a node holds, each checked against its bytes.
fn sound_chunks(home: &Path) -> HashSet<ChunkId> {
    let mut held = HashSet::new();
    for path in common::chunk_files_in(home) {
        let name = path.file_name().unwrap().to_str().unwrap();
        // A temp file of a write in progress is not a chunk yet.
        let Ok(id) = name.parse::<ChunkId>() else { continue };
        let bytes = fs::read(&path).unwrap();
        assert_eq!(blake3::hash(&bytes).as_bytes(), id.as_bytes(), "{} holds bytes of another id", path.display());
        held.insert(id);
    }
    held
}

#[test]
fn five_nodes_survive_kills_and_restarts_and_converge() {
    let rounds = env_or("P2PFS_CHAOS_ROUNDS", 20);
    let max_file = env_or("P2PFS_CHAOS_MAX_FILE", 1 << 20);
    let mut dice = Dice(env_or("P2PFS_CHAOS_SEED", 0x5eed_cafe_f00d_d00d) | 1);

    let first = {
        let node = Node::new();
        node.ok(&["init"]);
        Server::start_with(node, "127.0.0.1:0", &[], SERVE_OPTIONS)
    };
    let token = first.invite();
    let mut servers = vec![first];
    for _ in 1..NODES {
        let node = Node::new();
        node.ok(&["init", "--join", &token]);
        let bootstrap = servers[0].node_addr();
        servers.push(Server::start_with(node, "127.0.0.1:0", &[&bootstrap], SERVE_OPTIONS));
    }
    let me = client(&token);
    let owner = p2pfs::home::Keys::load(&me.home).unwrap().owner_keys();
    // The client knows every node before the chaos starts.
    let mut seen = String::new();
    let knows_all = |seen: &mut String| {
        // A command that reaches peers learns the others from them.
        me.ok(&["ls"]);
        *seen = me.ok(&["peers", "--json"]);
        seen.matches("\"node\"").count() >= NODES
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !knows_all(&mut seen) {
        assert!(Instant::now() < deadline, "the client knows every node within 30 s; it knows:\n{seen}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let started = Instant::now();
    let mut live: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut removed: Vec<String> = Vec::new();
    let mut removed_chunks: HashSet<ChunkId> = HashSet::new();
    let (mut pushes_failed, mut pulls_failed, mut kills) = (0, 0, 0);
    for round in 0..rounds {
        // Work in flight: a push, and a pull of a version pushed before.
        let data = random_bytes(1 + dice.below(max_file) as usize, round);
        let path = me.write(&format!("file-{round}.bin"), &data);
        let push = spawn(&me, &["push", path.to_str().unwrap()]);
        let pull = live.keys().nth(dice.below(live.len().max(1) as u64) as usize).cloned().map(|id| {
            let out = me.work.join(format!("pulled-{round}.bin"));
            let _ = fs::remove_file(&out);
            (id.clone(), out.clone(), spawn(&me, &["pull", &id, "-o", out.to_str().unwrap(), "--force"]))
        });

        // Meanwhile, up to two nodes die.
        let victims: Vec<usize> = {
            let mut chosen = Vec::new();
            for _ in 0..dice.below(3) {
                let i = dice.below(NODES as u64) as usize;
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
            chosen
        };
        // Fault injection at a random moment of the work, not a wait for anything.
        std::thread::sleep(Duration::from_millis(dice.below(300)));
        for &i in &victims {
            servers[i].kill();
            kills += 1;
        }

        let pushed = push.wait_with_output().unwrap();
        if pushed.status.success() {
            live.insert(String::from_utf8(pushed.stdout).unwrap().trim().to_owned(), data);
        } else {
            pushes_failed += 1;
            eprintln!("round {round}: push failed: {}", String::from_utf8_lossy(&pushed.stderr).trim());
        }
        if let Some((id, out, pull)) = pull {
            let pulled = pull.wait_with_output().unwrap();
            if pulled.status.success() {
                assert!(fs::read(&out).unwrap() == live[&id], "round {round}: a pull that succeeded is byte-identical");
            } else {
                pulls_failed += 1;
                let stderr = String::from_utf8_lossy(&pulled.stderr).into_owned();
                // Where that chunk is on disk right now, for the record.
                let on_disk: Vec<bool> = stderr
                    .split("give chunk ")
                    .nth(1)
                    .and_then(|rest| rest.get(..64))
                    .and_then(|hex| hex.parse::<ChunkId>().ok())
                    .map(|id| servers.iter().map(|s| sound_chunks(&s.node.home).contains(&id)).collect())
                    .unwrap_or_default();
                eprintln!("round {round}: pull failed (chunk on disk per node: {on_disk:?}): {}", stderr.trim());
            }
        }
        // Now and then a version goes.
        if dice.below(3) == 0 && live.len() > 1 {
            let id = live.keys().nth(dice.below(live.len() as u64) as usize).cloned().unwrap();
            // Which chunks it had, while its manifest is still kept.
            let up: Vec<&Server> =
                servers.iter().enumerate().filter(|(i, _)| !victims.contains(i)).map(|(_, s)| s).collect();
            removed_chunks.extend(chunks_of(&owner, &up, &id.parse().unwrap()));
            let rm = me.run(&["rm", &id]);
            assert!(rm.status.success(), "rm {id}: {}", String::from_utf8_lossy(&rm.stderr));
            live.remove(&id);
            removed.push(id);
        }
        for &i in &victims {
            servers[i].revive();
        }
    }
    let chaos = started.elapsed();

    // Every node is up. The network converges: every live chunk on at least
    // R nodes, and no chunk of a removed version left on any.
    let converging = Instant::now();
    let all: Vec<&Server> = servers.iter().collect();
    let needed: HashSet<ChunkId> = live.keys().flat_map(|id| chunks_of(&owner, &all, &id.parse().unwrap())).collect();
    let gone: HashSet<ChunkId> = removed_chunks.difference(&needed).copied().collect();
    // `peers` checks at once the nodes the client saw fail (rather than
    // after their backoff); `ls` carries removals the nodes missed to them.
    me.ok(&["peers"]);
    me.ok(&["ls"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let held: Vec<HashSet<ChunkId>> = servers.iter().map(|s| sound_chunks(&s.node.home)).collect();
        let under = needed.iter().filter(|c| held.iter().filter(|h| h.contains(c)).count() < REPLICAS).count();
        let left: Vec<usize> = held.iter().map(|h| h.intersection(&gone).count()).collect();
        // Three copies somewhere is not yet three on the chunk's three best
        // placed live nodes, which `check` asks for: repair moves the rest
        // within its interval, so wait for that too.
        if under == 0 && left.iter().all(|&n| n == 0) && me.run(&["check"]).status.success() {
            break;
        }
        if Instant::now() > deadline {
            for (i, server) in servers.iter().enumerate() {
                let _ = fs::copy(server.node.work.join("serve.log"), format!("/tmp/chaos-node-{i}.log"));
            }
            // Which versions the short chunks belong to, and who pins them.
            for server in &servers {
                let _ = std::process::Command::new("kill").args(["-9", &server.child.id().to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(500));
            let stores: Vec<p2pfs::store::Store> = servers
                .iter()
                .map(|s| {
                    let sharing = p2pfs::store::Sharing::ReadOnly { patience: Duration::from_secs(5) };
                    p2pfs::store::Store::open_with(&s.node.home.join("store"), sharing).unwrap()
                })
                .collect();
            for id in live.keys() {
                let manifest: ManifestId = id.parse().unwrap();
                let chunks = chunks_of(&owner, &all, &manifest);
                let short: Vec<usize> = chunks
                    .iter()
                    .map(|c| held.iter().filter(|h| h.contains(c)).count())
                    .filter(|&n| n < REPLICAS)
                    .collect();
                if !short.is_empty() {
                    let pinned: Vec<bool> = stores
                        .iter()
                        .map(|st| st.meta().pin_of(&owner.owner_id(), &manifest).unwrap().is_some())
                        .collect();
                    let holders: Vec<usize> =
                        held.iter().map(|h| chunks.iter().filter(|c| h.contains(c)).count()).collect();
                    eprintln!(
                        "version {}: {} chunks, copies of the short ones {short:?}; pinned per node {pinned:?}; \
                         its chunks per node {holders:?}",
                        &id[..16],
                        chunks.len()
                    );
                }
            }
            panic!(
                "not converged after 180 s: {under} of {} live chunks under {REPLICAS} copies; chunks of removed \
                 versions left per node: {left:?} (node logs copied to /tmp/chaos-node-*.log)",
                needed.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let converged = converging.elapsed();

    for (id, data) in &live {
        let out = me.work.join("final.bin");
        me.ok(&["pull", id, "-o", out.to_str().unwrap(), "--force"]);
        assert!(fs::read(&out).unwrap() == *data, "{id} pulls back byte-identical");
    }
    let check = me.run(&["check"]);
    assert!(check.status.success(), "check after convergence: {}", String::from_utf8_lossy(&check.stderr));
    for server in &mut servers {
        server.stop();
        // Its database opens and reads.
        server.node.ok(&["status"]);
        let quarantine = server.node.home.join("store/quarantine");
        let bad = fs::read_dir(&quarantine).map(|d| d.count()).unwrap_or(0);
        assert_eq!(bad, 0, "no chunk of {} was found damaged", server.node.home.display());
    }
    eprintln!(
        "chaos: {rounds} rounds, {kills} kills, {} pushes kept, {pushes_failed} failed, {} removed, \
         {pulls_failed} pulls failed mid-chaos; {:.1} s of chaos, converged in {:.1} s",
        live.len(),
        removed.len(),
        chaos.as_secs_f64(),
        converged.as_secs_f64()
    );
}
