//! Hostile clients, written with the library, against real `p2pfs serve`
//! processes: a handshake flood and a pre-`Hello` bulk sender (non-members),
//! stalled uploads, a silent fake member, a `Peers` flood, a connection
//! flood that fills the node, and a share ticket that lies about a chunk's
//! length. Each time a member's push and pull must still work, and the node
//! must stay small.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pfs::id::{ChunkId, NodeId};
use p2pfs::net::Tuning;
use p2pfs::net::stream::{FrameReader, Pace, SENDER_RATE, write_frame};
use p2pfs::net::tls::{self, Identity};
use p2pfs::wire::{self, ErrorCode, Frame, PeerInfo, PutChunk};
use quinn::crypto::rustls::QuicClientConfig;

use common::{Node, Server, client, member_client, member_net, peak_rss_mib, random_bytes, runtime, wait_until};

/// The node's peak RSS under attack must stay under this.
const RSS_LIMIT_MIB: u64 = 150;

/// A raw QUIC endpoint at `bind` and a client config for `node` with a
/// fresh node key: TLS succeeds (the node takes any Ed25519 client key),
/// but the caller decides what, if anything, follows.
fn raw_endpoint(bind: &str, node: NodeId) -> (quinn::Endpoint, quinn::ClientConfig) {
    let endpoint = quinn::Endpoint::client(bind.parse().unwrap()).unwrap();
    let identity = Identity::from_node_key(&rand::random()).unwrap();
    let crypto = QuicClientConfig::try_from(tls::client_config(&identity, node).unwrap()).unwrap();
    (endpoint, quinn::ClientConfig::new(Arc::new(crypto)))
}

/// A member's push of `len` random bytes and its pull, through the binary.
fn member_round_trip(me: &Node, len: usize, seed: u64) {
    let data = random_bytes(len, seed);
    let name = format!("member-{seed}.bin");
    let id = me.push(&me.write(&name, &data), &["--replicas", "1"]);
    let pulled = me.run(&["pull", &id, "-o", "-"]);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert!(pulled.stdout == data, "the member's pull is byte-identical");
}

#[test]
fn a_handshake_flood_and_a_pre_hello_bulk_sender_cost_a_member_nothing() {
    let server = Server::start();
    let node: NodeId = server.id.parse().unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    let me = client(&server.invite());
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let (handshakes, refused, bulk_max) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));

    // 320 handshakes at a time from eight addresses (127.0.0.2 to .9), each
    // holding its connection open without ever sending Hello, dialling
    // again as soon as it is closed.
    let floods: Vec<_> =
        (2..10).map(|i| rt.block_on(async { raw_endpoint(&format!("127.0.0.{i}:0"), node) })).collect();
    for i in 0..320 {
        let (flood, config) = &floods[i % floods.len()];
        let (flood, config, stop, handshakes, refused) =
            (flood.clone(), config.clone(), Arc::clone(&stop), Arc::clone(&handshakes), Arc::clone(&refused));
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(connecting) = flood.connect_with(config.clone(), addr, tls::SERVER_NAME) else { break };
                match connecting.await {
                    Ok(conn) => {
                        handshakes.fetch_add(1, Ordering::Relaxed);
                        conn.closed().await;
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    // Two bulk senders from 127.0.0.10: as many streams and bytes as they can
    // push before any Hello.
    let (bulk, bulk_config) = rt.block_on(async { raw_endpoint("127.0.0.10:0", node) });
    for _ in 0..2 {
        let (bulk, config, stop, bulk_max) =
            (bulk.clone(), bulk_config.clone(), Arc::clone(&stop), Arc::clone(&bulk_max));
        rt.spawn(async move {
            let junk = Bytes::from(vec![0x17; 1 << 20]);
            while !stop.load(Ordering::Relaxed) {
                let Ok(connecting) = bulk.connect_with(config.clone(), addr, tls::SERVER_NAME) else { break };
                let Ok(conn) = connecting.await else { continue };
                let mut written = 0u64;
                for _ in 0..8 {
                    let Ok(Ok((mut send, _recv))) =
                        tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await
                    else {
                        break;
                    };
                    // Partial writes: count every byte quinn takes, until it takes no more.
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), send.write(&junk)).await {
                        written += n as u64;
                    }
                }
                // Written is only buffered here; flow control decides how much
                // the node lets a sender buffer for it.
                bulk_max.fetch_max(written, Ordering::Relaxed);
                conn.closed().await;
            }
        });
    }
    wait_until(Duration::from_secs(30), "the flood is under way", || {
        handshakes.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) > 300
    });

    // The member gets in every time, though the pool is full.
    for seed in 1..=4 {
        member_round_trip(&me, 2 << 20, seed);
    }
    let (_net, member) = member_client(&server, &rt);
    for _ in 0..20 {
        rt.block_on(member.ping()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);

    let rss = peak_rss_mib(server.child.id());
    eprintln!(
        "flood: {} handshakes completed, {} refused; bulk sender buffered at most {} KiB; node peak RSS {rss} MiB",
        handshakes.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        bulk_max.load(Ordering::Relaxed) / 1024
    );
    assert!(refused.load(Ordering::Relaxed) > 0, "the node refused part of the flood");
    assert!(rss < RSS_LIMIT_MIB, "the node's peak RSS was {rss} MiB");
    let window = u64::from(p2pfs::net::ADMISSION_WINDOW);
    assert!(bulk_max.load(Ordering::Relaxed) <= window, "a non-member never gets more than the admission window");
    drop(rt);
}

