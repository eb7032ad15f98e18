//! The networked commands: serve, invite, join, peers, share, key export and
//! import, and the peer side of push, pull and rm.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::session::Link;
use super::{Cx, output};
use crate::crypto::FileKey;
use crate::home::peers::{self, KnownPeer, PeerTable};
use crate::home::{self, Access, Home, Keys};
use crate::id::{self, ManifestId, NodeId};
use crate::net::{Client, Net, Tuning, canonical_addr};
use crate::node::{self, Node, ServeInfo};
use crate::token::{self, JoinToken, ShareTicket};
use crate::transfer::swarm::{MemberReport, SKIPPED, Swarm};
use crate::wire::PeerInfo;

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
/// they answered, which failed (backoff), and the peers they told of
/// (unverified). Peers in backoff are skipped unless no other answers.
/// Fails if none answers.
pub(super) fn connect_swarm(client: &Client, home_path: &Path, extra: &[KnownPeer]) -> Result<Swarm> {
    let mut table = PeerTable::load(home_path).context("reading the peer table")?;
    let (mut known, mut deferred) = table.dial_plan(peers::unix_now());
    // Peers asked for by name are dialled even in backoff.
    deferred.retain(|(peer, _)| !extra.iter().any(|e| e.node == peer.node));
    for peer in extra {
        if !known.iter().any(|k| k.node == peer.node) {
            known.push(peer.clone());
        }
    }
    let swarm = Swarm::connect_deferring(client, &known, &deferred);
    let known = known.len() + deferred.len();
    let me = client.node_id();
    // A running node owns the table of the home it serves (and keeps its
    // liveness itself): only a home no node serves learns here.
    if serving_node(home_path).is_none() {
        for (node, addr) in swarm.answered().into_iter().filter(|(node, _)| *node != me) {
            table.learn_verified(node, addr);
        }
        let now = peers::unix_now();
        for (node, _) in swarm.unreachable.iter().filter(|(node, _)| !swarm.skipped.contains(node)) {
            table.record_failure(node, now);
        }
        table.learn_all_unverified(&swarm.learned, me);
        // What was learned is a hint for next time; a home on a read-only
        // disk still pulls.
        if let Err(e) = table.save() {
            tracing::debug!("not saving the peer table: {e}");
        }
    }
    if swarm.is_empty() {
        let reasons: Vec<String> = swarm.unreachable.iter().map(|(_, why)| why.clone()).collect();
        let refused = reasons.iter().any(|why| why.contains("not a member"));
        bail!(
            "no peer reachable ({} known): {}{}",
            output::count(known as u64, "peer", "peers"),
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
        if why.starts_with(SKIPPED) {
            tracing::info!("peer {} {why}", node.short(16));
        } else {
            tracing::warn!("peer {} unreachable: {why}", node.short(16));
        }
    }
    Ok(swarm)
}

/// The node serving the home at `path`, if one runs: `serve.json` names a
/// process that is still there.
pub(super) fn serving_node(path: &Path) -> Option<ServeInfo> {
    let info = ServeInfo::read(path)?;
    let pid = libc::pid_t::try_from(info.pid).ok()?;
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(info)
}

/// Prints what went to (or came from) each peer.
pub(super) fn print_member_report(reports: &[MemberReport], unreachable: &[(NodeId, String)], pulling: bool) {
    for r in reports {
        let what = if pulling {
            format!("{} fetched", output::count(r.chunks_fetched, "chunk", "chunks"))
        } else {
            format!("{} ({}) stored", output::count(r.chunks_sent, "chunk", "chunks"), output::size(r.bytes_sent))
        };
        let failure = r.failure.as_deref().map_or(String::new(), |f| format!("; dropped: {f}"));
        eprintln!("  peer {} at {}: {what}{failure}", r.node.short(16), canonical_addr(r.addr));
    }
    for (node, why) in unreachable {
        if why.starts_with(SKIPPED) {
            eprintln!("  peer {}: {why}", node.short(16));
        } else {
            eprintln!("  peer {}: unreachable: {why}", node.short(16));
        }
    }
}

/// `p2pfs serve`'s options.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// The UDP address to listen on (HOST:PORT; a name like localhost is looked up).
    #[arg(long, default_value = "0.0.0.0:7070", value_name = "HOST:PORT")]
    listen: String,
    /// A peer to join at start (repeatable).
    #[arg(long, value_name = "NODEID@ADDR")]
    bootstrap: Vec<String>,
    /// Announce this node on the local network by multicast DNS and find
    /// the other members there (they are verified by connecting, as any peer).
    #[arg(long)]
    mdns: bool,
    #[command(flatten)]
    storage: super::storage::StorageArgs,
    #[command(flatten)]
    repair: super::check::RepairArgs,
}

