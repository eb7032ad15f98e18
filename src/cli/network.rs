//! The networked commands: serve, invite, join, peers, share, key export and
//! import, and the peer side of push, pull and rm.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::output;
use crate::crypto::FileKey;
use crate::home::{self, Home, Keys};
use crate::id::{self, ManifestId, NodeId};
use crate::net::{Client, Net, Tuning};
use crate::node::peers::{KnownPeer, PeerTable};
use crate::node::{Node, ServeInfo};
use crate::transfer::swarm::{MemberReport, Swarm};
use crate::wire::PeerInfo;

const JOIN_PREFIX: &str = "p2pfs-join1-";
const SHARE_PREFIX: &str = "p2pfs-share1-";

/// What `p2pfs invite` prints: the network key and where to find this node.
#[derive(Serialize, Deserialize)]
struct JoinToken {
    network_key: [u8; 32],
    peer: PeerInfo,
}

/// What `p2pfs share` prints: one version's manifest, its file key, and peers that hold it.
#[derive(Serialize, Deserialize)]
pub(super) struct ShareTicket {
    pub(super) manifest: ManifestId,
    pub(super) file_key: [u8; 32],
    pub(super) peers: Vec<PeerInfo>,
}

fn encode_token<T: Serialize>(prefix: &str, value: &T) -> String {
    format!("{prefix}{}", id::to_hex(&postcard::to_stdvec(value).expect("tokens always encode")))
}

fn decode_token<T: for<'de> Deserialize<'de>>(prefix: &str, what: &str, text: &str) -> Result<T> {
    let bad = || anyhow!("that is not a {what} (it should start with {prefix}); copy it again, whole");
    let hex = text.trim().strip_prefix(prefix).ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    postcard::from_bytes(&bytes.ok_or_else(bad)?).map_err(|_| bad())
}

/// Whether a pull argument is a share ticket.
pub(super) fn is_share_ticket(spec: &str) -> bool {
    spec.starts_with(SHARE_PREFIX)
}

/// A token or ticket given as an argument, or read from standard input when
/// the argument is `-`: then it never shows in the process list.
pub(super) fn secret_argument(arg: &str, what: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut text = String::new();
    io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} from standard input"))?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        bail!("standard input held no {what}; pipe it in, e.g. `echo TOKEN | p2pfs …  -`");
    }
    Ok(text)
}

pub(super) fn parse_share_ticket(spec: &str) -> Result<ShareTicket> {
    decode_token(SHARE_PREFIX, "share ticket", spec)
}

/// A tokio runtime for one command: two workers, like the machine's cores.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("p2pfs-net")
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A client endpoint (it does not accept connections) with this home's keys.
pub(super) fn client(keys: &Keys) -> Result<Net> {
    let any: SocketAddr = "[::]:0".parse().expect("a valid literal address");
    Net::bind(any, &keys.node, keys.network, Tuning::from_env(), false)
        .or_else(|_| {
            Net::bind(
                "0.0.0.0:0".parse().expect("a valid literal address"),
                &keys.node,
                keys.network,
                Tuning::from_env(),
                false,
            )
        })
        .context("opening a UDP socket for QUIC")
}

/// Connects to every known peer (and those they know) and remembers where
/// they answered, and the peers they told of (unverified). Fails if none answers.
pub(super) fn connect_swarm(client: &Client, home_path: &Path, extra: &[KnownPeer]) -> Result<Swarm> {
    let mut table = PeerTable::load(home_path).context("reading the peer table")?;
    let mut known = table.dial_list();
    for peer in extra {
        if !known.iter().any(|k| k.node == peer.node) {
            known.push(peer.clone());
        }
    }
    let swarm = Swarm::connect(client, &known);
    let me = client.node_id();
    for (node, addr) in swarm.answered().into_iter().filter(|(node, _)| *node != me) {
        table.learn_verified(node, addr);
    }
    table.learn_all_unverified(&swarm.learned, me);
    table.save().context("saving the peer table")?;
    if swarm.is_empty() {
        let reasons: Vec<String> = swarm.unreachable.iter().map(|(_, why)| why.clone()).collect();
        let refused = reasons.iter().any(|why| why.contains("not a member"));
        bail!(
            "no peer reachable ({} known): {}{}",
            known.len(),
            if reasons.is_empty() { "none known".to_owned() } else { reasons.join("; ") },
            if refused {
                ". This home's network key is not theirs: get a join token from a member (`p2pfs invite` \
                 there) and run `p2pfs init --join TOKEN` with a new P2PFS_HOME"
            } else {
                ""
            }
        );
    }
    for (node, why) in &swarm.unreachable {
        tracing::warn!("peer {} unreachable: {why}", node.short(16));
    }
    Ok(swarm)
}