#[test]
fn six_stalled_maximum_size_uploads_are_cut_and_other_members_carry_on() {
    let server = Server::start();
    let me = client(&server.invite());
    let rt = runtime();
    let (_net, attacker) = member_client(&server, &rt);

    // Six PutChunks that each declare the largest payload and send one byte.
    let started = Instant::now();
    let streams: Vec<FrameReader> = rt.block_on(async {
        let mut readers = Vec::new();
        for i in 0..6u8 {
            let (mut send, recv) = attacker.open().await.unwrap();
            let frame = Frame::PutChunk(PutChunk { id: ChunkId([i; 32]), len: wire::MAX_CHUNK_PAYLOAD });
            write_frame(&mut send, &frame, Bytes::from_static(&[0]), Pace::at_rate(SENDER_RATE)).await.unwrap();
            readers.push(FrameReader::new(recv));
            std::mem::forget(send); // keep the stream open, and silent
        }
        readers
    });

    // Meanwhile another member pushes and pulls.
    member_round_trip(&me, 6 << 20, 3);

    // Each stalled upload ends with an error reply: cut by the stall
    // deadline, or refused Busy for want of room in the attacker's share.
    let mut codes = Vec::new();
    for mut reader in streams {
        let reply = rt.block_on(reader.next_frame_within(Duration::from_secs(30))).unwrap();
        match reply {
            Frame::Error(e) => codes.push(e.code),
            other => panic!("a stalled upload got {other:?}"),
        }
    }
    let waited = started.elapsed();
    eprintln!("stalled uploads ended with {codes:?} after {waited:?}");
    assert!(codes.iter().all(|c| *c == ErrorCode::TIMEOUT || *c == ErrorCode::BUSY), "{codes:?}");
    assert!(codes.contains(&ErrorCode::TIMEOUT), "at least one was cut by the deadline: {codes:?}");
    let rss = peak_rss_mib(server.child.id());
    eprintln!("six stalled uploads: node peak RSS {rss} MiB");
    assert!(rss < RSS_LIMIT_MIB);
    // The node serves on, the attacker included.
    rt.block_on(attacker.ping()).unwrap();
}

