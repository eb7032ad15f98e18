//! The owner's log lives on the network: a home with only the owner key
//! and a join token sees every name and version, and two machines of one
//! owner pushing at once keep both versions. Real `p2pfs` processes.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use common::{Node, Server, client, random_bytes};

/// Three storage nodes of one network, and its join token. The first
/// node knows the others, so a client that joined through it learns of all
/// three on its first command.
fn network() -> (Vec<Server>, String) {
    let servers = common::three_nodes();
    let token = servers[0].invite();
    (servers, token)
}

/// A new home of the network that imports the owner key `key`.
fn home_with_key(token: &str, key: &str) -> Node {
    let home = client(token);
    fs::write(home.work.join("owner.key"), key).unwrap();
    home.ok(&["key", "import", "owner.key"]);
    home
}

#[test]
fn a_new_home_with_the_owner_key_sees_and_pulls_every_version() {
    let (_servers, token) = network();
    let laptop = client(&token);
    let v1 = random_bytes(400_000, 1);
    let v2 = random_bytes(400_000, 2);
    let id1 = laptop.push(&laptop.write("doc.bin", &v1), &[]);
    laptop.push(&laptop.write("doc.bin", &v2), &[]);
    laptop.push(&laptop.write("notes.txt", &random_bytes(300_000, 3)), &[]);
    laptop.ok(&["rm", "notes.txt"]);
    let key = laptop.ok(&["key", "export"]);

    // The laptop is lost: a new machine has only the key and a join token.
    drop(laptop);
    let fresh = home_with_key(&token, &key);
    let ls = fresh.ok(&["ls"]);
    assert!(ls.contains("doc.bin") && !ls.contains("notes.txt"), "{ls}");
    let log = fresh.ok(&["log"]);
    for line in ["doc.bin@1", "doc.bin@2", "notes.txt@1"] {
        assert!(log.contains(line), "{line} in\n{log}");
    }
    assert!(log.contains("removed"), "{log}");

    fresh.ok(&["pull", "doc.bin", "-o", "latest.bin"]);
    assert!(fs::read(fresh.work.join("latest.bin")).unwrap() == v2, "NAME is the latest version");
    fresh.ok(&["pull", "doc.bin@1", "-o", "first.bin"]);
    assert!(fs::read(fresh.work.join("first.bin")).unwrap() == v1, "NAME@1");
    fresh.ok(&["pull", &id1[..10], "-o", "by-prefix.bin"]);
    assert!(fs::read(fresh.work.join("by-prefix.bin")).unwrap() == v1, "an id prefix");

    // It pushes on top of the same log.
    let id3 = fresh.push(&fresh.write("doc.bin", &random_bytes(100_000, 4)), &[]);
    let log = fresh.ok(&["log", "doc.bin"]);
    assert!(log.contains("doc.bin@3") && log.contains(&id3[..16]), "{log}");
}

