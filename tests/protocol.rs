//! A member speaking the protocol directly to a real `p2pfs serve`: bad
//! frames, forged pins and unpins. The client is the library's own `Net`.

mod common;

use bytes::Bytes;
use p2pfs::crypto::{ChunkKey, EnvelopeRandomness, FileKey, OwnerKeys};
use p2pfs::id::{ChunkId, ManifestId};
use p2pfs::manifest::{ChunkRef, Manifest};
use p2pfs::net::stream::FrameReader;
use p2pfs::sealing::Sealing;
use p2pfs::wire::{self, ErrorCode, Frame, Pin, Signature, Unpin};

use common::{Server, member_client, runtime};

#[test]
fn a_rejected_frame_closes_its_stream_and_the_node_serves_on() {
    let server = Server::start();
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    let reply = rt.block_on(async {
        let (mut send, recv) = peer.open().await.unwrap();
        // A frame of an unknown type 0x7f.
        send.write_all(&[2, 0, 0, 0, 1, 0x7f]).await.unwrap();
        let _ = send.finish();
        FrameReader::new(recv).next_frame().await.unwrap()
    });
    match reply {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::BAD_FRAME);
            assert!(e.message.contains("unknown frame type"), "{}", &*e.message);
        }
        other => panic!("expected an Error frame, got {other:?}"),
    }
    // The same connection still works, and so does a second client.
    rt.block_on(peer.ping()).unwrap();
    let (_net2, other) = member_client(&server, &rt);
    rt.block_on(other.ping()).unwrap();
    // A chunk whose bytes do not hash to its id is refused and not stored.
    let err = rt.block_on(peer.put_chunk(ChunkId([1; 32]), Bytes::from_static(b"not those bytes"))).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_FRAME.0), "{err}");
    assert!(server.node.chunk_files().is_empty());
}

/// A sealed manifest of `owner` listing `chunks` (ciphertexts), with a fixed file key.
fn manifest_of(owner: &OwnerKeys, name: &str, chunks: &[&[u8]]) -> (ManifestId, Vec<u8>) {
    let refs = chunks
        .iter()
        .map(|c| ChunkRef { id: ChunkId::of(c), key: ChunkKey([3; 32]), len: (c.len() - 16) as u32 })
        .collect();
    let fresh = EnvelopeRandomness { file_key: FileKey(rand::random()), wrap_nonce: [1; 24], body_nonce: [2; 24] };
    Manifest::new(name.into(), Sealing::V1, refs).seal(owner, &fresh)
}

fn pin_of(owner: &OwnerKeys, manifest: ManifestId, chunks: &[ChunkId], signer: &OwnerKeys) -> Pin {
    let message = wire::pin_message(&owner.owner_id(), &manifest, chunks);
    Pin {
        owner: owner.owner_id(),
        manifest,
        chunks: chunks.len() as u32,
        signature: signer.sign(wire::PIN_DOMAIN, &message),
        erasure: None,
    }
}

fn unpin_of(owner: &OwnerKeys, manifest: ManifestId, signer: &OwnerKeys) -> Unpin {
    let message = wire::unpin_message(&owner.owner_id(), &manifest);
    Unpin { owner: owner.owner_id(), manifest, signature: signer.sign(wire::UNPIN_DOMAIN, &message) }
}

/// Stops `server`, runs `p2pfs gc` on its home, and starts it again on the same address.
fn collect_garbage(mut server: Server) -> Server {
    server.stop();
    server.node.ok(&["gc"]);
    let addr = server.addr.clone();
    let node = std::mem::replace(&mut server.node, common::Node::new());
    Server::start_in(node, &addr, &[])
}