#[test]
fn uploads_in_one_byte_packets_hold_no_more_than_their_bytes() {
    let server = Server::start();
    let me = client(&server.invite());
    let rt = runtime();
    let node: NodeId = server.id.parse().unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    let (stop, sent, cut) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Five NodeIds, one largest PutChunk each, its payload one byte per write.
    for i in 0..5u8 {
        let net = member_net(&server, &rt, "127.0.0.1:0");
        let peer = rt.block_on(net.connect(node, addr)).unwrap();
        let (stop, sent, cut) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&cut));
        rt.spawn(async move {
            let _net = net;
            let (mut send, _recv) = peer.open().await.unwrap();
            let frame = Frame::PutChunk(PutChunk { id: ChunkId([i; 32]), len: wire::MAX_CHUNK_PAYLOAD });
            write_frame(&mut send, &frame, Bytes::new(), Pace::at_rate(SENDER_RATE)).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                if send.write_all(&[0]).await.is_err() {
                    // The node cut it: too slow for its pace.
                    cut.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
    }
    // However fast this machine trickles, either a megabyte gets through in
    // one-byte writes, or the node cuts every one of them for falling behind.
    wait_until(Duration::from_secs(60), "a megabyte of one-byte writes, or every trickle cut", || {
        sent.load(Ordering::Relaxed) > 1 << 20 || cut.load(Ordering::Relaxed) == 5
    });
    member_round_trip(&me, 4 << 20, 10);
    let started = Instant::now();
    // Let the trickle go on a while: memory must not grow with it.
    while started.elapsed() < Duration::from_secs(10) {
        assert!(
            peak_rss_mib(server.child.id()) < RSS_LIMIT_MIB,
            "the node grew to {} MiB",
            peak_rss_mib(server.child.id())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let rss = peak_rss_mib(server.child.id());
    eprintln!(
        "one-byte uploads: {} bytes sent, {} cut; node peak RSS {rss} MiB",
        sent.load(Ordering::Relaxed),
        cut.load(Ordering::Relaxed)
    );
    assert!(rss < RSS_LIMIT_MIB);
}

#[test]
fn a_status_flood_over_a_large_store_costs_one_count() {
    // A node whose store holds 50,000 chunk files (empty: only their number
    // matters here).
    let home = Node::new();
    home.ok(&["init"]);
    let chunks = home.home.join("store/chunks");
    for i in 0..50_000u32 {
        let hex = format!("{:064x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let dir = chunks.join(&hex[..2]).join(&hex[2..4]);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&hex), b"").unwrap();
    }
    let server = Server::start_in(home, "127.0.0.1:0", &[]);
    let rt = runtime();
    let (_a, one) = member_client(&server, &rt);
    let (_b, two) = member_client(&server, &rt);
    let started = Instant::now();
    let answers = rt.block_on(async {
        let calls = [&one, &two].into_iter().flat_map(|peer| (0..120).map(move |_| peer.status()));
        futures_util::future::join_all(calls).await
    });
    let took = started.elapsed();
    let rss = peak_rss_mib(server.child.id());
    eprintln!("240 status requests over 50,000 chunk files: {took:?}; node peak RSS {rss} MiB");
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| s.chunks == 50_000)), "every request answered, right");
    assert!(rss < RSS_LIMIT_MIB);
}

#[test]
fn a_host_with_many_node_ids_cannot_hold_every_member_slot() {
    let server = Server::start();
    let me = client(&server.invite());
    let rt = runtime();
    let node: NodeId = server.id.parse().unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    let per_node = p2pfs::node::MAX_CONNECTIONS_PER_NODE;
    let total = p2pfs::node::MAX_MEMBER_CONNECTIONS;
    // From 127.0.0.2: enough fresh NodeIds to take every slot, each
    // connection keeping a request in flight all the time (an upload whose
    // payload never comes, sent again as soon as the node cuts it), so that
    // no connection is ever idle.
    let stop = Arc::new(AtomicBool::new(false));
    let (mut nets, mut held) = (Vec::new(), Vec::new());
    for _ in 0..total / per_node {
        let net = member_net(&server, &rt, "127.0.0.2:0");
        for _ in 0..per_node {
            held.push(rt.block_on(net.connect(node, addr)).unwrap());
        }
        nets.push(net);
    }
    for peer in &held {
        let (peer, stop) = (peer.clone(), Arc::clone(&stop));
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut send, recv)) = peer.open().await else { break };
                let frame = Frame::PutChunk(PutChunk { id: ChunkId([7; 32]), len: 64 << 10 });
                if write_frame(&mut send, &frame, Bytes::new(), Pace::at_rate(SENDER_RATE)).await.is_err() {
                    break;
                }
                let _ = FrameReader::new(recv).next_frame_within(Duration::from_secs(30)).await;
            }
        });
    }
    let (_net, asker) = member_client(&server, &rt);
    let connections = rt.block_on(asker.status()).unwrap().connections;
    assert_eq!(connections as usize, total, "the node is full");
    // A member from another address still gets in, again and again.
    for seed in 20..23 {
        member_round_trip(&me, 1 << 20, seed);
    }
    stop.store(true, Ordering::Relaxed);
    let rss = peak_rss_mib(server.child.id());
    eprintln!("one host's 256 always-busy connections: node peak RSS {rss} MiB");
    assert!(rss < RSS_LIMIT_MIB);
}