impl ServeArgs {
    /// The node's configuration, once every option is checked.
    fn config(&self) -> Result<node::Config> {
        let listen = resolve_addr(&self.listen, "--listen")?;
        let bootstrap = self.bootstrap.iter().map(|b| parse_node_addr(b)).collect::<Result<Vec<_>>>()?;
        Ok(node::Config {
            listen,
            bootstrap,
            mdns: self.mdns,
            storage: self.storage.policy(),
            repair: self.repair.config(),
        })
    }
}

pub(super) fn serve(cx: &Cx, args: &ServeArgs) -> Result<()> {
    let config = args.config()?;
    let listen = config.listen;
    let home = Home::open_for(cx.existing_home()?, Access::Exclusive, cx.wait)?;
    // Store work waits its turn on a bounded pool rather than each request
    // getting a thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("p2pfs-node")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    check_bootstrap(&rt, home.keys(), &config.bootstrap)?;
    rt.block_on(async {
        let node = Node::bind(home, config).map_err(|e| {
            let err = anyhow::Error::new(e);
            let in_use = err
                .chain()
                .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::AddrInUse));
            if in_use {
                err.context(format!(
                    "port {} is taken, perhaps by another `p2pfs serve`: stop that, or listen elsewhere with \
                     --listen HOST:PORT",
                    listen.port()
                ))
            } else {
                err.context(format!("starting a node on {listen}"))
            }
        })?;
        cx.say(format_args!("serving node {} at {} (stop with Ctrl-C)", node.node_id(), canonical_addr(node.addr())));
        node.serve(shutdown_signal()).await;
        cx.say("node stopped; everything acknowledged is on disk");
        Ok(())
    })
}

/// Fails before serving if a bootstrap peer says this home is not of its
/// network: a storage node must `init --join` first, or everyone refuses it.
/// A peer that does not answer is only a warning: it may come up later.
fn check_bootstrap(rt: &tokio::runtime::Runtime, keys: &Keys, bootstrap: &[(NodeId, SocketAddr)]) -> Result<()> {
    if bootstrap.is_empty() {
        return Ok(());
    }
    let net = {
        let _guard = rt.enter();
        client(keys)?
    };
    let client = Client::new(rt.handle().clone(), net);
    let probes = bootstrap.iter().map(|&(node, addr)| {
        let net = client.net().clone();
        async move { (node, addr, net.connect(node, addr).await.map(|_| ())) }
    });
    let results = client.run_all(probes);
    client.close();
    for (node, addr, result) in results {
        match result {
            Ok(()) => {}
            Err(e) if e.is_other_network() => bail!(
                "node {} at {addr} refused this home: it is not of that node's network. A storage node joins \
                 first: `p2pfs invite` on that node, then `p2pfs init --join TOKEN` here (a new P2PFS_HOME), \
                 then `p2pfs serve`",
                node.short(16)
            ),
            Err(e) => eprintln!("p2pfs: warning: bootstrap peer {} at {addr} does not answer yet: {e}", node.short(16)),
        }
    }
    Ok(())
}

