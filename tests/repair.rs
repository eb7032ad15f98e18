//! Repair, scrub and `p2pfs check`, on real `p2pfs serve` processes: a
//! lost replica is rebuilt (with its pin) by the network, a corrupt copy is
//! quarantined and fetched again, and a peer gone for long enough starts a
//! repair without waiting for the interval.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::Duration;

use common::{Node, Server, client, random_bytes, wait_until};

/// How long the network may take to heal in these tests (a debug build,
/// two cores shared with other work).
const HEAL_LIMIT: Duration = Duration::from_secs(90);

/// Restarts `server` on its home and port with `options`.
fn restart_with(mut server: Server, options: &[&str]) -> Server {
    server.kill();
    let addr = server.addr.clone();
    let node = std::mem::replace(&mut server.node, Node::new());
    Server::start_with(node, &addr, &[], options)
}

/// The chunk file names a home holds.
fn chunk_names(home_node: &Node) -> HashSet<String> {
    home_node.chunk_files().iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// How many of `servers` hold each chunk.
fn replica_counts(servers: &[&Server]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for server in servers {
        for name in chunk_names(&server.node) {
            *counts.entry(name).or_default() += 1;
        }
    }
    counts
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

/// What a served home's `status --json` says.
fn status(server: &Server) -> serde_json::Value {
    serde_json::from_str(&server.node.ok(&["status", "--json"])).expect("status prints JSON")
}

fn logs(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| {
            format!("--- {}:\n{}", &s.id[..16], fs::read_to_string(s.node.work.join("serve.log")).unwrap_or_default())
        })
        .collect()
}

#[test]
fn a_wiped_node_gets_its_replicas_and_pins_back_and_check_sees_both_states() {
    let quiet = ["--replicas", "2", "--repair-interval", "1h", "--unreachable-after", "1h"];
    let mut servers = common::verified_nodes(3, &quiet);
    let me = client(&servers[0].invite());
    let data = random_bytes(3 << 20, 11);
    let file = me.write("data.bin", &data);
    me.ok(&["push", "--replicas", "2", file.to_str().unwrap()]);
    let (code, _, stderr) = check(&me, &["--replicas", "2"]);
    assert_eq!(code, 0, "healthy after the push: {stderr}");
    assert!(stderr.contains("1 version healthy"), "{stderr}");

    // Wipe the busiest node's store while it is down, and bring it back empty.
    let victim = (0..3).max_by_key(|&i| servers[i].node.chunk_files().len()).unwrap();
    let lost = chunk_names(&servers[victim].node);
    assert!(lost.len() > 10, "the victim held many chunks: {}", lost.len());
    let mut wiped = servers.remove(victim);
    wiped.kill();
    fs::remove_dir_all(wiped.node.home.join("store")).unwrap();
    let wiped = restart_with(wiped, &quiet);
    assert!(wiped.node.chunk_files().is_empty());
    assert_eq!(status(&wiped)["pins"], 0, "the wiped node holds no pin");

    let (code, stdout, stderr) = check(&me, &["--replicas", "2"]);
    assert_eq!(code, 1, "a wiped replica is found: {stderr}");
    assert_eq!(stdout.trim(), "data.bin@1", "the under-replicated version is named on stdout");
    assert!(stderr.contains("missing on") && stderr.contains(&wiped.id[..16]), "names the node: {stderr}");
    let (code, stdout, _) = check(&me, &["--replicas", "2", "--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report[0]["version"], "data.bin@1");
    assert_eq!(report[0]["healthy"], false);
    assert!(report[0]["under_replicated"].as_u64().unwrap() >= lost.len() as u64, "{report}");

    // The two that kept their copies repair every few seconds now.
    let fast = ["--replicas", "2", "--repair-interval", "2s", "--unreachable-after", "1h"];
    let mut healers: Vec<Server> = servers.into_iter().map(|s| restart_with(s, &fast)).collect();
    healers.push(wiped);
    wait_until(HEAL_LIMIT, "check finds every chunk at two replicas again", || check(&me, &["--replicas", "2"]).0 == 0);
    let wiped = healers.pop().unwrap();
    assert_eq!(chunk_names(&wiped.node), lost, "the wiped node holds exactly what it held before");
    assert!(status(&wiped)["pins"].as_u64().unwrap() >= 1, "the repaired node keeps the chunks under the owner's pin");
    let counts = replica_counts(&[&healers[0], &healers[1], &wiped]);
    assert!(counts.values().all(|&n| n == 2), "exactly two replicas, no more: {counts:?}");
    let health = &status(&healers[0])["repair"];
    assert_eq!(health["in_progress"], false, "{health}");
    assert!(health["last_pass_ms"].as_u64().is_some(), "a pass has run: {health}");

    me.ok(&["pull", "data.bin", "-o", "back.bin"]);
    assert_eq!(fs::read(me.work.join("back.bin")).unwrap(), data);
}

#[test]
fn a_corrupt_copy_is_quarantined_by_the_scrub_and_fetched_again() {
    let options = ["--replicas", "2", "--repair-interval", "1h", "--unreachable-after", "1h", "--scrub-interval", "1s"];
    let servers = common::verified_nodes(3, &options);
    let me = client(&servers[0].invite());
    let file = me.write("data.bin", &random_bytes(1 << 20, 12));
    me.ok(&["push", "--replicas", "2", file.to_str().unwrap()]);

    let holder = &servers[0];
    let victim = holder.node.chunk_files().into_iter().next().expect("the first node holds a chunk");
    let good = fs::read(&victim).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x40;
    fs::write(&victim, &bad).unwrap();
    let quarantined = holder.node.home.join("store/quarantine").join(victim.file_name().unwrap());
    wait_until(HEAL_LIMIT, "the scrub quarantines the bad copy and a good one is fetched again", || {
        quarantined.is_file() && fs::read(&victim).is_ok_and(|bytes| bytes == good)
    });
    assert_eq!(fs::read(&quarantined).unwrap(), bad, "the bad bytes are kept aside, not served");
    let (code, _, stderr) = check(&me, &["--replicas", "2", "--read"]);
    assert_eq!(code, 0, "every copy reads back good: {stderr}\n{}", logs(&servers));
    assert!(stderr.contains("read and verified"), "{stderr}");
}

#[test]
fn a_peer_gone_for_long_enough_starts_a_repair_before_the_interval() {
    let options = ["--replicas", "2", "--repair-interval", "1h", "--unreachable-after", "2s"];
    let mut servers = common::verified_nodes(3, &options);
    let me = client(&servers[0].invite());
    let file = me.write("data.bin", &random_bytes(2 << 20, 13));
    me.ok(&["push", "--replicas", "2", file.to_str().unwrap()]);
    let all: HashSet<String> = replica_counts(&servers.iter().collect::<Vec<_>>()).into_keys().collect();

    let gone = (0..3).max_by_key(|&i| servers[i].node.chunk_files().len()).unwrap();
    servers[gone].kill();
    let left: Vec<&Server> = servers.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, s)| s).collect();
    assert!(
        left.iter().any(|s| chunk_names(&s.node) != all),
        "with one node gone, some chunks have a single live copy"
    );
    wait_until(HEAL_LIMIT, "the two live nodes hold every chunk", || left.iter().all(|s| chunk_names(&s.node) == all));
    let (code, _, stderr) = check(&me, &["--replicas", "2"]);
    assert_eq!(code, 0, "two live replicas of every chunk: {stderr}");
}

#[test]
fn check_needs_peers_and_fails_on_a_name_it_does_not_know() {
    let servers = common::verified_nodes(2, &["--repair-interval", "1h"]);
    let me = client(&servers[0].invite());
    let file = me.write("data.bin", &random_bytes(300 << 10, 14));
    me.ok(&["push", "--replicas", "2", file.to_str().unwrap()]);
    let (code, _, stderr) = check(&me, &["nothing-here"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nothing-here"), "{stderr}");
    let (code, _, stderr) = check(&me, &["data.bin", "--read"]);
    assert_eq!(code, 0, "two peers: each chunk is checked at two replicas: {stderr}");
    assert!(stderr.contains("only 2 peers are reachable"), "says the check is capped: {stderr}");

    let alone = Node::with_chunks(common::SMALL_CHUNKS);
    let file = alone.write("x.bin", b"local only");
    alone.ok(&["push", file.to_str().unwrap()]);
    let out = alone.fails(&["check"], 1);
    assert!(out.contains("no peers"), "{out}");
}

#[test]
fn repair_never_brings_back_a_version_its_owner_removed() {
    let quiet = ["--replicas", "2", "--repair-interval", "1h", "--unreachable-after", "1h"];
    let mut servers = common::verified_nodes(3, &quiet);
    let me = client(&servers[0].invite());
    let file = me.write("data.bin", &random_bytes(1 << 20, 15));
    me.ok(&["push", "--replicas", "2", file.to_str().unwrap()]);

    // The removal reaches two nodes; the third was down and still pins the version.
    let behind = servers.remove(0);
    let mut behind = behind;
    behind.kill();
    let out = me.run(&["rm", "data.bin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for server in &servers {
        assert_eq!(status(server)["pins"], 0, "the unpin reached {}", &server.id[..16]);
        // As their garbage collection would.
        for chunk in server.node.chunk_files() {
            fs::remove_file(chunk).unwrap();
        }
    }
    let behind = restart_with(behind, &["--replicas", "2", "--repair-interval", "1s", "--unreachable-after", "1h"]);
    assert!(status(&behind)["pins"].as_u64().unwrap() >= 1, "the node that missed the rm still pins it");
    wait_until(HEAL_LIMIT, "the node that missed the rm has run a repair pass", || {
        status(&behind)["repair"]["last_pass_ms"].as_u64().is_some()
    });
    for server in &servers {
        assert_eq!(status(server)["pins"], 0, "no pin comes back on {}", &server.id[..16]);
        assert!(
            server.node.chunk_files().is_empty(),
            "no chunk of the removed version is sent to {}",
            &server.id[..16]
        );
    }
    let log = fs::read_to_string(behind.node.work.join("serve.log")).unwrap();
    assert!(log.contains("removal of"), "the refusal is logged: {log}");
}
