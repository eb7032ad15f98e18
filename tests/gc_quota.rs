//! Live garbage collection and quotas on real `p2pfs serve` processes:
//! `rm` frees every node's space, the grace period spares what a push in
//! flight may still pin, a full node refuses chunks and the push places
//! them on the next node, and only a node's own home learns usage per owner.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{Node, Server, client, member_client, random_bytes, runtime, wait_until};
use p2pfs::crypto::{EnvelopeRandomness, FileKey, OwnerKeys};
use p2pfs::id::{ChunkId, ManifestId};
use p2pfs::manifest::Manifest;
use p2pfs::sealing::Sealing;
use p2pfs::transfer::record::{signed_pin, signed_unpin};
use p2pfs::wire::ErrorCode;

/// Three nodes of one network, each started with `options[i]`, that know
/// each other through the first one.
fn three_nodes(options: [&[&str]; 3]) -> Vec<Server> {
    let first = Node::new();
    first.ok(&["init"]);
    let a = Server::start_with(first, "127.0.0.1:0", &[], options[0]);
    let token = a.invite();
    let mut servers = vec![a];
    for extra in &options[1..] {
        let node = Node::new();
        node.ok(&["init", "--join", &token]);
        servers.push(Server::start_with(node, "127.0.0.1:0", &[&servers[0].node_addr()], extra));
    }
    let peers_file = servers[0].node.home.join("peers.json");
    wait_until(Duration::from_secs(20), "the first node has verified the other two", || {
        let verified = common::verified_peers(&peers_file);
        servers[1..].iter().all(|s| verified.contains(&s.id))
    });
    servers
}

/// Bytes of chunk files in a node's store.
fn chunk_bytes(node: &Node) -> u64 {
    node.chunk_files().iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()
}

/// How many copies of each chunk the servers hold between them.
fn replica_counts(servers: &[Server]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for server in servers {
        for file in server.node.chunk_files() {
            *counts.entry(file.file_name().unwrap().to_string_lossy().into_owned()).or_default() += 1;
        }
    }
    counts
}

/// Sets a file's modification time two hours back: older than any grace here.
fn make_old(path: &Path) {
    let long_ago = SystemTime::now() - Duration::from_secs(7200);
    fs::File::open(path).unwrap().set_modified(long_ago).unwrap();
}

fn chunk_path(server: &Server, id: &ChunkId) -> std::path::PathBuf {
    let hex = id.to_string();
    server.node.home.join("store/chunks").join(&hex[..2]).join(&hex[2..4]).join(hex)
}

#[test]
fn after_rm_every_nodes_chunk_store_returns_to_its_size_before_the_push() {
    let grace: &[&str] = &["--gc-grace", "2s"];
    let servers = three_nodes([grace, grace, grace]);
    let me = client(&servers[0].invite());
    // A version that stays, so "before" is not empty and GC must keep it.
    let kept = random_bytes(1 << 20, 7);
    me.push(&me.write("kept.bin", &kept), &["--replicas", "2"]);
    let before: Vec<u64> = servers.iter().map(|s| chunk_bytes(&s.node)).collect();
    assert!(before.iter().sum::<u64>() >= 2 << 20, "two replicas of the kept file: {before:?}");

    me.push(&me.write("gone.bin", &random_bytes(4 << 20, 8)), &["--replicas", "2"]);
    let during: Vec<u64> = servers.iter().map(|s| chunk_bytes(&s.node)).collect();
    assert!(during.iter().sum::<u64>() >= before.iter().sum::<u64>() + (8 << 20), "{during:?}");

    me.ok(&["rm", "gone.bin"]);
    wait_until(Duration::from_secs(60), "every node's chunk bytes are back within 5% of before the push", || {
        servers.iter().zip(&before).all(|(s, &b)| chunk_bytes(&s.node).abs_diff(b) * 20 <= b)
    });
    me.ok(&["pull", "kept.bin", "-o", "back.bin"]);
    assert_eq!(fs::read(me.work.join("back.bin")).unwrap(), kept, "what a pin keeps is never collected");

    // Usage per owner: the node's own home sees the client's owner…
    let status: serde_json::Value = serde_json::from_str(&servers[0].node.ok(&["status", "--json"])).unwrap();
    let owners = status["owners"].as_array().unwrap();
    let mine: serde_json::Value = serde_json::from_str(&me.ok(&["status", "--json"])).unwrap();
    let row = owners.iter().find(|o| o["owner"] == mine["owner_id"]).expect("the client's owner is listed");
    assert!(row["bytes"].as_u64().unwrap() > 0 && row["bytes"].as_u64() <= status["stored_bytes"].as_u64());
    // …another member does not.
    let rt = runtime();
    let (_net, peer) = member_client(&servers[0], &rt);
    let theirs = rt.block_on(peer.status()).unwrap();
    assert!(theirs.chunk_bytes > 0 && theirs.owners.is_empty() && theirs.owners_omitted == 0, "{theirs:?}");
}