/// Prints what went to (or came from) each peer.
pub(super) fn print_member_report(reports: &[MemberReport], unreachable: &[(NodeId, String)], pulling: bool) {
    for r in reports {
        let what = if pulling {
            format!("{} chunks fetched", r.chunks_fetched)
        } else {
            format!("{} chunks ({}) stored", r.chunks_sent, output::size(r.bytes_sent))
        };
        let failure = r.failure.as_deref().map_or(String::new(), |f| format!("; dropped: {f}"));
        eprintln!("  peer {} at {}: {what}{failure}", r.node.short(16), r.addr);
    }
    for (node, why) in unreachable {
        eprintln!("  peer {}: unreachable: {why}", node.short(16));
    }
}

pub(super) fn serve(home: Home, listen: SocketAddr, bootstrap: &[String], quiet: bool) -> Result<()> {
    let bootstrap = bootstrap.iter().map(|b| parse_node_addr(b)).collect::<Result<Vec<_>>>()?;
    // Store work waits its turn on a bounded pool rather than each request
    // getting a thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("p2pfs-node")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let node = Node::bind(home, listen, bootstrap).with_context(|| format!("starting a node on {listen}"))?;
        if !quiet {
            eprintln!("serving node {} at {} (stop with Ctrl-C)", node.node_id(), node.addr());
        }
        node.serve(shutdown_signal()).await;
        if !quiet {
            eprintln!("node stopped; everything acknowledged is on disk");
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `NODEID@HOST:PORT`.
fn parse_node_addr(text: &str) -> Result<(NodeId, SocketAddr)> {
    let (node, addr) = text.split_once('@').with_context(|| format!("'{text}' is not NODEID@ADDRESS:PORT"))?;
    let node: NodeId = node.parse().with_context(|| format!("'{node}' is not a NodeId (64 hex digits)"))?;
    let addr: SocketAddr = addr.parse().with_context(|| format!("'{addr}' is not an address:port"))?;
    Ok((node, addr))
}

pub(super) fn invite(home_path: &Path, addr: Option<SocketAddr>) -> Result<()> {
    let keys = Keys::load(home_path)?;
    let addrs = match addr {
        Some(addr) => vec![addr],
        None => ServeInfo::read(home_path)
            .filter(|info| info.node == keys.node_id())
            .map(|info| info.addrs)
            .context("this home is not serving: start `p2pfs serve --listen ADDR` first, or give `--addr HOST:PORT`")?,
    };
    let peer = KnownPeer { node: keys.node_id(), addrs }.to_wire();
    println!("{}", encode_token(JOIN_PREFIX, &JoinToken { network_key: keys.network, peer }));
    Ok(())
}

pub(super) fn join(home_path: &Path, token: &str, quiet: bool) -> Result<()> {
    let token = secret_argument(token, "join token")?;
    let token: JoinToken = decode_token(JOIN_PREFIX, "join token", &token)?;
    home::init(home_path)?;
    let mut table = PeerTable::load(home_path).context("reading the peer table")?;
    let keys = Keys::load(home_path)?;
    if keys.network != token.network_key {
        if !table.is_empty() {
            bail!(
                "{} already belongs to another network ({} peers known); join from a new home (set P2PFS_HOME)",
                home_path.display(),
                table.peers().len()
            );
        }
        home::replace_key(home_path, "network.key", &token.network_key)?;
    }
    // The user handed us this address: it counts as verified.
    for addr in KnownPeer::from_wire(&token.peer).addrs.iter().rev() {
        table.learn_verified(token.peer.node, *addr);
    }
    table.save().context("saving the peer table")?;
    if !quiet {
        eprintln!(
            "{} joined the network of node {}; `p2pfs peers` checks the connection",
            home_path.display(),
            token.peer.node.short(16)
        );
    }
    Ok(())
}

pub(super) fn peers(home_path: &Path, json: bool) -> Result<()> {
    let keys = Keys::load(home_path)?;
    let table = PeerTable::load(home_path).context("reading the peer table")?;
    let link = super::session::Link::new(&keys)?;
    let probes = table.dial_list().into_iter().map(|peer| {
        let net = link.client.net().clone();
        async move {
            let (addr, state) = match net.connect_any(peer.node, &peer.addrs).await {
                Ok((conn, addr)) => (Some(addr), conn.ping().await.map_err(|e| e.to_string())),
                Err(e) => (peer.addrs.first().copied(), Err(e.to_string())),
            };
            (peer, addr, state)
        }
    });
    let results = link.client.run_all(probes);
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|(peer, addr, state)| {
                serde_json::json!({
                    "node": peer.node,
                    "addr": addr,
                    "state": if state.is_ok() { "live" } else { "unreachable" },
                    "rtt_ms": state.as_ref().ok().map(|rtt| rtt.as_secs_f64() * 1000.0),
                    "error": state.as_ref().err(),
                })
            })
            .collect();
        return super::print_json(&rows);
    }
    if results.is_empty() {
        eprintln!(
            "no peers known: this home works alone. `p2pfs invite` on a node, then `p2pfs init --join TOKEN` here"
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(peer, addr, state)| {
            vec![
                peer.node.to_string(),
                addr.map_or("-".into(), |a| a.to_string()),
                if state.is_ok() { "live".into() } else { "unreachable".into() },
                state.as_ref().map_or_else(|e| e.clone(), |rtt| format!("{:.2} ms", rtt.as_secs_f64() * 1000.0)),
            ]
        })
        .collect();
    print!("{}", output::table(&["NODE", "ADDRESS", "STATE", "RTT"], &rows));
    Ok(())
}

pub(super) fn key_export(home_path: &Path, quiet: bool) -> Result<()> {
    let keys = Keys::load(home_path)?;
    println!("{}", id::to_hex(&keys.owner));
    if !quiet {
        eprintln!("this is the owner key: whoever has it can read every file of this owner; keep it secret");
    }
    Ok(())
}

pub(super) fn key_import(home: &Home, file: &Path, force: bool, quiet: bool) -> Result<()> {
    let mut text = String::new();
    if file == Path::new("-") {
        io::stdin().take(256).read_to_string(&mut text).context("reading the key from standard input")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(256).read_to_string(&mut text))
            .with_context(|| format!("reading {}", file.display()))?;
    }
    let key =
        id::key_from_hex(&text).context("that is not an owner key (64 hex digits, as `p2pfs key export` prints)")?;
    if key == home.keys().owner {
        if !quiet {
            eprintln!("this home already has that owner key; nothing changed");
        }
        return Ok(());
    }
    let owner = home.keys().owner_keys();
    let versions = crate::transfer::history(home.store(), &owner)?.versions().len();
    if versions > 0 && !force {
        bail!(
            "this home has {versions} versions of its own owner, which the new key could not read; \
             import into a new home (set P2PFS_HOME), or add --force"
        );
    }
    home::replace_key(home.path(), "owner.key", &key)?;
    if !quiet {
        let new_owner = crate::crypto::OwnerKeys::derive(&key).owner_id();
        eprintln!("imported owner {}; `p2pfs pull MANIFEST-ID` now reads this owner's files", new_owner.short(16));
    }
    Ok(())
}

/// A share ticket naming the home's own node (when it serves) and then known peers.
pub(super) fn share_ticket(
    home: &Path,
    own_node: &[KnownPeer],
    manifest: ManifestId,
    file_key: &FileKey,
) -> Result<String> {
    let table = PeerTable::load(home).context("reading the peer table")?;
    if table.is_empty() && own_node.is_empty() {
        bail!(
            "this home has no peers, so nobody else could fetch the file; join a network first (`p2pfs init --join`)"
        );
    }
    let peers: Vec<PeerInfo> = own_node.iter().chain(&table.verified_peers()).take(4).map(KnownPeer::to_wire).collect();
    Ok(encode_token(SHARE_PREFIX, &ShareTicket { manifest, file_key: file_key.0, peers }))
}
