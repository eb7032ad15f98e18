//! Discovery and liveness: peer exchange makes every member known to all,
//! dead peers are skipped while in backoff, `peers forget`, and mDNS on a
//! LAN (two network namespaces joined by a veth pair).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Node, Server, client, verified_peers, wait_until};

/// How long peer exchange may take to make a change known everywhere: it
/// takes seconds; this is the deadline, not the expectation.
const CONVERGENCE: Duration = Duration::from_secs(20);

/// Whether every server's table lists every other server as verified.
fn all_know_all(servers: &[Server]) -> bool {
    servers.iter().all(|s| {
        let known = verified_peers(&s.node.home.join("peers.json"));
        servers.iter().filter(|o| o.id != s.id).all(|o| known.contains(&o.id))
    })
}

#[test]
fn a_chain_of_nodes_converges_and_a_newcomer_becomes_known_to_all() {
    // Each node knows only the one before it: the token it joined with and
    // its bootstrap peer.
    let mut servers = vec![Server::start()];
    for _ in 1..5 {
        let previous = servers.last().unwrap();
        let node = Node::new();
        node.ok(&["init", "--join", &previous.invite()]);
        let bootstrap = previous.node_addr();
        servers.push(Server::start_in(node, "127.0.0.1:0", &[&bootstrap]));
    }
    wait_until(CONVERGENCE, "every node of the chain knows every other", || all_know_all(&servers));

    // A newcomer that joins through one node in the middle.
    let node = Node::new();
    node.ok(&["init", "--join", &servers[2].invite()]);
    let bootstrap = servers[2].node_addr();
    servers.push(Server::start_in(node, "127.0.0.1:0", &[&bootstrap]));
    wait_until(CONVERGENCE, "the newcomer is known to all, and knows all", || all_know_all(&servers));
}

/// A member that is gone: a NodeId nobody answers for, at a port where
/// nothing listens.
fn dead_peer() -> (String, String) {
    let id: [u8; 32] = rand::random();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (p2pfs::id::to_hex(&id), format!("127.0.0.1:{port}"))
}

/// Adds `node` at `addr` to a home's peer table, as verified.
fn add_peer(home: &Path, node: &str, addr: &str) {
    let path = home.join("peers.json");
    let mut table: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    table["peers"].as_array_mut().unwrap().push(serde_json::json!({ "node": node, "addrs": [addr] }));
    fs::write(path, serde_json::to_vec(&table).unwrap()).unwrap();
}

/// The `failures` a home's table records for `node` (0 if none).
fn failures(home: &Path, node: &str) -> u64 {
    let table: serde_json::Value = serde_json::from_slice(&fs::read(home.join("peers.json")).unwrap()).unwrap();
    let peers = table["peers"].as_array().unwrap();
    let entry = peers.iter().find(|p| p["node"] == node).unwrap_or_else(|| panic!("{node} is not in the table"));
    entry["failures"].as_u64().unwrap_or(0)
}