/// `HOST:PORT`, looking the host up (an IPv4 address first, as `localhost`
/// resolves to both).
fn resolve_addr(text: &str, what: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .with_context(|| format!("{what} {text}: not an address; give HOST:PORT, e.g. 0.0.0.0:7070 or localhost:7070"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{what} {text}: the name has no address"))
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

pub(super) fn invite(cx: &Cx, addr: Option<&str>) -> Result<()> {
    let home_path = cx.existing_home()?;
    let keys = Keys::load(home_path)?;
    let addrs = match addr {
        Some(addr) => vec![resolve_addr(addr, "--addr")?],
        None => ServeInfo::read(home_path)
            .filter(|info| info.node == keys.node_id())
            .map(|info| info.addrs)
            .context("this home is not serving: start `p2pfs serve --listen ADDR` first, or give `--addr HOST:PORT`")?,
    };
    let peer = KnownPeer { node: keys.node_id(), addrs }.to_wire();
    println!("{}", token::encode(&JoinToken { network_key: keys.network, peer }));
    Ok(())
}

pub(super) fn join(cx: &Cx, token: &str) -> Result<()> {
    let token = secret_argument(token, "join token")?;
    let token: JoinToken = token::decode(&token)?;
    let home_path = cx.created_home()?;
    let mut table = PeerTable::load(home_path).context("reading the peer table")?;
    let keys = Keys::load(home_path)?;
    if keys.network != token.network_key {
        if !table.is_empty() {
            bail!(
                "{} already belongs to another network ({} known); join from a new home (set P2PFS_HOME)",
                home_path.display(),
                output::count(table.peers().len() as u64, "peer", "peers")
            );
        }
        home::replace_key(home_path, "network.key", &token.network_key)?;
    }
    // The user handed us this address: it counts as verified.
    for addr in KnownPeer::from_wire(&token.peer).addrs.iter().rev() {
        table.learn_verified(token.peer.node, *addr);
    }
    table.save().context("saving the peer table")?;
    cx.say(format_args!(
        "{} joined the network of node {}; `p2pfs peers` checks the connection",
        home_path.display(),
        token.peer.node.short(16)
    ));
    Ok(())
}

/// `p2pfs peers`'s options.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct PeersArgs {
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<PeersAction>,
}

/// What `p2pfs peers` does besides listing.
#[derive(Debug, clap::Subcommand)]
enum PeersAction {
    /// Remove a peer from this home's table (a live member is learned again
    /// from the others; this is for one gone for good).
    Forget {
        /// The peer's NodeId, or a unique prefix of at least 8 hex digits.
        #[arg(value_parser = parse_node_prefix)]
        node: String,
    },
}

/// The shortest NodeId prefix `peers forget` accepts.
const MIN_FORGET_PREFIX: usize = 8;

/// A NodeId or a prefix of one: 8 to 64 hex digits.
fn parse_node_prefix(text: &str) -> Result<String, String> {
    let hex = (MIN_FORGET_PREFIX..=64).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit());
    if hex {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "not a NodeId: give the NodeId or a prefix of at least {MIN_FORGET_PREFIX} hex digits, as `p2pfs peers` \
             lists them"
        ))
    }
}

pub(super) fn peers(cx: &Cx, args: &PeersArgs) -> Result<()> {
    match &args.action {
        Some(PeersAction::Forget { node }) => forget(cx, node),
        None => list_peers(cx, args.json),
    }
}

/// `p2pfs peers forget NODEID`: a home no node serves edits its own table;
/// while `p2pfs serve` runs, the table is the node's (it rewrites the file
/// from memory), so the command refuses and says how.
fn forget(cx: &Cx, prefix: &str) -> Result<()> {
    let home_path = cx.existing_home()?;
    if let Some(info) = serving_node(home_path) {
        bail!(
            "`p2pfs serve` (pid {}) owns this home's peer table and writes it from memory: stop the node, run \
             `p2pfs peers forget {prefix}`, then start it again (a peer unseen for {} days is dropped by the node \
             anyway)",
            info.pid,
            peers::PEER_MAX_AGE.as_secs() / 86_400
        );
    }
    let mut table = PeerTable::load(home_path).context("reading the peer table")?;
    let node = match table.matching(prefix).as_slice() {
        [] => bail!("no known peer's NodeId starts with {prefix}; `p2pfs peers` lists them"),
        [node] => *node,
        several => bail!(
            "{} known peers' NodeIds start with {prefix}: give more digits ({})",
            several.len(),
            several.iter().map(|n| n.short(16)).collect::<Vec<_>>().join(", ")
        ),
    };
    table.forget(&node);
    table.save().context("saving the peer table")?;
    cx.say(format_args!("forgot peer {node}"));
    Ok(())
}