#[test]
fn a_pin_squat_and_a_pin_replay_leave_the_owners_pins_alone() {
    let server = Server::start();
    let rt = runtime();
    let (_alice_net, alice_conn) = member_client(&server, &rt);
    let (_mallory_net, mallory_conn) = member_client(&server, &rt);
    let (alice, mallory) = (OwnerKeys::derive(&[1; 32]), OwnerKeys::derive(&[2; 32]));
    let chunk = b"ciphertext of one of alice's chunks".to_vec();
    let chunk_id = ChunkId::of(&chunk);
    let (manifest, envelope) = manifest_of(&alice, "alice.txt", &[&chunk]);
    rt.block_on(alice_conn.put_chunk(chunk_id, Bytes::copy_from_slice(&chunk))).unwrap();
    rt.block_on(alice_conn.put_manifest(manifest, envelope.into())).unwrap();

    // Mallory, a storage node, saw the manifest id and chunk ids. She pins
    // them first, under her own key: that is her pin, not Alice's.
    rt.block_on(mallory_conn.pin(pin_of(&mallory, manifest, &[chunk_id], &mallory), &[chunk_id])).unwrap();
    // In Alice's name, she cannot.
    let forged = pin_of(&alice, manifest, &[chunk_id], &mallory);
    let err = rt.block_on(mallory_conn.pin(forged, &[chunk_id])).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");
    // Alice's own pin is stored, not skipped because Mallory's came first.
    rt.block_on(alice_conn.pin(pin_of(&alice, manifest, &[chunk_id], &alice), &[chunk_id])).unwrap();
    assert_eq!(rt.block_on(alice_conn.status()).unwrap().pins, 2);
    // Mallory can remove her pin, not Alice's.
    let err = rt.block_on(mallory_conn.unpin(unpin_of(&alice, manifest, &mallory))).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");
    rt.block_on(mallory_conn.unpin(unpin_of(&mallory, manifest, &mallory))).unwrap();
    assert_eq!(rt.block_on(alice_conn.status()).unwrap().pins, 1);

    // Both pin one manifest at the same moment, again and again: both are kept.
    for round in 0..20u8 {
        let other = [round; 40];
        let other_id = ChunkId::of(&other);
        let (m, env) = manifest_of(&alice, &format!("race-{round}"), &[&other]);
        rt.block_on(alice_conn.put_chunk(other_id, Bytes::copy_from_slice(&other))).unwrap();
        rt.block_on(alice_conn.put_manifest(m, env.into())).unwrap();
        let ids = [other_id];
        let (a, b) = rt.block_on(async {
            tokio::join!(
                alice_conn.pin(pin_of(&alice, m, &ids, &alice), &ids),
                mallory_conn.pin(pin_of(&mallory, m, &ids, &mallory), &ids),
            )
        });
        a.unwrap();
        b.unwrap();
        assert_eq!(rt.block_on(alice_conn.status()).unwrap().pins, 1 + 2 * (u64::from(round) + 1));
    }

    // A collection keeps what Alice pins, whatever Mallory did.
    drop((alice_conn, mallory_conn));
    let server = collect_garbage(server);
    let hex = chunk_id.to_string();
    let chunk_file = server.node.home.join("store/chunks").join(&hex[..2]).join(&hex[2..4]).join(&hex);
    assert!(chunk_file.is_file(), "Alice's chunk survives Mallory's unpin and a GC");
    assert!(server.node.home.join("store/manifests").join(manifest.to_string()).is_file());

    // Alice unpins; a captured copy of her pin, sent again, is refused.
    let (_alice_net, alice_conn) = member_client(&server, &rt);
    let (_mallory_net, mallory_conn) = member_client(&server, &rt);
    rt.block_on(alice_conn.unpin(unpin_of(&alice, manifest, &alice))).unwrap();
    let replayed = pin_of(&alice, manifest, &[chunk_id], &alice);
    let err = rt.block_on(mallory_conn.pin(replayed, &[chunk_id])).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::UNPINNED.0), "{err}");
    drop((alice_conn, mallory_conn));
    let server = collect_garbage(server);
    assert!(!chunk_file.exists(), "with its only pin gone for good, the chunk is collected");
    drop(server);
}