#[test]
fn unread_replies_from_one_host_leave_other_members_their_half() {
    let server = Server::start();
    let rt = runtime();
    let node: NodeId = server.id.parse().unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    // Three 16 MiB chunks on the node.
    let (_up_net, up) = member_client(&server, &rt);
    let ids: Vec<ChunkId> = (0..3u64)
        .map(|seed| {
            let data = random_bytes(16 << 20, 100 + seed);
            let id = ChunkId::of(&data);
            rt.block_on(up.put_chunk(id, Bytes::from(data))).unwrap();
            id
        })
        .collect();
    // Two minted NodeIds on 127.0.0.2 ask for all three, with quinn's small
    // default windows, and never read: the replies cannot be delivered.
    let keys = p2pfs::home::Keys::load(&server.node.home).unwrap();
    let mut unread = Vec::new();
    for _ in 0..2 {
        let _guard = rt.enter();
        let bind = "127.0.0.2:0".parse().unwrap();
        let net = p2pfs::net::Net::bind(bind, &rand::random(), keys.network, Tuning::QuinnDefaults, false).unwrap();
        let peer = rt.block_on(net.connect(node, addr)).unwrap();
        for id in &ids {
            let (mut send, recv) = rt.block_on(peer.open()).unwrap();
            rt.block_on(write_frame(
                &mut send,
                &Frame::GetChunk(wire::GetChunk { id: *id }),
                Bytes::new(),
                Pace::at_rate(SENDER_RATE),
            ))
            .unwrap();
            let _ = send.finish();
            unread.push(recv);
        }
        unread.push(rt.block_on(peer.open()).unwrap().1);
        std::mem::forget((net, peer));
    }
    // A member elsewhere still stores and fetches, without a Busy, again and again.
    let (_net, honest) = member_client(&server, &rt);
    for round in 0..3u64 {
        let data = random_bytes(1 << 20, 7 + round);
        rt.block_on(honest.put_chunk(ChunkId::of(&data), Bytes::from(data))).unwrap();
        let mut out = Vec::new();
        assert!(rt.block_on(honest.get_chunk(ids[round as usize], &mut out)).unwrap());
    }
    let rss = peak_rss_mib(server.child.id());
    eprintln!("unread replies from two minted NodeIds: node peak RSS {rss} MiB");
    assert!(rss < RSS_LIMIT_MIB);
    drop(unread);
}

#[test]
fn many_uploads_on_one_connection_share_its_pace() {
    let server = Server::start();
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    // Sixteen 128 KiB uploads at once, all sent a little at a time in turn,
    // 2.5 times the minimum rate in all: each gets a sixteenth of it.
    let (count, len) = (16usize, 128usize << 10);
    let chunks: Vec<Vec<u8>> = (0..count).map(|i| random_bytes(len, 300 + i as u64)).collect();
    let (mut sends, mut replies) = (Vec::new(), Vec::new());
    for chunk in &chunks {
        let (mut send, recv) = rt.block_on(peer.open()).unwrap();
        let frame = Frame::PutChunk(PutChunk { id: ChunkId::of(chunk), len: len as u32 });
        rt.block_on(write_frame(&mut send, &frame, Bytes::new(), Pace::at_rate(SENDER_RATE))).unwrap();
        sends.push(send);
        let mut reader = FrameReader::new(recv);
        replies.push(rt.spawn(async move { reader.next_frame_within(Duration::from_secs(120)).await }));
    }
    let step = 1024;
    let rate = p2pfs::net::stream::MIN_RATE * 5 / 2;
    let pause = Duration::from_millis((count * step) as u64 * 1000 / rate);
    for offset in (0..len).step_by(step) {
        for (send, chunk) in sends.iter_mut().zip(&chunks) {
            rt.block_on(send.write_all(&chunk[offset..offset + step])).unwrap();
        }
        // The pace of a slow link, not a wait for anything.
        std::thread::sleep(pause);
    }
    for (reply, chunk) in replies.into_iter().zip(&chunks) {
        match rt.block_on(reply).unwrap().unwrap() {
            Frame::Ack(ack) => assert_eq!(ack.id, ChunkId::of(chunk).0),
            other => panic!("an upload keeping its share of the pace was refused: {other:?}"),
        }
    }
}