fn list_peers(cx: &Cx, json: bool) -> Result<()> {
    let home_path = cx.existing_home()?;
    let keys = Keys::load(home_path)?;
    let mut table = PeerTable::load(home_path).context("reading the peer table")?;
    let link = Link::new(&keys)?;
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
    // What the probes found, for the commands that follow (best-effort, and
    // only where no node owns the table).
    if serving_node(home_path).is_none() {
        let now = peers::unix_now();
        for (peer, addr, state) in &results {
            match (addr, state) {
                (Some(addr), Ok(_)) => {
                    table.learn_verified(peer.node, *addr);
                }
                _ => table.record_failure(&peer.node, now),
            }
        }
        if let Err(e) = table.save() {
            tracing::debug!("not saving the peer table: {e}");
        }
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|(peer, addr, state)| {
            let seen = table.last_seen(&peer.node);
            (peer, addr.map(canonical_addr), state, seen)
        })
        .collect();
    let all_unreachable = !results.is_empty() && results.iter().all(|(_, _, state, _)| state.is_err());
    let unreachable = || {
        anyhow::anyhow!(
            "no known peer answered ({} known): check that they run (`p2pfs serve`) and that this machine can \
             reach them",
            results.len()
        )
    };
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|(peer, addr, state, seen)| {
                serde_json::json!({
                    "node": peer.node,
                    "addr": addr,
                    "state": if state.is_ok() { "live" } else { "unreachable" },
                    "rtt_ms": state.as_ref().ok().map(|rtt| rtt.as_secs_f64() * 1000.0),
                    "error": state.as_ref().err(),
                    "last_seen": seen,
                })
            })
            .collect();
        super::print_json(&rows)?;
        return if all_unreachable { Err(unreachable()) } else { Ok(()) };
    }
    if results.is_empty() {
        cx.say("no peers known: this home works alone. `p2pfs invite` on a node, then `p2pfs init --join TOKEN` here");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(peer, addr, state, _)| {
            vec![
                peer.node.to_string(),
                addr.map_or("-".into(), |a| a.to_string()),
                if state.is_ok() { "live".into() } else { "unreachable".into() },
                state.as_ref().map_or_else(|e| e.clone(), |rtt| format!("{:.2} ms", rtt.as_secs_f64() * 1000.0)),
            ]
        })
        .collect();
    print!("{}", output::table(&["NODE", "ADDRESS", "STATE", "RTT"], &rows));
    if all_unreachable {
        return Err(unreachable());
    }
    Ok(())
}

pub(super) fn key_export(cx: &Cx) -> Result<()> {
    let keys = Keys::load(cx.existing_home()?)?;
    println!("{}", id::to_hex(&keys.owner));
    cx.say("this is the owner key: whoever has it can read every file of this owner; keep it secret");
    Ok(())
}

pub(super) fn key_import(cx: &Cx, file: &Path, force: bool) -> Result<()> {
    let session = cx.session(Access::Exclusive)?;
    let home = session.require_owned("key import")?;
    let quiet = cx.quiet;
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
    let index = crate::transfer::index::HistoryIndex::open(home.path(), crate::store::DEFAULT_PATIENCE);
    let versions = index.sync(&owner, home.store(), false)?.tip().versions;
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
    Ok(token::encode(&ShareTicket { manifest, file_key: file_key.0, peers }))
}