#[test]
fn a_manifest_and_a_pin_of_the_largest_size_round_trip_through_a_node() {
    let server = Server::start();
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    let owner = OwnerKeys::derive(&[4; 32]);
    let (manifest, envelope, ids) = common::largest_manifest(&owner);
    assert!(envelope.len() <= wire::MAX_MANIFEST_PAYLOAD as usize);

    rt.block_on(peer.put_manifest(manifest, Bytes::copy_from_slice(&envelope))).unwrap();
    let back = rt.block_on(peer.get_manifest(manifest)).unwrap().expect("the node has it");
    assert!(back == envelope, "the largest envelope comes back byte for byte");
    rt.block_on(peer.pin(pin_of(&owner, manifest, &ids, &owner), &ids)).unwrap();
    assert_eq!(rt.block_on(peer.status()).unwrap().pins, 1);
    rt.block_on(peer.unpin(unpin_of(&owner, manifest, &owner))).unwrap();
    assert_eq!(rt.block_on(peer.status()).unwrap().pins, 0);

    // What is not an envelope is not kept, whatever its id.
    let junk = vec![0u8; 4096];
    let err = rt.block_on(peer.put_manifest(ManifestId::of(&junk), junk.into())).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_FRAME.0), "{err}");
}

#[test]
fn a_node_keeps_an_owners_log_only_in_order_and_only_signed() {
    use p2pfs::manifest::log::{LogEntry, LogOp, LogRecord};

    let server = Server::start();
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    let owner = OwnerKeys::derive(&[5; 32]);
    let record = |n: u8| LogRecord { time_ms: u64::from(n), op: LogOp::Remove { manifest: ManifestId([n; 32]) } };
    let e0 = LogEntry::seal(&owner, 0, [0; 32], &record(0), [1; 24]);
    let e1 = LogEntry::seal(&owner, 1, e0.hash(), &record(1), [2; 24]);
    let e2 = LogEntry::seal(&owner, 2, e1.hash(), &record(2), [3; 24]);
    let append = |e: &LogEntry| rt.block_on(peer.append_log(e.encode(), e.hash()));

    // Out of order, or naming the wrong predecessor: a conflict, nothing kept.
    let err = append(&e1).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::LOG_CONFLICT.0), "{err}");
    append(&e0).unwrap();
    let forked = LogEntry::seal(&owner, 1, [9; 32], &record(1), [4; 24]);
    assert_eq!(append(&forked).unwrap_err().remote_code(), Some(ErrorCode::LOG_CONFLICT.0));
    // Signed by someone else: refused before it is looked at.
    let mut forged = LogEntry::seal(&OwnerKeys::derive(&[6; 32]), 1, e0.hash(), &record(1), [5; 24]);
    forged.owner = owner.owner_id();
    assert_eq!(append(&forged).unwrap_err().remote_code(), Some(ErrorCode::BAD_SIGNATURE.0));
    // In order: kept; sending one again is harmless.
    append(&e1).unwrap();
    append(&e1).unwrap();
    append(&e2).unwrap();

    let log = rt.block_on(peer.get_log(&owner)).unwrap();
    assert_eq!(log, vec![e0.encode(), e1.encode(), e2.encode()]);
    let head = rt.block_on(peer.get_head(&owner)).unwrap();
    assert_eq!(head, Some(e2.encode()), "the newest entry is the head");
    let other = rt.block_on(peer.get_log(&OwnerKeys::derive(&[7; 32]))).unwrap();
    assert!(other.is_empty());

    // Reading another owner's log takes that owner's key: a proof signed by
    // someone else, or made for another connection, is refused.
    let read = |proof: Signature| {
        let request = Frame::GetLog(wire::GetLog { owner: owner.owner_id(), from: 0, proof });
        rt.block_on(ask(&peer, &request))
    };
    let mallory = OwnerKeys::derive(&[8; 32]);
    let exporter = peer.exporter(wire::OWNER_READ_LABEL).unwrap();
    let forged = mallory.sign(wire::OWNER_READ_DOMAIN, &wire::owner_read_message(&exporter, &owner.owner_id()));
    let elsewhere = owner.sign(wire::OWNER_READ_DOMAIN, &wire::owner_read_message(&[0; 32], &owner.owner_id()));
    for proof in [forged, elsewhere] {
        match read(proof) {
            Frame::Error(e) => assert_eq!(e.code, ErrorCode::BAD_SIGNATURE, "{}", &*e.message),
            other => panic!("a log read without the owner's proof was answered: {other:?}"),
        }
    }
    let (_net2, other_conn) = member_client(&server, &rt);
    let replayed = owner.sign(wire::OWNER_READ_DOMAIN, &wire::owner_read_message(&exporter, &owner.owner_id()));
    let request = Frame::GetLog(wire::GetLog { owner: owner.owner_id(), from: 0, proof: replayed });
    let reply = rt.block_on(ask(&other_conn, &request));
    assert!(
        matches!(reply, Frame::Error(ref e) if e.code == ErrorCode::BAD_SIGNATURE),
        "a proof replayed on another connection: {reply:?}"
    );
}