#[test]
fn concurrent_puts_of_one_chunk_count_it_once() {
    let server = Server::start();
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    for round in 0..5u64 {
        let data = Bytes::from(random_bytes(256 << 10, 900 + round));
        let id = ChunkId::of(&data);
        let puts = (0..16).map(|_| peer.put_chunk(id, data.clone()));
        for put in rt.block_on(futures_util::future::join_all(puts)) {
            put.unwrap();
        }
    }
    let status = rt.block_on(peer.status()).unwrap();
    assert_eq!(status.chunks as usize, server.node.chunk_files().len());
    assert_eq!(status.chunks, 5);
}

#[test]
fn a_full_node_takes_room_from_idle_connections_before_busy_ones() {
    let server = Server::start();
    let rt = runtime();
    let node: NodeId = server.id.parse().unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    let total = p2pfs::node::MAX_MEMBER_CONNECTIONS;
    let per_node = p2pfs::node::MAX_CONNECTIONS_PER_NODE;
    // An honest member with its connections busy (uploads in progress, at pace).
    let honest_net = member_net(&server, &rt, "127.0.0.1:0");
    let honest: Vec<_> = (0..per_node).map(|_| rt.block_on(honest_net.connect(node, addr)).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    for peer in &honest {
        let (peer, stop) = (peer.clone(), Arc::clone(&stop));
        rt.spawn(async move {
            // Four of these fit in the member's half of the budget at once.
            let data = random_bytes(4 << 20, 77);
            let (mut send, _recv) = peer.open().await.unwrap();
            let frame = Frame::PutChunk(PutChunk { id: ChunkId::of(&data), len: data.len() as u32 });
            write_frame(&mut send, &frame, Bytes::new(), Pace::at_rate(SENDER_RATE)).await.unwrap();
            for piece in data.chunks(16 << 10) {
                if stop.load(Ordering::Relaxed) || send.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    // Idle fillers, four to an address, up to a full node.
    let mut fillers = Vec::new();
    for i in 0..(total - per_node) {
        if i % 4 == 0 {
            fillers.push((member_net(&server, &rt, &format!("127.0.1.{}:0", i / 4 + 1)), Vec::new()));
        }
        let (net, held) = fillers.last_mut().unwrap();
        held.push(rt.block_on(net.connect(node, addr)).unwrap());
    }
    // A newcomer from yet another address: an idle filler makes room.
    let newcomer_net = member_net(&server, &rt, "127.0.2.1:0");
    let newcomer = rt.block_on(newcomer_net.connect(node, addr)).unwrap();
    rt.block_on(newcomer.ping()).unwrap();
    let closed = |peers: &[p2pfs::net::Peer]| peers.iter().filter(|p| p.close_reason().is_some()).count();
    let fillers_closed = || fillers.iter().map(|(_, held)| closed(held)).sum::<usize>();
    wait_until(Duration::from_secs(5), "an idle filler gives way", || fillers_closed() >= 1);
    assert_eq!(closed(&honest), 0, "no busy honest connection was closed");
    assert_eq!(fillers_closed(), 1, "one idle filler gave way, no more");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn unread_replies_of_the_largest_manifest_stay_inside_the_budget() {
    use p2pfs::crypto::OwnerKeys;

    let server = Server::start();
    let me = client(&server.invite());
    let rt = runtime();
    let (_net, attacker) = member_client(&server, &rt);
    let (manifest, envelope, _) = common::largest_manifest(&OwnerKeys::derive(&[5; 32]));
    rt.block_on(attacker.put_manifest(manifest, envelope.into())).unwrap();

    // Twelve requests for it whose replies nobody reads.
    let _unread: Vec<_> = rt.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..12 {
            let (mut send, recv) = attacker.open().await.unwrap();
            let frame = Frame::GetManifest(wire::GetManifest { id: manifest });
            write_frame(&mut send, &frame, Bytes::new(), Pace::at_rate(SENDER_RATE)).await.unwrap();
            let _ = send.finish();
            streams.push(recv);
        }
        streams
    });
    // Meanwhile a member works, and the node holds one reply at a time.
    member_round_trip(&me, 4 << 20, 7);
    member_round_trip(&me, 4 << 20, 8);
    let rss = peak_rss_mib(server.child.id());
    eprintln!("twelve unread 17 MiB manifest replies: node peak RSS {rss} MiB");
    assert!(rss < RSS_LIMIT_MIB, "the node's peak RSS was {rss} MiB");
}

/// A process that passes `Hello` as a member and then never answers anything.
fn silent_member(server: &Server, rt: &tokio::runtime::Runtime) -> (NodeId, SocketAddr, tokio::task::JoinHandle<()>) {
    let keys = p2pfs::home::Keys::load(&server.node.home).unwrap();
    let _guard = rt.enter();
    let net =
        p2pfs::net::Net::bind("127.0.0.1:0".parse().unwrap(), &rand::random(), keys.network, Default::default(), true)
            .unwrap();
    let (node, addr) = (net.node_id(), net.local_addr().unwrap());
    let task = rt.spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = net.accept().await {
            if let Ok(candidate) = net.handshake(incoming).await
                && let Ok(peer) = candidate.welcome(p2pfs::net::MEMBER_RECEIVE_WINDOW).await
            {
                held.push(peer); // never accept a stream
            }
        }
    });
    (node, addr, task)
}

#[test]
fn a_silent_fake_member_costs_a_push_a_few_seconds_at_most() {
    let server = Server::start();
    let rt = runtime();
    let (fake, fake_addr, _task) = silent_member(&server, &rt);
    let me = client(&server.invite());
    let table = format!(
        r#"{{"peers":[{{"node":"{}","addrs":["{}"]}},{{"node":"{fake}","addrs":["{fake_addr}"]}}]}}"#,
        server.id, server.addr
    );
    fs::write(me.home.join("peers.json"), table).unwrap();

    let data = random_bytes(4 << 20, 4);
    let file = me.write("data.bin", &data);
    let started = Instant::now();
    let out = me.command().args(["push", file.to_str().unwrap()]).output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&fake.short(16)) && stderr.contains("did not answer"), "the summary names it: {stderr}");
    eprintln!(
        "push with a silent member among the peers took {took:?}; node peak RSS {} MiB",
        peak_rss_mib(server.child.id())
    );
    assert!(took < Duration::from_secs(10), "the silent member cost the push {took:?}");
    let pulled = me.run(&["pull", "data.bin", "-o", "-"]);
    assert!(pulled.status.success() && pulled.stdout == data);
}