#[test]
fn a_pass_spares_chunks_within_the_grace_and_those_a_push_was_told_are_here() {
    let node = Node::new();
    node.ok(&["init"]);
    let server = Server::start_with(node, "127.0.0.1:0", &[], &["--gc-grace", "10m"]);
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    let owner = OwnerKeys::derive(&[3; 32]);
    let chunk = |n: u8| Bytes::from(vec![n; 100]);
    // `asked`: old and unreferenced (its version was removed), then a new
    // push asks about it and is told it is here; `old`: the same, never
    // asked about; `new`: unreferenced but written within the grace.
    let (asked, old, new) = (chunk(1), chunk(2), chunk(3));
    let ids: Vec<ChunkId> = [&asked, &old, &new].iter().map(|b| ChunkId::of(&b[..])).collect();
    for bytes in [&asked, &old, &new] {
        rt.block_on(peer.put_chunk(ChunkId::of(bytes), bytes.clone())).unwrap();
    }
    make_old(&chunk_path(&server, &ids[0]));
    make_old(&chunk_path(&server, &ids[1]));

    // A pinned, then unpinned manifest: its unpin calls for a pass, and its
    // file (old) goes in that pass after every chunk was looked at.
    let fresh = EnvelopeRandomness { file_key: FileKey([5; 32]), wrap_nonce: [6; 24], body_nonce: [7; 24] };
    let (signal, envelope) = Manifest::new("signal".into(), Sealing::current(3), Vec::new()).seal(&owner, &fresh);
    rt.block_on(peer.put_manifest(signal, Bytes::from(envelope))).unwrap();
    rt.block_on(peer.pin(signed_pin(&owner, signal, &[], None), &[])).unwrap();
    let signal_file = server.node.home.join("store/manifests").join(signal.to_string());
    make_old(&signal_file);

    assert_eq!(rt.block_on(peer.has(&ids[..1])).unwrap(), vec![true], "the push is told `asked` is here");
    rt.block_on(peer.unpin(signed_unpin(&owner, signal))).unwrap();
    wait_until(Duration::from_secs(30), "a pass has collected the unpinned manifest", || !signal_file.exists());
    assert!(!chunk_path(&server, &ids[1]).exists(), "an old chunk no pin needs is collected");
    assert!(chunk_path(&server, &ids[2]).exists(), "a chunk newer than the grace is not");
    assert!(chunk_path(&server, &ids[0]).exists(), "a chunk a push was told is here is not, before its pin");

    // The push's pin arrives: the chunk is kept for good.
    let version = ManifestId([9; 32]);
    rt.block_on(peer.pin(signed_pin(&owner, version, &ids[..1], None), &ids[..1])).unwrap();
    let mut back = Vec::new();
    assert!(rt.block_on(peer.get_chunk(ids[0], &mut back)).unwrap());
    assert_eq!(back, asked);
}

#[test]
fn a_full_node_refuses_chunks_and_the_push_places_them_on_the_next_node() {
    let quota = 256 * 1024;
    let servers = three_nodes([&[], &[], &["--max-storage", "256KiB"]]);
    let full = &servers[2];
    let me = client(&servers[0].invite());
    let data = random_bytes(4 << 20, 9);
    let out = me.run(&["push", "--replicas", "2", me.write("data.bin", &data).to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(chunk_bytes(&full.node) <= quota, "the full node stays under its quota: {}", chunk_bytes(&full.node));

    let counts = replica_counts(&servers);
    assert!(counts.len() > 20, "many chunks: {}", counts.len());
    assert!(counts.values().all(|&n| n == 2), "every chunk has two replicas: {counts:?}");

    me.ok(&["pull", "data.bin", "-o", "back.bin"]);
    assert_eq!(fs::read(me.work.join("back.bin")).unwrap(), data);

    // A new chunk is refused before its payload is read; one held is still acked.
    let rt = runtime();
    let (_net, peer) = member_client(full, &rt);
    let big = Bytes::from(random_bytes(quota as usize, 10));
    let refused = rt.block_on(peer.put_chunk(ChunkId::of(&big), big)).unwrap_err();
    assert_eq!(refused.remote_code(), Some(ErrorCode::STORAGE_FULL.0), "{refused}");
    assert!(refused.to_string().contains("quota"), "{refused}");
    let held = full.node.chunk_files().into_iter().next().expect("the full node holds a chunk");
    let held_bytes = Bytes::from(fs::read(&held).unwrap());
    rt.block_on(peer.put_chunk(ChunkId::of(&held_bytes), held_bytes)).unwrap();
    let status = rt.block_on(peer.status()).unwrap();
    assert_eq!(status.max_storage, Some(quota));
    assert!(status.chunk_bytes <= quota);
}