#[test]
fn a_dead_peer_is_skipped_by_the_next_command_while_in_backoff() {
    let a = Server::start();
    let me = client(&a.invite());
    let (dead, addr) = dead_peer();
    add_peer(&me.home, &dead, &addr);
    let short = &dead[..16];

    let first = me.run(&["push", me.write("one.bin", &common::random_bytes(100_000, 1)).to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "the live peer took the push: {stderr}");
    assert!(stderr.contains(&format!("peer {short}: unreachable")), "the first command dialled it: {stderr}");
    assert_eq!(failures(&me.home, &dead), 1, "the failure is recorded");

    let second = me.run(&["push", me.write("two.bin", &common::random_bytes(100_000, 2)).to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("peer {short}: skipped: in backoff")), "the second did not dial it: {stderr}");
    assert_eq!(failures(&me.home, &dead), 1, "not dialled, so no new failure");
    assert_eq!(failures(&me.home, &a.id), 0, "the live peer has none");
}

#[test]
fn a_peer_in_backoff_is_still_tried_when_no_other_answers() {
    let mut a = Server::start();
    let me = client(&a.invite());
    a.kill();
    let file = me.write("f.bin", &common::random_bytes(50_000, 3));
    let stderr = me.fails(&["push", file.to_str().unwrap()], 1);
    assert!(stderr.contains("no peer reachable"), "{stderr}");
    assert_eq!(failures(&me.home, &a.id), 1, "the only peer is in backoff");

    let a = a.restart();
    // Its backoff has not run out, but it is the only peer there is.
    me.push(&file, &[]);
    assert_eq!(failures(&me.home, &a.id), 0, "it answered: no longer in backoff");
}

#[test]
fn peers_forget_removes_a_peer_named_by_a_unique_prefix() {
    let me = Node::new();
    me.ok(&["init"]);
    let ids = [format!("abcdef0123{}", "1".repeat(54)), format!("abcdef0145{}", "2".repeat(54)), "3".repeat(64)];
    let table = serde_json::json!({ "peers": ids.iter().enumerate().map(|(i, id)| {
        serde_json::json!({ "node": id, "addrs": [format!("127.0.0.{}:7070", i + 1)] })
    }).collect::<Vec<_>>() });
    fs::write(me.home.join("peers.json"), serde_json::to_vec(&table).unwrap()).unwrap();
    let listed = || {
        let mut ids = verified_peers(&me.home.join("peers.json"));
        ids.sort();
        ids
    };

    for bad in ["abcdef0", "abcdef0z", &"1".repeat(65)] {
        let stderr = me.fails(&["peers", "forget", bad], 2);
        assert!(stderr.contains("at least 8 hex digits"), "{bad}: {stderr}");
    }
    let stderr = me.fails(&["peers", "forget", "abcdef00"], 1);
    assert!(stderr.contains("no known peer"), "{stderr}");
    let stderr = me.fails(&["peers", "forget", "abcdef01"], 1);
    assert!(stderr.contains("2 known peers") && stderr.contains("more digits"), "{stderr}");
    assert_eq!(listed().len(), 3, "nothing forgotten yet");

    me.ok(&["peers", "forget", "ABCDEF0123"]);
    assert_eq!(listed(), vec![ids[2].clone(), ids[1].clone()]);
    me.ok(&["peers", "forget", &ids[2]]);
    assert_eq!(listed(), vec![ids[1].clone()]);
}

#[test]
fn peers_forget_on_a_served_home_says_the_node_owns_the_table() {
    let a = Server::start();
    let b = Server::start_in(
        {
            let node = Node::new();
            node.ok(&["init", "--join", &a.invite()]);
            node
        },
        "127.0.0.1:0",
        &[],
    );
    let stderr = b.node.fails(&["peers", "forget", &a.id[..12]], 1);
    assert!(stderr.contains("owns this home's peer table") && stderr.contains("stop the node"), "{stderr}");
    assert!(fs::read_to_string(b.node.home.join("peers.json")).unwrap().contains(&a.id), "still known");
}

/// A network namespace, deleted when dropped (which also deletes its end
/// of any veth pair, and so the pair).
struct Namespace(String);

impl Namespace {
    fn exec(&self) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `ip ARGS`, failing the test with what it needs if that fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("this test needs iproute2's `ip` (apt-get install iproute2): {e}");
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}. This test needs root (CAP_NET_ADMIN) and iproute2 to create network namespaces \
         and a veth pair; run it as root, or skip it: cargo test -- --skip mdns",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces joined by a veth pair: 10.77.0.1/24 in the first,
/// 10.77.0.2/24 in the second, loopback up in each.
fn lan() -> (Namespace, Namespace) {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let tag = format!("{:x}{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
    let names = [format!("p2pfs-{tag}-a"), format!("p2pfs-{tag}-b")];
    ip(&["netns", "add", &names[0]]);
    let first = Namespace(names[0].clone());
    ip(&["netns", "add", &names[1]]);
    let second = Namespace(names[1].clone());
    // Interface names have at most 15 bytes.
    let (veth_a, veth_b) = (
        format!("p2a{}", &tag[tag.len().saturating_sub(10)..]),
        format!("p2b{}", &tag[tag.len().saturating_sub(10)..]),
    );
    ip(&["link", "add", &veth_a, "netns", &first.0, "type", "veth", "peer", "name", &veth_b, "netns", &second.0]);
    for (ns, veth, addr) in [(&first, &veth_a, "10.77.0.1/24"), (&second, &veth_b, "10.77.0.2/24")] {
        ip(&["-n", &ns.0, "addr", "add", addr, "dev", veth]);
        ip(&["-n", &ns.0, "link", "set", veth, "up"]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    }
    (first, second)
}

/// `p2pfs serve --mdns` for `node`'s home inside `ns`, listening at `listen`.
struct NsServer {
    child: std::process::Child,
    id: String,
}

impl NsServer {
    fn start(ns: &Namespace, node: &Node, listen: &str) -> Self {
        let child = ns
            .exec()
            .args([env!("CARGO_BIN_EXE_p2pfs"), "serve", "--mdns", "--listen", listen])
            .env("P2PFS_HOME", &node.home)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ip netns exec p2pfs serve");
        let serve_file = node.home.join("serve.json");
        let mut info = serde_json::Value::Null;
        wait_until(Duration::from_secs(20), "the node in the namespace writes serve.json", || {
            info = fs::read(&serve_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            info["pid"].as_u64() == Some(u64::from(child.id()))
        });
        let id = info["node"].as_str().unwrap().to_owned();
        Self { child, id }
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mdns_finds_a_member_across_a_lan_and_ignores_other_networks() {
    let (first, second) = lan();
    let a = Node::new();
    a.ok(&["init"]);
    let b = Node::new();
    b.ok(&["init"]);
    fs::copy(a.home.join("keys/network.key"), b.home.join("keys/network.key")).unwrap();
    let stranger = Node::new();
    stranger.ok(&["init"]);

    // No bootstrap, no token: only the LAN.
    let a_node = NsServer::start(&first, &a, "10.77.0.1:7070");
    let b_node = NsServer::start(&second, &b, "10.77.0.2:7070");
    let other = NsServer::start(&second, &stranger, "10.77.0.2:7071");
    wait_until(CONVERGENCE, "each member lists the other as verified, found by mDNS", || {
        verified_peers(&a.home.join("peers.json")).contains(&b_node.id)
            && verified_peers(&b.home.join("peers.json")).contains(&a_node.id)
    });
    // The other network's node announced itself all along, on the same LAN.
    for home in [&a.home, &b.home] {
        let table = fs::read_to_string(home.join("peers.json")).unwrap();
        assert!(!table.contains(&other.id), "a node of another network is not even heard of: {table}");
    }
    let table = fs::read_to_string(stranger.home.join("peers.json")).unwrap_or_default();
    assert!(!table.contains(&a_node.id) && !table.contains(&b_node.id), "nor does it hear of them: {table}");
}