#[test]
fn a_peers_flood_leaves_real_addresses_in_place() {
    let b = Server::start();
    let a = Server::start_in(
        {
            let node = Node::new();
            node.ok(&["init", "--join", &b.invite()]);
            node
        },
        "127.0.0.1:0",
        &[&b.node_addr()],
    );
    let rt = runtime();
    let (_net, mallory) = member_client(&a, &rt);
    let b_id: NodeId = b.id.parse().unwrap();
    let b_addr: SocketAddr = b.addr.parse().unwrap();
    let peers_file = a.node.home.join("peers.json");
    wait_until(Duration::from_secs(20), "A has verified B", || common::verified_peers(&peers_file).contains(&b.id));
    let before = fs::read_to_string(&peers_file).unwrap();

    // 200 frames: B's NodeId with eight fake addresses, and 63 made-up peers each.
    for round in 0..200u16 {
        let fake_addrs: Vec<SocketAddr> =
            (0..8).map(|i| SocketAddr::from(([10, 9, (round % 250) as u8, i], 7070))).collect();
        let mut peers = vec![p2pfs::home::peers::KnownPeer { node: b_id, addrs: fake_addrs }.to_wire()];
        peers.extend((0..63u16).map(|i| {
            let mut id = [0x33; 32];
            id[..4].copy_from_slice(&(u32::from(round) * 64 + u32::from(i)).to_le_bytes());
            p2pfs::home::peers::KnownPeer { node: NodeId(id), addrs: vec![SocketAddr::from(([10, 8, 0, 1], 7070))] }
                .to_wire()
        }));
        let told = rt.block_on(mallory.exchange_peers(peers)).unwrap();
        if round == 199 {
            // What A tells others: only what it verified itself.
            let b_told: Vec<&PeerInfo> = told.iter().filter(|p| p.node == b_id).collect();
            assert_eq!(b_told.len(), 1);
            let addrs: Vec<SocketAddr> = b_told[0].addrs.iter().map(|&x| x.into()).collect();
            assert_eq!(addrs, vec![b_addr], "only B's real address is passed on");
            assert!(told.iter().all(|p| p.node == b_id || p.node.to_string() == a.id), "no made-up peer is passed on");
        }
    }
    wait_until(Duration::from_secs(20), "A's table is written after the flood", || {
        fs::read_to_string(&peers_file).is_ok_and(|t| t != before)
    });
    let table: serde_json::Value = serde_json::from_str(&fs::read_to_string(&peers_file).unwrap()).unwrap();
    let peers = table["peers"].as_array().unwrap();
    assert!(peers.len() <= p2pfs::home::peers::MAX_KNOWN_PEERS, "{} peers", peers.len());
    let at_one_address = peers.iter().filter(|p| p.to_string().contains("10.8.0.1")).count();
    assert!(at_one_address <= p2pfs::home::peers::MAX_PEERS_PER_ADDRESS, "{at_one_address} peers at one address");
    let b_entry = peers.iter().find(|p| p["node"] == b.id.as_str()).expect("B is still known");
    assert_eq!(b_entry["addrs"][0], b.addr.as_str(), "B's verified address is still first: {b_entry}");
    assert!(b_entry["unverified"].as_array().is_none_or(|u| u.len() <= p2pfs::home::peers::MAX_ADDRS));

    // And the network still works through A.
    let me = client(&a.invite());
    member_round_trip(&me, 2 << 20, 5);
    let rss = peak_rss_mib(a.child.id());
    eprintln!("Peers flood: {} peers in A's table; A's peak RSS {rss} MiB", peers.len());
    assert!(rss < RSS_LIMIT_MIB);
}

