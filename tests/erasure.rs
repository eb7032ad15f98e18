//! Erasure coding on real `p2pfs serve` processes: `push --erasure 4+2`
//! puts one shard of each chunk on each of six nodes, any two of them can
//! be lost and the pull is byte-identical, a node serving wrong shard bytes
//! is caught, an unchanged re-push sends nothing, repair rebuilds a wiped
//! node's shards, and too few nodes is a clear error.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{Node, Server, client, random_bytes, wait_until};

/// How long the network may take to heal (a debug build, shared cores).
const HEAL_LIMIT: Duration = Duration::from_secs(120);

/// Serve options that keep repair out of the way unless a test wants it.
const QUIET: [&str; 4] = ["--repair-interval", "1h", "--unreachable-after", "1h"];

/// The blob (shard) file names a home holds.
fn blob_names(node: &Node) -> HashSet<String> {
    node.chunk_files().iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// A copy of `home`'s directory as a new client home: same keys and
/// peers, and none of the original's memory of failed peers to come.
fn copy_of(template: &Path) -> Node {
    let node = Node::new();
    copy_dir(template, &node.home);
    node
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A small seeded generator (splitmix64), for picking which nodes to kill.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

#[test]
fn four_plus_two_puts_one_shard_per_node_and_survives_any_two_lost_nodes() {
    let mut servers = common::verified_nodes(6, &QUIET);
    let me = client(&servers[0].invite());
    let data = random_bytes(2 << 20, 41);
    let file = me.write("data.bin", &data);
    let out = me.run(&["push", "--json", "--erasure", "4+2", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4+2 erasure coded, 1.50x stored"), "the summary gives the overhead: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chunks = report["chunks"].as_u64().unwrap() as usize;
    assert!(chunks >= 8, "several chunks: {chunks}");

    // One shard of every chunk on every node: 6 distinct nodes per chunk.
    let held: Vec<HashSet<String>> = servers.iter().map(|s| blob_names(&s.node)).collect();
    assert!(held.iter().all(|h| h.len() == chunks), "{:?}", held.iter().map(HashSet::len).collect::<Vec<_>>());
    let all: HashSet<&String> = held.iter().flatten().collect();
    assert_eq!(all.len(), 6 * chunks, "no shard twice");
    let stored: u64 = servers.iter().flat_map(|s| s.node.chunk_files()).map(|f| f.metadata().unwrap().len()).sum();
    let ratio = stored as f64 / data.len() as f64;
    assert!((1.45..1.6).contains(&ratio), "about 1.5x the data is stored: {ratio:.3}");

    // Any two lost: a few pairs, picked by a seeded generator, each pulled
    // by a fresh copy of the client home.
    let template = me.home.clone();
    let mut rng = Rng(0x5eed_0012);
    let mut pairs = HashSet::new();
    while pairs.len() < 3 {
        let a = rng.below(6);
        let b = rng.below(6);
        if a != b {
            pairs.insert((a.min(b), a.max(b)));
        }
    }
    for (a, b) in pairs {
        servers[a].kill();
        servers[b].kill();
        let reader = copy_of(&template);
        let out = reader.run(&["pull", "data.bin", "-o", "back.bin"]);
        assert!(out.status.success(), "nodes {a} and {b} down: {}", String::from_utf8_lossy(&out.stderr));
        assert!(fs::read(reader.work.join("back.bin")).unwrap() == data, "byte-identical with {a} and {b} down");
        servers[a].revive();
        servers[b].revive();
    }

    // Three lost is one too many: the pull fails and says why.
    for server in &mut servers[..3] {
        server.kill();
    }
    let reader = copy_of(&template);
    let stderr = reader.fails(&["pull", "data.bin", "-o", "back.bin"], 1);
    assert!(stderr.contains("of the 4 shards needed were found"), "{stderr}");
}

#[test]
fn a_node_serving_wrong_shard_bytes_is_caught_and_the_pull_still_succeeds() {
    let servers = common::verified_nodes(6, &QUIET);
    let me = client(&servers[0].invite());
    let data = random_bytes(1 << 20, 42);
    let file = me.write("data.bin", &data);
    me.ok(&["push", "--erasure", "4+2", file.to_str().unwrap()]);

    // Every shard on one node goes bad on its disk; the node serves shard
    // files without hashing them (the reader verifies).
    let liar = &servers[2];
    for shard in liar.node.chunk_files() {
        let mut bytes = fs::read(&shard).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        fs::write(&shard, &bytes).unwrap();
    }
    let out = me.run(&["pull", "data.bin", "-o", "back.bin"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(fs::read(me.work.join("back.bin")).unwrap() == data, "byte-identical");
    let named = stderr.lines().find(|l| l.contains(&liar.id[..16])).unwrap_or_default();
    assert!(named.contains("dropped") && named.contains("do not match its id"), "the liar is named: {stderr}");
}

#[test]
fn an_unchanged_re_push_of_an_erasure_coded_file_sends_nothing() {
    let servers = common::verified_nodes(6, &QUIET);
    let me = client(&servers[0].invite());
    let file = me.write("data.bin", &random_bytes(2 << 20, 43));
    let first = me.push_json(&file, &["--erasure", "4+2"]);
    assert_eq!(first["unchanged"], false);
    let before: Vec<HashSet<String>> = servers.iter().map(|s| blob_names(&s.node)).collect();

    let again = me.push_json(&file, &["--erasure", "4+2"]);
    assert_eq!(again["unchanged"], true, "{again}");
    assert_eq!(again["chunks_stored"], 0, "no shard sent again: {again}");
    assert_eq!(again["chunks_sealed"], 0, "no chunk sealed again: {again}");
    let after: Vec<HashSet<String>> = servers.iter().map(|s| blob_names(&s.node)).collect();
    assert_eq!(before, after);

    // A new version that changes the end shares the stripes of the rest.
    let mut changed = random_bytes(2 << 20, 43);
    changed.extend_from_slice(&random_bytes(100_000, 44));
    let file = me.write("data.bin", &changed);
    let grown = me.push_json(&file, &["--erasure", "4+2"]);
    // The chunker's cut points follow the owner's random seed: the tail is
    // the appended bytes and the old last chunk, cut into a few chunks.
    let (chunks, stored) = (grown["chunks"].as_u64().unwrap(), grown["chunks_stored"].as_u64().unwrap());
    let new_bytes = grown["new_bytes"].as_u64().unwrap();
    let tail = 100_000 + u64::from(common::SMALL_CHUNKS.2);
    assert!(new_bytes <= tail && stored * 4 < chunks, "only the changed tail was sent: {grown}");
    me.ok(&["pull", "data.bin", "-o", "back.bin"]);
    assert!(fs::read(me.work.join("back.bin")).unwrap() == changed);

    // A file smaller than its shards would be: each is padded to a blob a node keeps.
    let tiny = me.write("tiny.txt", b"ten bytes!");
    me.ok(&["push", "--erasure", "4+2", tiny.to_str().unwrap()]);
    me.ok(&["pull", "tiny.txt", "-o", "tiny.back"]);
    assert_eq!(fs::read(me.work.join("tiny.back")).unwrap(), b"ten bytes!");

    // A config default works as the flag does, and --replicas overrides it.
    let config = fs::read_to_string(me.home.join("config.toml")).unwrap();
    fs::write(me.home.join("config.toml"), format!("{config}\n[push]\nerasure = \"4+2\"\n")).unwrap();
    let same = me.push_json(&file, &[]);
    assert_eq!(same["unchanged"], true, "the config's 4+2 is the layout already there: {same}");

    // Another code of the same width (3+3 for 4+2) cuts other shards: the
    // push sends them, and the version pulls (taking the old stripes for
    // the new code would record a version nobody can read).
    let recut = me.push_json(&file, &["--erasure", "3+3"]);
    assert_eq!(recut["unchanged"], false, "{recut}");
    assert!(recut["chunks_stored"].as_u64().unwrap() > 0, "3+3 shards were sent: {recut}");
    let out = me.run(&["pull", recut["manifest"].as_str().unwrap(), "-o", "-"]);
    assert!(out.status.success() && out.stdout == changed, "{}", String::from_utf8_lossy(&out.stderr));

    let replicated = me.push_json(&file, &["--replicas", "2"]);
    assert_eq!(replicated["unchanged"], false, "replicas are another layout: {replicated}");
}

#[test]
fn too_few_nodes_for_the_code_is_a_clear_error() {
    let servers = common::verified_nodes(3, &QUIET);
    let me = client(&servers[0].invite());
    let file = me.write("data.bin", &random_bytes(100_000, 45));
    let stderr = me.fails(&["push", "--erasure", "4+2", file.to_str().unwrap()], 1);
    assert!(stderr.contains("only 3 answered") && stderr.contains("--erasure 2+1"), "{stderr}");
    let stderr = me.fails(&["push", "--erasure", "4+0", file.to_str().unwrap()], 2);
    assert!(stderr.contains("K+M"), "{stderr}");
    let stderr = me.fails(&["push", "--erasure", "4+2", "--replicas", "2", file.to_str().unwrap()], 2);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// Restarts `server` on its home and port with `options`.
fn restart_with(mut server: Server, options: &[&str]) -> Server {
    server.kill();
    let addr = server.addr.clone();
    let node = std::mem::replace(&mut server.node, Node::new());
    Server::start_with(node, &addr, &[], options)
}

/// `p2pfs check ARGS` on `home`: exit code, stdout, stderr.
fn check(home: &Node, args: &[&str]) -> (i32, String, String) {
    let out = home.run(&[&["check"], args].concat());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn repair_rebuilds_a_wiped_nodes_shards_and_check_counts_shards() {
    let mut servers = common::verified_nodes(6, &QUIET);
    let me = client(&servers[0].invite());
    let data = random_bytes(2 << 20, 46);
    let file = me.write("data.bin", &data);
    me.ok(&["push", "--erasure", "4+2", file.to_str().unwrap()]);
    let (code, _, stderr) = check(&me, &[]);
    assert_eq!(code, 0, "healthy after the push: {stderr}");
    assert!(stderr.contains("at 6 shards each (4+2 erasure coded)"), "{stderr}");

    // Wipe one node's store while it is down, and bring it back empty.
    let mut wiped = servers.remove(3);
    let lost = blob_names(&wiped.node);
    assert!(lost.len() >= 8, "it held a shard of every chunk: {}", lost.len());
    wiped.kill();
    fs::remove_dir_all(wiped.node.home.join("store")).unwrap();
    let wiped = restart_with(wiped, &QUIET);
    let (code, stdout, stderr) = check(&me, &[]);
    assert_eq!(code, 1, "a lost shard per chunk is found: {stderr}");
    assert_eq!(stdout.trim(), "data.bin@1", "{stderr}");
    assert!(stderr.contains("under 6 healthy shards") && !stderr.contains("too few shards"), "{stderr}");

    // The others repair every few seconds now: each missing shard is rebuilt
    // from four others and sent, with the pin, to the node that lacks it.
    let fast = ["--repair-interval", "2s", "--unreachable-after", "1h"];
    let mut healers: Vec<Server> = servers.into_iter().map(|s| restart_with(s, &fast)).collect();
    wait_until(HEAL_LIMIT, "check finds every chunk at 6 shards again", || check(&me, &[]).0 == 0);
    assert_eq!(blob_names(&wiped.node), lost, "the wiped node holds exactly the shards it held before");
    let (code, _, stderr) = check(&me, &["--read"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("copies read and verified"), "every shard was fetched and verified: {stderr}");
    let status: serde_json::Value = serde_json::from_str(&wiped.node.ok(&["status", "--json"])).unwrap();
    assert!(status["pins"].as_u64().unwrap() >= 1, "it keeps them under the owner's pin: {status}");

    // Three nodes down: under K shards of every chunk, and check says so.
    for server in &mut healers[..3] {
        server.kill();
    }
    let reader = copy_of(&me.home);
    let (code, _, stderr) = check(&reader, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("too few shards to rebuild"), "{stderr}");
    drop(wiped);
}