#[test]
fn two_machines_of_one_owner_pushing_at_once_keep_both_versions() {
    let (_servers, token) = network();
    let desk = client(&token);
    desk.push(&desk.write("shared.bin", &random_bytes(100_000, 9)), &[]);
    let laptop = home_with_key(&token, &desk.ok(&["key", "export"]));

    for round in 0..3u64 {
        let ours = desk.write("shared.bin", &random_bytes(1 << 20, 10 + round));
        let theirs = laptop.write("shared.bin", &random_bytes(1 << 20, 20 + round));
        let pushes: Vec<_> = [(&desk, ours), (&laptop, theirs)]
            .into_iter()
            .map(|(home, path)| {
                home.command()
                    .args(["push", path.to_str().unwrap()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for push in pushes {
            let out = push.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    // Both machines see all seven versions, in the same order.
    let desk_log = desk.ok(&["log", "shared.bin", "--json"]);
    let laptop_log = laptop.ok(&["log", "shared.bin", "--json"]);
    let versions: Vec<serde_json::Value> = serde_json::from_str(&desk_log).unwrap();
    assert_eq!(versions.len(), 7, "{desk_log}");
    assert_eq!(desk_log, laptop_log);
}

/// How many pins `server` holds, over every owner.
fn pins(server: &Server) -> u64 {
    let rt = common::runtime();
    let (net, peer) = common::member_client(server, &rt);
    let pins = rt.block_on(peer.status()).unwrap().pins;
    rt.block_on(net.shutdown());
    pins
}

#[test]
fn a_removal_reaches_nodes_that_were_down_when_a_later_command_runs() {
    let (mut servers, token) = network();
    let laptop = client(&token);
    laptop.push(&laptop.write("doc.bin", &random_bytes(300_000, 30)), &[]);
    laptop.push(&laptop.write("keep.bin", &random_bytes(300_000, 31)), &[]);
    assert!(servers.iter().all(|s| pins(s) == 2), "every node pins both versions");

    // One node is down during the rm: the others confirm, it is pending.
    servers[2].kill();
    let down = servers[2].id.clone();
    let rm = laptop.run(&["rm", "doc.bin"]);
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert!(rm.status.success(), "{stderr}");
    assert!(stderr.contains("1 node has not confirmed the removal"), "{stderr}");
    let status = laptop.ok(&["status"]);
    assert!(status.contains("pending") && status.contains("doc.bin@1") && status.contains(&down[..16]), "{status}");
    assert_eq!(pins(&servers[0]), 1);

    // Back up: the next command (a mere `ls`) sends it the unpin.
    let third = servers.pop().unwrap().restart();
    assert_eq!(pins(&third), 2, "the node that was down still pins the removed version");
    laptop.ok(&["ls"]);
    assert_eq!(pins(&third), 1, "the unpin reached it");
    let status: serde_json::Value = serde_json::from_str(&laptop.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["pending_removals"], serde_json::json!([]), "{status}");
}

#[test]
fn an_rm_with_every_node_down_is_recorded_and_reaches_them_later() {
    let (servers, token) = network();
    let laptop = client(&token);
    laptop.push(&laptop.write("doc.bin", &random_bytes(300_000, 40)), &[]);
    let key = laptop.ok(&["key", "export"]);
    let mut servers: Vec<Server> = servers;
    for server in &mut servers {
        server.kill();
    }
    let rm = laptop.run(&["rm", "doc.bin"]);
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert!(rm.status.success(), "{stderr}");
    assert!(stderr.contains("3 nodes have not confirmed the removal"), "{stderr}");
    assert!(laptop.ok(&["log", "doc.bin"]).contains("removed"));

    let servers: Vec<Server> = servers.into_iter().map(Server::restart).collect();
    laptop.ok(&["ls"]);
    assert!(servers.iter().all(|s| pins(s) == 0), "every node heard of the removal");
    // The removal is in the network's log too: a new home sees it.
    let fresh = home_with_key(&token, &key);
    assert!(fresh.ok(&["log", "doc.bin"]).contains("removed"));
    assert!(!fresh.ok(&["ls"]).contains("doc.bin"));
}

#[test]
fn copies_of_the_log_that_went_apart_lose_no_version() {
    // Two nodes; each machine of the owner pushes while it can reach only one.
    let mut first = Server::start();
    let token = first.invite();
    let node = Node::new();
    node.ok(&["init", "--join", &token]);
    let mut second = Server::start_in(node, "127.0.0.1:0", &[&first.node_addr()]);
    let table = first.node.home.join("peers.json");
    common::wait_until(Duration::from_secs(20), "the first node knows the second", || {
        common::verified_peers(&table).len() == 1
    });
    let desk = client(&token);
    desk.push(&desk.write("base.bin", &random_bytes(100_000, 50)), &[]);
    let laptop = home_with_key(&token, &desk.ok(&["key", "export"]));
    assert!(laptop.ok(&["ls"]).contains("base.bin"));

    second.kill();
    desk.push(&desk.write("desk.bin", &random_bytes(100_000, 51)), &[]);
    let _second = second.restart();
    first.kill();
    laptop.push(&laptop.write("laptop.bin", &random_bytes(100_000, 52)), &[]);
    let _first = first.restart();

    // Both copies have an entry 1, and they differ: each machine still sees
    // every version, and so does a new home. (`peers` checks the nodes each
    // machine saw fail at once, rather than after their backoff.)
    for home in [&desk, &laptop] {
        home.ok(&["peers"]);
        let ls = home.ok(&["ls"]);
        for name in ["base.bin", "desk.bin", "laptop.bin"] {
            assert!(ls.contains(name), "{name} in\n{ls}");
        }
    }
    let fresh = home_with_key(&token, &desk.ok(&["key", "export"]));
    let ls = fresh.ok(&["ls"]);
    assert!(ls.contains("desk.bin") && ls.contains("laptop.bin"), "{ls}");
    fresh.ok(&["pull", "laptop.bin", "-o", "l.bin"]);
}