#[test]
fn a_full_node_makes_room_by_closing_its_longest_idle_member() {
    let server = Server::start();
    let rt = runtime();
    let node: NodeId = server.id.parse().unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    let per_node = p2pfs::node::MAX_CONNECTIONS_PER_NODE;
    let total = p2pfs::node::MAX_MEMBER_CONNECTIONS;

    // One NodeId may hold only a few connections: its ninth closes its oldest idle one.
    let net = member_net(&server, &rt, "127.0.0.1:0");
    let mine: Vec<_> = (0..per_node).map(|_| rt.block_on(net.connect(node, addr)).unwrap()).collect();
    let ninth = rt.block_on(net.connect(node, addr)).unwrap();
    rt.block_on(ninth.ping()).unwrap();
    let closed =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), mine[0].connection().closed()).await });
    match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code.into_inner(), u64::from(ErrorCode::IDLE.0))
        }
        other => panic!("the oldest idle connection of that node should be closed as idle: {other:?}"),
    }
    drop((mine, ninth));

    // Fill the node with members (a few connections each), then one more gets in.
    let nets: Vec<_> = (0..total / per_node + 1).map(|_| member_net(&server, &rt, "127.0.0.1:0")).collect();
    let mut held = Vec::new();
    for net in &nets {
        for _ in 0..per_node {
            held.push(rt.block_on(net.connect(node, addr)).unwrap());
        }
    }
    let (_late, latecomer) = member_client(&server, &rt);
    rt.block_on(latecomer.ping()).unwrap();
    let closed_idle = held
        .iter()
        .filter(|p| {
            matches!(p.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(ref c))
                if c.error_code.into_inner() == u64::from(ErrorCode::IDLE.0))
        })
        .count();
    assert!(closed_idle >= held.len() + 1 - total, "{closed_idle} idle members made room");
    let rss = peak_rss_mib(server.child.id());
    eprintln!("a full node ({} connections held): peak RSS {rss} MiB", held.len());
    assert!(rss < RSS_LIMIT_MIB);
}

