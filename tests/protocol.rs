//! A member speaking the protocol directly to a real `p2pfs serve`: bad
//! frames, forged pins and unpins. The client is the library's own `Net`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use p2pfs::crypto::OwnerKeys;
use p2pfs::home::Keys;
use p2pfs::id::{ChunkId, ManifestId, NodeId};
use p2pfs::net::Net;
use p2pfs::net::stream::FrameReader;
use p2pfs::wire::{self, ErrorCode, Frame, Pin, Signature, Unpin};

use common::{Server, wait_until};

/// A member of `server`'s network, connected to it.
fn member_client(server: &Server, rt: &tokio::runtime::Runtime) -> (Net, p2pfs::net::Peer) {
    let keys = Keys::load(&server.node.home).unwrap();
    let _guard = rt.enter();
    let net =
        Net::bind("127.0.0.1:0".parse().unwrap(), &rand::random(), keys.network, Default::default(), false).unwrap();
    let node: NodeId = server.id.parse().unwrap();
    let peer = rt.block_on(net.connect(node, server.addr.parse().unwrap())).unwrap();
    (net, peer)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

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

#[test]
fn pins_and_unpins_signed_by_another_owner_are_rejected() {
    let server = Server::start();
    let rt = runtime();
    let (_net, peer) = member_client(&server, &rt);
    let (alice, mallory) = (OwnerKeys::derive(&[1; 32]), OwnerKeys::derive(&[2; 32]));
    let chunk = b"ciphertext of some chunk".to_vec();
    let chunk_id = ChunkId::of(&chunk);
    let manifest = ManifestId([9; 32]);
    rt.block_on(peer.put_chunk(chunk_id, Bytes::copy_from_slice(&chunk))).unwrap();

    // Mallory signs a pin in Alice's name: refused.
    let message = wire::pin_message(&alice.owner_id(), &manifest, &[chunk_id]);
    let forged = Pin {
        owner: alice.owner_id(),
        manifest,
        chunks: 1,
        signature: Signature(mallory.sign(wire::PIN_DOMAIN, &message)),
    };
    let err = rt.block_on(peer.pin(forged, &[chunk_id])).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");

    // Alice's own pin is accepted.
    let pin = Pin {
        owner: alice.owner_id(),
        manifest,
        chunks: 1,
        signature: Signature(alice.sign(wire::PIN_DOMAIN, &message)),
    };
    rt.block_on(peer.pin(pin, &[chunk_id])).unwrap();

    // Mallory cannot unpin it: neither in Alice's name nor in her own.
    let unpin_message = wire::unpin_message(&alice.owner_id(), &manifest);
    let forged = Unpin {
        owner: alice.owner_id(),
        manifest,
        signature: Signature(mallory.sign(wire::UNPIN_DOMAIN, &unpin_message)),
    };
    let err = rt.block_on(peer.unpin(forged)).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");
    let own = wire::unpin_message(&mallory.owner_id(), &manifest);
    let hers =
        Unpin { owner: mallory.owner_id(), manifest, signature: Signature(mallory.sign(wire::UNPIN_DOMAIN, &own)) };
    let err = rt.block_on(peer.unpin(hers)).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BAD_SIGNATURE.0), "{err}");

    // Alice can, and the chunk stays on disk until the node collects garbage.
    let unpin = Unpin {
        owner: alice.owner_id(),
        manifest,
        signature: Signature(alice.sign(wire::UNPIN_DOMAIN, &unpin_message)),
    };
    rt.block_on(peer.unpin(unpin)).unwrap();
    wait_until(Duration::from_secs(5), "the chunk is still served", || {
        let mut buf = Vec::new();
        rt.block_on(peer.get_chunk(chunk_id, &mut buf)).unwrap_or(false)
    });
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
        rt.block_on(async {
            let (mut send, recv) = peer.open().await.unwrap();
            p2pfs::net::stream::write_frame(&mut send, &request, bytes::Bytes::new()).await.unwrap();
            let _ = send.finish();
            FrameReader::new(recv).next_frame().await.unwrap()
        })
    };
    let mallory = OwnerKeys::derive(&[8; 32]);
    let exporter = peer.exporter(wire::OWNER_READ_LABEL).unwrap();
    let forged = mallory.sign(wire::OWNER_READ_DOMAIN, &wire::owner_read_message(&exporter, &owner.owner_id()));
    let elsewhere = owner.sign(wire::OWNER_READ_DOMAIN, &wire::owner_read_message(&[0; 32], &owner.owner_id()));
    for proof in [forged, elsewhere] {
        match read(Signature(proof)) {
            Frame::Error(e) => assert_eq!(e.code, ErrorCode::BAD_SIGNATURE, "{}", &*e.message),
            other => panic!("a log read without the owner's proof was answered: {other:?}"),
        }
    }
    let (_net2, other_conn) = member_client(&server, &rt);
    let replayed = owner.sign(wire::OWNER_READ_DOMAIN, &wire::owner_read_message(&exporter, &owner.owner_id()));
    let request = Frame::GetLog(wire::GetLog { owner: owner.owner_id(), from: 0, proof: Signature(replayed) });
    let reply = rt.block_on(async {
        let (mut send, recv) = other_conn.open().await.unwrap();
        p2pfs::net::stream::write_frame(&mut send, &request, bytes::Bytes::new()).await.unwrap();
        let _ = send.finish();
        FrameReader::new(recv).next_frame().await.unwrap()
    });
    assert!(
        matches!(reply, Frame::Error(ref e) if e.code == ErrorCode::BAD_SIGNATURE),
        "a proof replayed on another connection: {reply:?}"
    );
}
