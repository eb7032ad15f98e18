//! The transport's own ceiling: bulk bytes between two processes over p2pfs's
//! QUIC (same TLS, membership proof and tuning), with no chunking, hashing,
//! sealing or disk. `scripts/bench-net.py` runs it beside push and pull.
//!
//! ```text
//! quic_blast sink                       # prints "NODEID ADDR", then discards every stream
//! quic_blast send NODEID ADDR MIB       # MIB MiB in 1 MiB streams, 16 in flight; prints MB/s
//! ```
//!
//! Both sides use the network key 0x42…42; `P2PFS_TRANSPORT=default` picks
//! quinn's default transport, as it does for p2pfs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use p2pfs::id::NodeId;
use p2pfs::net::{Net, Peer, Tuning};

const NETWORK_KEY: [u8; 32] = [0x42; 32];
const STREAM_BYTES: usize = 1 << 20;
const IN_FLIGHT: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sink"] => sink().await,
        ["send", node, addr, mib] => send(node.parse()?, addr.parse()?, mib.parse()?).await,
        _ => Err("usage: quic_blast sink | quic_blast send NODEID ADDR MIB".into()),
    }
}

async fn sink() -> Result<(), Box<dyn std::error::Error>> {
    let net = Net::bind("127.0.0.1:0".parse()?, &rand::random(), NETWORK_KEY, Tuning::from_env(), true)?;
    println!("{} {}", net.node_id(), net.local_addr()?);
    while let Some(incoming) = net.accept().await {
        let net = net.clone();
        tokio::spawn(async move {
            let Ok(candidate) = net.handshake(incoming).await else { return };
            let Ok(peer) = candidate.welcome(p2pfs::net::MEMBER_RECEIVE_WINDOW).await else { return };
            while let Ok((mut send, mut recv)) = peer.accept_stream().await {
                tokio::spawn(async move {
                    while let Ok(Some(_)) = recv.read_chunk(usize::MAX, false).await {}
                    let _ = send.write_all(b"k").await;
                    let _ = send.finish();
                });
            }
        });
    }
    Ok(())
}

async fn send(node: NodeId, addr: SocketAddr, mib: usize) -> Result<(), Box<dyn std::error::Error>> {
    let net = Net::bind("127.0.0.1:0".parse()?, &rand::random(), NETWORK_KEY, Tuning::from_env(), false)?;
    let peer = Arc::new(net.connect(node, addr).await?);
    let payload = Bytes::from(vec![0x5a; STREAM_BYTES]);
    let streams = mib * (1 << 20) / STREAM_BYTES;
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..streams {
        if in_flight.len() == IN_FLIGHT {
            in_flight.next().await.expect("a stream in flight")?;
        }
        in_flight.push(one_stream(Arc::clone(&peer), payload.clone()));
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.0}", (streams * STREAM_BYTES) as f64 / seconds / 1e6);
    Ok(())
}

async fn one_stream(peer: Arc<Peer>, payload: Bytes) -> Result<(), Box<dyn std::error::Error>> {
    let (mut send, mut recv) = peer.open().await?;
    send.write_chunk(payload).await?;
    send.finish()?;
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack).await?;
    Ok(())
}