#[test]
fn idle_members_are_closed_and_a_paused_push_reconnects() {
    use std::io::Write;

    let server = Server::start();
    let me = client(&server.invite());
    let rt = runtime();
    let data = random_bytes(3 << 20, 9);
    // A push from a pipe that pauses for longer than the node keeps an idle connection.
    let mut push = me
        .command()
        .args(["push", "-", "--name", "paused.bin", "--replicas", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = push.stdin.take().unwrap();
    stdin.write_all(&data[..1 << 20]).unwrap();
    stdin.flush().unwrap();
    wait_until(Duration::from_secs(30), "the first chunks reach the node", || server.node.chunk_files().len() >= 8);

    // A member that asks once and then stays quiet is closed as idle ...
    let (_net, quiet) = member_client(&server, &rt);
    rt.block_on(quiet.ping()).unwrap();
    let idle = p2pfs::node::MEMBER_IDLE_TIMEOUT;
    let closed = rt.block_on(async { tokio::time::timeout(idle * 2, quiet.connection().closed()).await });
    match closed {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code.into_inner(), u64::from(ErrorCode::IDLE.0))
        }
        other => panic!("an idle member should be closed as idle: {other:?}"),
    }
    // ... and so is the paused push's (only the asker's connection is left).
    let deadline = Instant::now() + idle;
    loop {
        let (net, asker) = member_client(&server, &rt);
        let connections = rt.block_on(asker.status()).unwrap().connections;
        rt.block_on(net.shutdown());
        if connections == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the node still has {connections} connections");
        // Polling, not synchronisation: a new connection per look, four a second.
        std::thread::sleep(Duration::from_millis(250));
    }

    // The push goes on: it connects again and finishes.
    let rest = stdin.write_all(&data[1 << 20..]);
    drop(stdin);
    let out = push.wait_with_output().unwrap();
    assert!(rest.is_ok(), "the push stopped reading: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled = me.run(&["pull", "paused.bin", "-o", "-"]);
    assert!(pulled.status.success() && pulled.stdout == data);
}

#[test]
fn a_share_ticket_that_lies_about_a_chunks_length_quarantines_nothing() {
    use p2pfs::crypto::{ChunkKey, EnvelopeRandomness, FileKey, OwnerKeys};
    use p2pfs::manifest::{ChunkRef, Manifest};
    use p2pfs::sealing::Sealing;

    // The victim pushed a file into its own store, then joined a network.
    let victim = Node::with_chunks(common::SMALL_CHUNKS);
    let data = random_bytes(1 << 20, 6);
    victim.push(&victim.write("mine.bin", &data), &[]);
    let server = Server::start();
    victim.ok(&["init", "--join", &server.invite()]);
    let chunk = victim.chunk_files().into_iter().next().expect("the victim stores chunks");
    let chunk_id: ChunkId = chunk.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let real_len = fs::metadata(&chunk).unwrap().len() as u32 - 16;

    // The attacker, who saw that chunk id as a storage node, lists it in a
    // manifest of its own with a length far too short for it, and shares that.
    let attacker = OwnerKeys::derive(&[9; 32]);
    let file_key = FileKey(rand::random());
    let fresh = EnvelopeRandomness { file_key, wrap_nonce: [1; 24], body_nonce: [2; 24] };
    let refs = vec![ChunkRef { id: chunk_id, key: ChunkKey([0; 32]), len: real_len / 2 }];
    let (manifest, envelope) = Manifest::new("bait.bin".into(), Sealing::current(3), refs).seal(&attacker, &fresh);
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    rt.block_on(peer.put_manifest(manifest, envelope.into())).unwrap();
    let peers = vec![
        p2pfs::home::peers::KnownPeer { node: server.id.parse().unwrap(), addrs: vec![server.addr.parse().unwrap()] }
            .to_wire(),
    ];
    let ticket = p2pfs::token::encode(&p2pfs::token::ShareTicket { manifest, file_key: file_key.0, peers });

    let stderr = victim.fails(&["pull", &ticket, "-o", "bait.bin"], 1);
    assert!(stderr.contains("manifest") && stderr.contains("bytes"), "a clear error: {stderr}");
    assert!(chunk.is_file(), "the victim's good chunk is where it was");
    assert!(fs::read_dir(victim.home.join("store/quarantine")).unwrap().next().is_none(), "nothing quarantined");
    let pulled = victim.run(&["pull", "mine.bin", "-o", "-"]);
    assert!(pulled.status.success() && pulled.stdout == data, "{}", String::from_utf8_lossy(&pulled.stderr));
}

#[test]
fn bytes_too_short_to_be_a_chunk_are_refused_and_leave_nothing_behind() {
    let server = Server::start();
    let rt = runtime();
    let (_net, member) = member_client(&server, &rt);
    for len in [0usize, 1, 15] {
        let junk = vec![7u8; len];
        let id = ChunkId::of(&junk);
        let err = rt.block_on(member.put_chunk(id, bytes::Bytes::from(junk))).expect_err("no chunk is that short");
        assert_eq!(err.remote_code(), Some(ErrorCode::BAD_FRAME.0), "{len} bytes: {err}");
    }
    assert!(server.node.chunk_files().is_empty(), "nothing stored, so nothing for quarantine either");
    let legit = vec![7u8; 16];
    rt.block_on(member.put_chunk(ChunkId::of(&legit), bytes::Bytes::from(legit))).unwrap();
    assert_eq!(server.node.chunk_files().len(), 1, "a tag's worth is a chunk");
}