/// Sends one request frame on a new stream of `peer` and reads the reply frame.
async fn ask(peer: &p2pfs::net::Peer, request: &Frame) -> Frame {
    use p2pfs::net::stream::{Pace, SENDER_RATE, write_frame};
    let (mut send, recv) = peer.open().await.unwrap();
    write_frame(&mut send, request, bytes::Bytes::new(), Pace::at_rate(SENDER_RATE)).await.unwrap();
    let _ = send.finish();
    FrameReader::new(recv).next_frame().await.unwrap()
}

#[test]
fn an_erasure_pin_is_the_owners_alone_and_no_plain_pin_can_pass_for_one() {
    let server = Server::start();
    let rt = runtime();
    let (_net, mallory_conn) = member_client(&server, &rt);
    let (alice, mallory) = (OwnerKeys::derive(&[1; 32]), OwnerKeys::derive(&[2; 32]));
    // One stripe of a 1+1 code: the chunk's id, then its two shards.
    let shards: Vec<Vec<u8>> = vec![vec![5u8; 32], vec![6u8; 32]];
    for shard in &shards {
        rt.block_on(mallory_conn.put_chunk(ChunkId::of(shard), Bytes::copy_from_slice(shard))).unwrap();
    }
    let ids = [ChunkId([9; 32]), ChunkId::of(&shards[0]), ChunkId::of(&shards[1])];
    let (manifest, envelope) = manifest_of(&alice, "striped.bin", &[&shards[0]]);
    rt.block_on(mallory_conn.put_manifest(manifest, envelope.into())).unwrap();
    let stripes = wire::Stripes::new(1, 1).unwrap();
    let erasure_pin = |signer: &OwnerKeys| {
        let (domain, message) = wire::pin_signing(&alice.owner_id(), &manifest, &ids, Some(stripes));
        Pin {
            owner: alice.owner_id(),
            manifest,
            chunks: ids.len() as u32,
            signature: signer.sign(domain, &message),
            erasure: Some(stripes),
        }
    };

    // Alice's plain pin of the same ids, made into an erasure pin: its
    // signature does not cover K and M, so it is refused.
    let mut recast = pin_of(&alice, manifest, &ids, &alice);
    recast.erasure = Some(stripes);
    let err = rt.block_on(mallory_conn.pin(recast, &ids)).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");
    // Nor can a member sign one in Alice's name.
    let err = rt.block_on(mallory_conn.pin(erasure_pin(&mallory), &ids)).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");
    assert_eq!(rt.block_on(mallory_conn.status()).unwrap().pins, 0, "nothing was pinned");
    // Alice's own erasure pin is taken.
    rt.block_on(mallory_conn.pin(erasure_pin(&alice), &ids)).unwrap();
    assert_eq!(rt.block_on(mallory_conn.status()).unwrap().pins, 1);
}
