//! The `p2pfs` command line: arguments → home → library calls → output.
//!
//! stdout carries only machine results (a manifest id, file bytes with
//! `-o -`, `--json`); summaries, progress and errors go to stderr. Exit codes:
//! 0 ok, 1 the operation failed, 2 usage error.

mod check;
mod interrupt;
mod journal;
mod network;
mod output;
mod session;
mod storage;
mod units;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};

use crate::crypto::CryptoError;
use crate::home::peers::{KnownPeer, PeerTable};
use crate::home::{self, Access, InitOutcome, pending};
use crate::id::{ManifestId, NodeId};
use crate::manifest::log::Version;
use crate::manifest::{Manifest, ManifestError};
use crate::store::StoreError;
use crate::transfer::catalog::Catalog;
use crate::transfer::fetch::Fetch;
use crate::transfer::index::{History, HistoryIndex};
use crate::transfer::network_log::NetworkLog;
use crate::transfer::pull::{Target, Wanted};
use crate::transfer::push::PushOptions;
use crate::transfer::replicate::Replicate;
use crate::transfer::swarm::Swarm;
use crate::transfer::{self, Parallelism, TransferError, pull, push, record};
use session::{Link, Session};

/// A peer-to-peer, end-to-end encrypted, deduplicating, versioned file store.
///
/// With no network configured, files go to this machine's own encrypted
/// store in $P2PFS_HOME (default: the platform data directory).
#[derive(Debug, Parser)]
#[command(name = "p2pfs", version, about, max_term_width = 100)]
pub struct Args {
    /// Print nothing on stderr but errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also log what happens underneath (connections, retries) on stderr;
    /// `RUST_LOG` picks finer levels.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// When the home is in use by another command, wait for it instead of failing.
    #[arg(long, global = true)]
    wait: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the home directory: keys, configuration and store.
    Init {
        /// Join a network: the token `p2pfs invite` printed on one of its nodes
        /// (`-` reads it from standard input, which keeps it out of the process list).
        #[arg(long, value_name = "TOKEN")]
        join: Option<String>,
    },
    /// Store a file as a new version; prints its manifest id.
    Push {
        /// The file to store, or `-` for standard input (needs --name).
        file: PathBuf,
        /// The name to store it under (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Print a JSON report on stdout instead of the bare manifest id.
        #[arg(long)]
        json: bool,
        /// Replicas per chunk when pushing to peers (default 3; capped by the peers reachable).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        replicas: Option<u16>,
        /// Erasure-code each chunk instead: K data + M parity shards on K+M distinct peers, any K of
        /// which rebuild it (e.g. 4+2 survives 2 lost nodes storing 1.5x). Default: [push] erasure in
        /// config.toml.
        #[arg(long, value_name = "K+M", conflicts_with = "replicas")]
        erasure: Option<crate::erasure::Shape>,
        /// Record a new version even if the file is the name's latest version again.
        #[arg(long)]
        allow_same: bool,
    },
    /// Get a version back, verified.
    Pull {
        /// NAME (latest version), NAME@VERSION, a manifest id (a unique prefix of 8+ hex digits
        /// will do), a share ticket, or `-` to read a share ticket from standard input.
        version: String,
        /// Where to write it: a path, a directory, or `-` for standard output (default: its name, here).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite the output file if it exists.
        #[arg(short, long)]
        force: bool,
    },
    /// Show the versions of one name, or of every name, newest first.
    Log {
        /// Show only this name's versions.
        name: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the names that have live versions.
    Ls {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove versions: NAME (every version), NAME@VERSION, or a manifest id.
    Rm {
        /// What to remove.
        version: String,
    },
    /// Delete chunks and manifests that no live version needs.
    Gc {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show this home: identity, store usage, versions.
    Status {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Tell whether every live version has its replicas on the peers (exit 1 if not).
    Check(check::CheckArgs),
    /// Run a storage node: answer peers' requests from this home's store.
    Serve(network::ServeArgs),
    /// Print a token that lets another home join this node's network.
    Invite {
        /// The address to give out (default: where this home's node listens).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
    },
    /// List known peers: NodeId, address, state and round-trip time; or forget one.
    Peers(network::PeersArgs),
    /// Print a ticket with which someone else can pull one version (and nothing else).
    Share {
        /// NAME (latest version) or NAME@VERSION.
        version: String,
    },
    /// Move the owner key between machines.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Print the owner key (a secret: it reads every file of this owner).
    Export,
    /// Make this home use an exported owner key.
    Import {
        /// A file with the key, or `-` for standard input.
        file: PathBuf,
        /// Replace the key even though this home has versions of its current owner.
        #[arg(long)]
        force: bool,
    },
}

/// Runs the command line and returns the process's exit code.
pub fn run(args: Args) -> ExitCode {
    init_logging(&args);
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2pfs: error: {err:#}");
            if let Some(hint) = hint(&err) {
                eprintln!("p2pfs: hint: {hint}");
            }
            ExitCode::from(1)
        }
    }
}

/// Log lines go to stderr only when asked for, with `-v` or `RUST_LOG`, and
/// never with `-q`: what a user needs to know is in the command's own
/// messages. Colour only when stderr is a terminal.
fn init_logging(args: &Args) {
    use std::io::IsTerminal;
    let from_env = std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty());
    if args.quiet || !(args.verbose || from_env) {
        return;
    }
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) if from_env => filter,
        _ => tracing_subscriber::EnvFilter::new("p2pfs=debug,warn"),
    };
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

fn execute(args: &Args) -> Result<()> {
    let home =
        home::default_home_path().context("cannot tell where the p2pfs home is: set P2PFS_HOME to a directory")?;
    let cx = Cx { home, quiet: args.quiet, wait: args.wait };
    match &args.command {
        Command::Init { join: Some(token) } => network::join(&cx, token),
        Command::Init { join: None } => init(&cx),
        Command::Push { file, name, json, replicas, erasure, allow_same } => push_file(
            &cx,
            file,
            name.as_deref(),
            *json,
            Placing { replicas: *replicas, erasure: *erasure },
            *allow_same,
        ),
        Command::Pull { version, output, force } => pull_file(&cx, version, output.as_deref(), *force),
        Command::Log { name, json } => show_log(&cx, name.as_deref(), *json),
        Command::Ls { json } => list(&cx, *json),
        Command::Rm { version } => remove(&cx, version),
        Command::Gc { json } => collect_garbage(&cx, *json),
        Command::Status { json } => status(&cx, *json),
        Command::Check(args) => check::check(&cx, args),
        Command::Serve(args) => network::serve(&cx, args),
        Command::Invite { addr } => network::invite(&cx, addr.as_deref()),
        Command::Peers(args) => network::peers(&cx, args),
        Command::Share { version } => share(&cx, version),
        Command::Key(KeyCommand::Export) => network::key_export(&cx),
        Command::Key(KeyCommand::Import { file, force }) => network::key_import(&cx, file, *force),
    }
}

/// What every command knows: where the home is and how to behave.
pub(crate) struct Cx {
    /// The home directory.
    home: PathBuf,
    /// `-q`: nothing on stderr but errors.
    quiet: bool,
    /// `--wait`: wait for a busy home instead of failing.
    wait: bool,
}

impl Cx {
    /// Prints a message on stderr, unless quiet.
    fn say(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// Prints a warning on stderr, unless quiet.
    fn warn(&self, message: impl std::fmt::Display) {
        self.say(format_args!("p2pfs: warning: {message}"));
    }

    /// The home, which must exist: only `init` and `push` make one, so a
    /// mistyped P2PFS_HOME is an error, not an empty new home.
    fn existing_home(&self) -> Result<&Path> {
        if !home::is_initialised(&self.home) {
            bail!(
                "there is no p2pfs home at {}: `p2pfs init` makes one there, or set P2PFS_HOME to the home you meant",
                self.home.display()
            );
        }
        Ok(&self.home)
    }

    /// The home, made first if there is none.
    fn created_home(&self) -> Result<&Path> {
        if home::init(&self.home)? == InitOutcome::Created {
            self.say(format_args!("initialised p2pfs home at {}", self.home.display()));
        }
        Ok(&self.home)
    }

    /// The existing home, opened for `access` (or reached through its node).
    fn session(&self, access: Access) -> Result<Session> {
        Session::open(self.existing_home()?, access, self.wait)
    }
}

fn init(cx: &Cx) -> Result<()> {
    match home::init(&cx.home)? {
        InitOutcome::Created => cx.say(format_args!("initialised p2pfs home at {}", cx.home.display())),
        InitOutcome::AlreadyInitialised => {
            cx.say(format_args!("{} is already a p2pfs home; nothing changed", cx.home.display()))
        }
    }
    Ok(())
}

/// How `push` was asked to place chunks on peers.
#[derive(Debug, Clone, Copy)]
struct Placing {
    replicas: Option<u16>,
    erasure: Option<crate::erasure::Shape>,
}

/// How a push to peers placed its chunks, for the summary.
enum Placed {
    Replicas(usize),
    Erasure(crate::erasure::Shape),
}

fn push_file(cx: &Cx, file: &Path, name: Option<&str>, json: bool, placing: Placing, allow_same: bool) -> Result<()> {
    let Placing { replicas, erasure } = placing;
    let (input, name, total, origin): (Box<dyn Read + Send>, String, Option<u64>, Option<PathBuf>) =
        if file == Path::new("-") {
            let name = name.context("pushing standard input needs a name: add --name NAME")?;
            (Box::new(io::stdin()), name.to_owned(), None, None)
        } else {
            let input = File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
            let metadata = input.metadata().with_context(|| format!("cannot read {}", file.display()))?;
            if metadata.is_dir() {
                bail!(
                    "{} is a directory; p2pfs stores one file per version (to store a directory: \
                     `tar c DIR | p2pfs push - --name DIR.tar`)",
                    file.display()
                );
            }
            let name = match name {
                Some(name) => name.to_owned(),
                None => file.file_name().map(|n| n.to_string_lossy().into_owned()).with_context(|| {
                    format!("{} has no file name to store it under: add --name NAME", file.display())
                })?,
            };
            (Box::new(input), name, Some(metadata.len()), std::fs::canonicalize(file).ok())
        };
    if name.is_empty() || name.len() > crate::manifest::MAX_NAME_LEN {
        bail!("'{name}' cannot be a name: give 1 to {} bytes", crate::manifest::MAX_NAME_LEN);
    }
    let home = cx.created_home()?;
    let session = Session::open(home, Access::Add, cx.wait)?;
    let owner = session.keys().owner_keys();
    let networked = session.networked(home)?;
    if let (Some(wanted), false) = (replicas, networked) {
        cx.warn(format_args!(
            "--replicas {wanted} has no effect: this home has no peers, so each chunk is stored once, here. \
             `p2pfs init --join TOKEN` joins a network"
        ));
    }
    if let (Some(code), false) = (erasure, networked) {
        cx.warn(format_args!(
            "--erasure {code} has no effect: this home has no peers, so each chunk is stored once, here. \
             `p2pfs init --join TOKEN` joins a network"
        ));
    }
    // --replicas asks for replicas even when config.toml sets an erasure code.
    let erasure = erasure.or_else(|| replicas.is_none().then(|| session.config().push.erasure()).flatten());
    let origins = home::origins::Origins::load(home);
    if let (Some(origin), Some(before)) = (&origin, origins.get(&name))
        && origin != before
    {
        cx.warn(format_args!(
            "'{name}' was last pushed from {}, and this is {}: it becomes a new version of the same name; \
             add --name to keep them apart",
            before.display(),
            origin.display()
        ));
    }

    let bar = output::progress_bar(total, cx.quiet, "push");
    let progress = |n| bar.inc(n);
    interrupt::on_interrupt(
        "push interrupted: nothing was recorded. Run the same `p2pfs push` again: chunks already stored are \
         not sent again"
            .to_owned(),
    );
    let config = session.config();
    let (chunker, sealing) = (config.chunker, config.compression.sealing());
    let options = |parallelism| PushOptions { chunker, parallelism, sealing, allow_same };
    let mut peer_summary = None;
    let mut resumed_from = 0;
    let report = if networked {
        let link = session.link()?;
        let swarm = connect(&session, home, &link, &[])?;
        // The log its holders keep, brought in step with this home's copy.
        let catalog = &NetworkLog::new(session.catalog(), session.index(), &swarm, true);
        let replicas = usize::from(replicas.unwrap_or(DEFAULT_REPLICAS));
        let journal = journal::Journal::open(home, &owner.owner_id(), &name);
        let previous = previous_manifest(catalog, session.index(), &owner, &name);
        let replicate;
        let shards;
        let (destination, placed): (&dyn push::Destination, Placed) = match erasure {
            Some(shape) => {
                let stripes = previous.map(|m| previous_stripes(&m, shape)).unwrap_or_default();
                shards = transfer::shards::Shards::new(&swarm, &owner, shape, stripes)
                    .with_context(|| format!("pushing {} to peers", file.display()))?;
                (&shards, Placed::Erasure(shape))
            }
            None => {
                let mut previous: Vec<crate::id::ChunkId> =
                    previous.map(|m| m.chunks.iter().map(|c| c.id).collect()).unwrap_or_default();
                previous.extend(&journal.earlier);
                replicate = Replicate::new(&swarm, &owner, replicas, &previous);
                // A home whose only peer is its own node has nowhere else to put replicas.
                let alone = session.served().is_some() && swarm.len() == 1;
                if replicate.replicas < replicas && !alone {
                    cx.warn(format_args!(
                        "only {} of the {replicas} peers wanted are reachable: each chunk gets {}",
                        swarm.len(),
                        output::count(replicate.replicas as u64, "copy", "copies")
                    ));
                }
                (&replicate, Placed::Replicas(replicate.replicas))
            }
        };
        let journaled = journal::Journaled { inner: destination, journal: &journal };
        let report = push::push(
            catalog,
            session.index(),
            &journaled,
            &owner,
            &name,
            input,
            &options(Parallelism::for_network()),
            &progress,
        )
        .with_context(|| format!("pushing {} to peers", file.display()))?;
        resumed_from = journal.earlier.len();
        journal.finish();
        for note in catalog.notes() {
            tracing::warn!("{note}");
        }
        peer_summary = Some((placed, swarm.report(), swarm.unreachable.clone()));
        report
    } else {
        let store = session.store().context("a home without peers is opened by this process")?;
        let options = options(Parallelism::for_this_machine());
        push::push(store, session.index(), store, &owner, &name, input, &options, &progress)
            .with_context(|| format!("pushing {}", file.display()))?
    };
    interrupt::clear();
    bar.finish_and_clear();
    if let Some(origin) = &origin {
        // Only a hint for the next push: losing it loses nothing.
        let _ = origins.with(&name, origin).save(home);
    }
    let v = &report.version;
    if json {
        print_json(&serde_json::json!({
            "manifest": v.manifest,
            "name": v.name,
            "version": v.number,
            "unchanged": report.unchanged,
            "size": v.size,
            "chunks": v.chunks,
            // What this push added: nothing, when unchanged.
            "new_bytes": if report.unchanged { 0 } else { v.new_bytes },
            "chunks_stored": report.chunks_stored,
            // The new chunks' bytes as stored: compressed and padded.
            "stored_bytes": report.sealed_bytes,
            "chunks_sealed": report.chunks_sealed,
            "seconds": report.elapsed.as_secs_f64(),
            // Chunk (or shard) bytes sent to peers, all of them together.
            "bytes_sent": peer_summary.as_ref().map(|(_, members, _)| members.iter().map(|m| m.bytes_sent).sum::<u64>()),
            "layout": peer_summary.as_ref().map(|(placed, _, _)| match placed {
                Placed::Replicas(r) => format!("{r} replicas"),
                Placed::Erasure(shape) => format!("{shape} erasure"),
            }),
        }))?;
    } else {
        println!("{}", report.manifest());
    }
    if cx.quiet {
        return Ok(());
    }
    if report.unchanged {
        eprintln!(
            "{} is unchanged: {} has the same bytes, so nothing was recorded (--allow-same records a new version \
             anyway)",
            v.label(),
            if origin.is_some() { file.display().to_string() } else { "standard input".into() }
        );
        if report.chunks_stored > 0 {
            eprintln!(
                "{} of it that the store had lost or found damaged were stored again",
                output::count(report.chunks_stored, "chunk", "chunks")
            );
        }
    } else {
        let reused_chunks = v.chunks - report.chunks_stored;
        eprintln!(
            "pushed {}: {} in {}; {} new ({}, {} stored), {} reused ({}); {:.2} s, {}",
            v.label(),
            output::size(v.size),
            output::count(v.chunks, "chunk", "chunks"),
            output::size(v.new_bytes),
            output::count(report.chunks_stored, "chunk", "chunks"),
            output::size(report.sealed_bytes),
            output::size(v.size - v.new_bytes),
            output::count(reused_chunks, "chunk", "chunks"),
            report.elapsed.as_secs_f64(),
            output::rate(v.size, report.elapsed),
        );
        if resumed_from > 0 {
            eprintln!(
                "resumed an interrupted push: peers were asked about the {} it had stored, and had {}",
                output::count(resumed_from as u64, "chunk", "chunks"),
                output::count(reused_chunks, "chunk", "chunks")
            );
        }
    }
    if let Some((placed, members, unreachable)) = &peer_summary {
        match placed {
            Placed::Replicas(1) => eprintln!("every chunk has 1 durable copy:"),
            Placed::Replicas(r) => eprintln!("every chunk has {r} durable replicas ({r}.00x stored):"),
            Placed::Erasure(shape) => eprintln!(
                "every chunk is {shape} erasure coded, {:.2}x stored: {} durable shards on {} nodes, any {} \
                 rebuild it:",
                shape.overhead(),
                shape.total(),
                shape.total(),
                shape.data()
            ),
        }
        network::print_member_report(members, unreachable, false);
    }
    Ok(())
}

/// Replicas per chunk when `--replicas` is not given.
const DEFAULT_REPLICAS: u16 = crate::node::DEFAULT_REPLICAS;

/// The manifest of the latest live version of `name`, whose chunks a new
/// version probably shares: peers are asked about them in one batched `Has`.
fn previous_manifest(
    catalog: &dyn Catalog,
    index: &HistoryIndex,
    owner: &crate::crypto::OwnerKeys,
    name: &str,
) -> Option<crate::manifest::Manifest> {
    let latest = index.sync(owner, catalog, true).ok()?.latest(name).ok()??;
    pull::open_manifest(catalog, owner, latest.manifest).ok()
}

/// The stripes of an erasure-coded manifest's chunks (none if it is not).
/// The stripes of the name's previous version, if it was cut by the same
/// code: a stripe of another code (3+3 for 4+2, the same width) has shards
/// of another length, and a manifest listing it would not pull.
fn previous_stripes(
    manifest: &crate::manifest::Manifest,
    shape: crate::erasure::Shape,
) -> Vec<(crate::id::ChunkId, crate::manifest::Stripe)> {
    match &manifest.erasure {
        Some(erasure) if usize::from(erasure.data) == shape.data() && usize::from(erasure.parity) == shape.parity() => {
            manifest.chunks.iter().map(|c| c.id).zip(erasure.stripes.iter().cloned()).collect()
        }
        _ => Vec::new(),
    }
}

fn pull_file(cx: &Cx, spec: &str, output: Option<&Path>, force: bool) -> Result<()> {
    let spec = network::secret_argument(spec, "share ticket")?;
    let wanted = Wanted::parse(&spec)?;
    let session = cx.session(Access::Read)?;
    let home = cx.existing_home()?;
    let owner = session.keys().owner_keys();
    // Peers are needed for a shared version, or when this home is part of a network.
    let networked = session.networked(home)?;
    let link = if networked || wanted.is_shared() { Some(session.link()?) } else { None };
    let swarm = match &link {
        Some(link) => Some(connect(&session, home, link, &wanted.peers())?),
        None => None,
    };
    // A name or version is looked up in the log the peers hold (a new home
    // with only the owner key has no copy of its own yet).
    let network_log = swarm
        .as_ref()
        .filter(|_| networked)
        .map(|swarm| NetworkLog::new(session.catalog(), session.index(), swarm, false));
    let catalog: &dyn Catalog = match &network_log {
        Some(log) => log,
        None => session.catalog(),
    };
    let target = Target::resolve(catalog, session.index(), &owner, &wanted)?;
    let label = &target.label;
    let manifest = target.open(catalog, swarm.as_ref(), &owner).with_context(|| format!("pulling {label}"))?;
    let fetch = match &swarm {
        Some(swarm) => Some(Fetch::new(swarm, session.store()).for_manifest(&manifest)?),
        None => None,
    };
    if fetch.is_none() && manifest.erasure.is_some() {
        bail!("{label} is erasure coded: its shards are on peers, and this home has none to ask");
    }
    let source: &dyn pull::Source = match (&fetch, session.store()) {
        (Some(fetch), _) => fetch,
        (None, Some(store)) => store,
        (None, None) => bail!("a served home pulls through its node, which did not answer"),
    };
    let parallelism = if swarm.is_some() { Parallelism::for_network() } else { Parallelism::for_this_machine() };
    let started = Instant::now();
    let bar = output::progress_bar(Some(manifest.size), cx.quiet, "pull");
    let progress = |n| bar.inc(n);
    let (destination, resumed) = match output {
        Some(path) if path == Path::new("-") => {
            interrupt::on_interrupt(format!("pull interrupted; run `p2pfs pull` again to get {label}"));
            pull::write_to(source, &manifest, &mut io::stdout().lock(), parallelism, &progress)
                .with_context(|| format!("pulling {label}"))?;
            ("standard output".to_owned(), None)
        }
        _ => {
            let path = output_path(&manifest, target.id, output)?;
            if path.exists() && !force {
                bail!("{} exists; add --force to overwrite it, or -o another path", path.display());
            }
            let partial = pull::partial_path(&path, &target.id);
            interrupt::on_interrupt(format!(
                "pull interrupted: what was pulled is kept in {}. Run the same `p2pfs pull` again to resume, \
                 or delete that file",
                partial.display()
            ));
            // From peers, what arrived is kept for a rerun (a peer may come
            // back); from the local store, a failure is the store's damage.
            let keep_partial = swarm.is_some();
            let outcome =
                pull::write_to_path(source, &manifest, &target.id, &path, parallelism, keep_partial, &progress)
                    .with_context(|| match keep_partial && partial.exists() {
                        true => format!(
                            "pulling {label}; what was pulled is kept in {}: run the same command again to resume",
                            partial.display()
                        ),
                        false => format!("pulling {label}"),
                    })?;
            (path.display().to_string(), Some(outcome))
        }
    };
    interrupt::clear();
    bar.finish_and_clear();
    if cx.quiet {
        return Ok(());
    }
    let elapsed = started.elapsed();
    eprintln!(
        "pulled {label} to {destination}: {} in {}; {:.2} s, {}",
        output::size(manifest.size),
        output::count(manifest.chunks.len() as u64, "verified chunk", "verified chunks"),
        elapsed.as_secs_f64(),
        output::rate(manifest.size, elapsed),
    );
    if let Some(outcome) = resumed.filter(|o| o.resumed_chunks > 0) {
        eprintln!(
            "resumed an interrupted pull: {} ({}) were already there and verified",
            output::count(outcome.resumed_chunks as u64, "chunk", "chunks"),
            output::size(outcome.resumed_bytes)
        );
    }
    if let Some(swarm) = &swarm {
        network::print_member_report(&swarm.report(), &swarm.unreachable, true);
    }
    Ok(())
}

fn share(cx: &Cx, spec: &str) -> Result<()> {
    let session = cx.session(Access::Read)?;
    let owner = session.keys().owner_keys();
    let link = session.networked(cx.existing_home()?)?.then(|| session.link()).transpose()?;
    let (history, swarm) = read_history(cx, &session, link.as_deref())?;
    let version = history.select_one(spec)?;
    drop(history);
    let envelope = match (session.catalog().manifest(&version.manifest)?, &swarm) {
        (Some(envelope), _) => envelope,
        (None, Some(swarm)) => swarm.fetch_manifest(&version.manifest)?,
        (None, None) => return Err(TransferError::from(StoreError::ManifestMissing(version.manifest)).into()),
    };
    let (file_key, _) = Manifest::open(&owner, version.manifest, &envelope).map_err(TransferError::from)?;
    println!("{}", network::share_ticket(cx.existing_home()?, &session.own_node(), version.manifest, &file_key)?);
    cx.say(format_args!(
        "this ticket reads {} (and nothing else); anyone in the network who has it can pull it",
        version.label()
    ));
    Ok(())
}

/// `-o` as given, inside it if it is a directory, or the manifest's name here.
fn output_path(manifest: &Manifest, id: ManifestId, output: Option<&Path>) -> Result<PathBuf> {
    let stored_name = Path::new(&manifest.name)
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| format!("p2pfs-{}", id.short(12)).into());
    Ok(match output {
        Some(dir) if dir.is_dir() => dir.join(stored_name),
        Some(path) => path.to_owned(),
        None => PathBuf::from(stored_name),
    })
}

/// The owner's history for a command that only reads it: the log the
/// peers hold, when the home has peers and one answers, else this home's
/// copy (with a warning); and the peers that answered.
fn read_history<'s>(cx: &Cx, session: &'s Session, link: Option<&Link>) -> Result<(History<'s>, Option<Swarm>)> {
    let owner = session.keys().owner_keys();
    let index = session.index();
    let Some(link) = link else { return Ok((index.sync(&owner, session.catalog(), false)?, None)) };
    match connect(session, cx.existing_home()?, link, &[]) {
        Ok(swarm) => {
            let log = NetworkLog::new(session.catalog(), index, &swarm, false);
            let history = index.sync(&owner, &log, false)?;
            for note in log.notes() {
                tracing::warn!("{note}");
            }
            Ok((history, Some(swarm)))
        }
        Err(e) => {
            cx.warn(format_args!("showing this home's own copy of the log, which may lag: {e:#}"));
            Ok((index.sync(&owner, session.catalog(), false)?, None))
        }
    }
}

/// Opens the home for reading, with a link to its peers if it has some.
fn read_session(cx: &Cx) -> Result<(Session, Option<Link>)> {
    let session = cx.session(Access::Read)?;
    let link = match session.networked(cx.existing_home()?)? {
        true => Some(Link::new(session.keys())?),
        false => None,
    };
    Ok((session, link))
}

/// `p2pfs log [NAME]`: the versions, newest first, read from the index a
/// page at a time and written as they are read, so the first lines cost
/// the same however long the history is (and `| head` stops the read).
fn show_log(cx: &Cx, name: Option<&str>, json: bool) -> Result<()> {
    let (session, link) = read_session(cx)?;
    let (history, _) = read_history(cx, &session, link.as_ref())?;
    // The label column fits the longest `name@number` there can be.
    let label_width = match name {
        Some(name) => match history.versions_of(name)? {
            0 => bail!("no file named '{name}' in the log; `p2pfs ls` lists what there is"),
            versions => label_len(name, versions),
        },
        None => history.name_rows()?.iter().map(|(name, row)| label_len(name, row.versions)).max().unwrap_or(0),
    };
    let widths = [label_width.max(7), 23, 8, 6, 8, 16, 0];
    let mut out = io::stdout().lock();
    let written = (|| -> Result<()> {
        match json {
            true => out.write_all(b"[")?,
            false => out.write_all(
                output::row(&["VERSION", "PUSHED", "SIZE", "CHUNKS", "NEW", "ID", ""], &widths).as_bytes(),
            )?,
        }
        // The first page is small, so `| head` reads little; pages then
        // grow to the index's.
        let (mut before, mut first, mut size) = (None, true, 16);
        loop {
            let page = history.page(name, before, size)?;
            size = (size * 4).min(transfer::index::PAGE);
            let Some(&(last, _)) = page.last() else { break };
            for (_, v) in &page {
                if json {
                    let v = serde_json::to_string(v)?;
                    out.write_all(if first { b"\n  " } else { b",\n  " })?;
                    out.write_all(v.as_bytes())?;
                    first = false;
                    continue;
                }
                let cells = [
                    v.label(),
                    output::utc_time(v.pushed_ms),
                    output::size(v.size),
                    v.chunks.to_string(),
                    output::size(v.new_bytes),
                    v.manifest.short(16),
                    v.removed_ms.map_or(String::new(), |ms| format!("removed {}", output::utc_time(ms))),
                ];
                out.write_all(output::row(&cells.each_ref().map(String::as_str), &widths).as_bytes())?;
            }
            out.flush()?;
            before = Some(last);
        }
        if json {
            out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
        }
        Ok(out.flush()?)
    })();
    match written {
        // The reader stopped (`| head`): what it wanted was written.
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => Ok(()),
        other => other,
    }
}

/// The width of `name@N` for the largest N a name with `versions` has.
fn label_len(name: &str, versions: u32) -> usize {
    name.chars().count() + 1 + versions.max(1).to_string().len()
}

/// `p2pfs ls`: each name with a live version, from the index's row per
/// name (never the versions themselves).
fn list(cx: &Cx, json: bool) -> Result<()> {
    let (session, link) = read_session(cx)?;
    let (history, _) = read_history(cx, &session, link.as_ref())?;
    let latest = history.names()?;
    if json {
        let entries: Vec<_> = latest
            .iter()
            .map(|n| serde_json::json!({ "name": n.latest.name, "versions": n.live, "latest": n.latest }))
            .collect();
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = latest
        .iter()
        .map(|n| {
            let v = &n.latest;
            vec![
                v.name.clone(),
                n.live.to_string(),
                v.number.to_string(),
                output::utc_time(v.pushed_ms),
                output::size(v.size),
                v.chunks.to_string(),
                output::size(v.new_bytes),
                v.manifest.short(16),
            ]
        })
        .collect();
    let header = ["NAME", "VERSIONS", "LATEST", "PUSHED", "SIZE", "CHUNKS", "NEW", "ID"];
    print!("{}", output::table(&header, &rows));
    Ok(())
}

fn remove(cx: &Cx, spec: &str) -> Result<()> {
    let session = cx.session(Access::Add)?;
    let home = cx.existing_home()?;
    let owner = session.keys().owner_keys();
    let link = if session.networked(home)? { Some(session.link()?) } else { None };
    let swarm = match &link {
        Some(link) => match connect(&session, home, link, &[]) {
            Ok(swarm) => Some(swarm),
            // With no node of its own to go through, the removal is recorded
            // here and reaches the peers when they answer a later command.
            Err(e) if session.served().is_none() => {
                cx.warn(format_args!("{e:#}"));
                None
            }
            Err(e) => return Err(e.context(format!("removing {spec}: nothing was removed"))),
        },
        None => None,
    };
    let network_log = swarm.as_ref().map(|swarm| NetworkLog::new(session.catalog(), session.index(), swarm, true));
    let catalog: &dyn Catalog = match &network_log {
        Some(log) => log,
        None => session.catalog(),
    };
    let versions: Vec<Version> = session.index().sync(&owner, catalog, true)?.select(spec)?;
    let labels: Vec<String> = versions.iter().map(Version::label).collect();
    let retracted = record::retract_versions(catalog, session.index(), swarm.as_ref(), &owner, &versions)?;

    // Every node that may hold a pin of these versions and did not confirm
    // the unpin hears of it again from later commands.
    let mut known: std::collections::BTreeSet<NodeId> =
        PeerTable::load(home).map(|t| t.peers().into_iter().map(|p| p.node).collect()).unwrap_or_default();
    known.extend(session.own_node().iter().map(|p| p.node));
    known.retain(|node| !retracted.confirmed.contains(node));
    if !known.is_empty() {
        for version in &versions {
            let entry = pending::PendingUnpin {
                owner: owner.owner_id(),
                manifest: version.manifest,
                label: version.label(),
                nodes: known.clone(),
                since_ms: transfer::unix_time_ms(),
            };
            pending::add(home, entry).context("recording the removal for the nodes that did not confirm it")?;
        }
        let why: Vec<String> =
            retracted.unconfirmed.iter().map(|(node, why)| format!("{}: {why}", node.short(16))).collect();
        cx.warn(format_args!(
            "{} not confirmed the removal yet{}; later commands send it again until each has (`p2pfs status` \
             shows what is pending)",
            output::count(known.len() as u64, "node has", "nodes have"),
            if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
        ));
    }
    let freed = if swarm.is_some() || session.served().is_some() {
        "each node frees the chunks no live version needs after its --gc-grace"
    } else {
        "`p2pfs gc` frees the chunks no live version needs"
    };
    cx.say(format_args!("removed {}; {freed}", labels.join(", ")));
    Ok(())
}

/// Connects to the home's peers (and `extra`), then sends the removals
/// they have not confirmed yet to those that answered.
fn connect(session: &Session, home: &Path, link: &Link, extra: &[KnownPeer]) -> Result<Swarm> {
    let mut peers = session.own_node();
    peers.extend(extra.iter().cloned());
    // Nodes that owe a confirmation of a removal are dialled even in
    // backoff: a node back up hears of it from the next command.
    let owner = session.keys().owner_keys().owner_id();
    let owing: std::collections::HashSet<NodeId> = pending::load(home)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.owner == owner)
        .flat_map(|p| p.nodes)
        .collect();
    if !owing.is_empty() {
        let table = PeerTable::load(home).context("reading the peer table")?;
        peers.extend(table.peers().into_iter().filter(|p| owing.contains(&p.node)));
    }
    let swarm = network::connect_swarm(&link.client, home, &peers)?;
    retry_pending(session, home, &swarm);
    Ok(swarm)
}

/// Sends each removal some nodes did not confirm to those of them in
/// `swarm`, and forgets the nodes that confirm it, or that the home has
/// not known for [`pending::GIVE_UP_AFTER_MS`]. Best effort: a read-only
/// home only sends.
fn retry_pending(session: &Session, home: &Path, swarm: &Swarm) {
    let owner = session.keys().owner_keys();
    let Ok(pending) = pending::load(home) else { return };
    if !pending.iter().any(|p| p.owner == owner.owner_id()) {
        return;
    }
    let present: std::collections::HashSet<NodeId> = swarm.answered().into_iter().map(|(node, _)| node).collect();
    let mut confirmed = Vec::new();
    for entry in pending.iter().filter(|p| p.owner == owner.owner_id()) {
        let targets: std::collections::HashSet<NodeId> =
            entry.nodes.iter().filter(|node| present.contains(node)).copied().collect();
        if !targets.is_empty() {
            let sent = record::send_unpins(swarm, &owner, &[entry.manifest], Some(&targets));
            confirmed.push((entry.manifest, sent.confirmed));
        }
    }
    let mut known: std::collections::HashSet<NodeId> =
        PeerTable::load(home).map(|t| t.peers().into_iter().map(|p| p.node).collect()).unwrap_or_default();
    known.extend(session.own_node().iter().map(|p| p.node));
    let updated = pending::update(home, |pending| {
        for entry in pending.iter_mut().filter(|p| p.owner == owner.owner_id()) {
            for (manifest, nodes) in &confirmed {
                if *manifest == entry.manifest {
                    entry.nodes.retain(|node| !nodes.contains(node));
                }
            }
            // A node the home no longer knows is given up on only after a
            // while: it may be learned again, and it still holds the pin.
            let fresh = transfer::unix_time_ms().saturating_sub(entry.since_ms) < pending::GIVE_UP_AFTER_MS;
            entry.nodes.retain(|node| fresh || known.contains(node));
        }
    });
    if let Err(e) = updated {
        tracing::debug!("not updating {}: {e}", pending::PENDING_FILE);
    }
}

fn collect_garbage(cx: &Cx, json: bool) -> Result<()> {
    let session = cx.session(Access::Exclusive)?;
    // The home is held alone: nothing is in flight, so no grace is needed.
    let report = session.require_owned("gc")?.store().gc(std::time::Duration::ZERO)?;
    if json {
        return print_json(&report);
    }
    cx.say(format_args!(
        "gc: deleted {} and {}, freed {}",
        output::count(report.chunks_deleted, "chunk", "chunks"),
        output::count(report.manifests_deleted, "manifest", "manifests"),
        output::size(report.bytes_freed)
    ));
    Ok(())
}

fn status(cx: &Cx, json: bool) -> Result<()> {
    let (session, link) = read_session(cx)?;
    let home = cx.existing_home()?;
    let owner = session.keys().owner_keys();
    let (history, _) = read_history(cx, &session, link.as_ref())?;
    let mut node_status = None;
    // Usage per owner: the node tells its own home's CLI alone.
    let (chunk_bytes, chunk_count, max_storage, mut owners, owners_omitted) = match (session.served(), session.store())
    {
        (Some(served), _) => {
            let status = served.daemon().status()?;
            node_status = Some(status.clone());
            let owners: Vec<(String, u64, u64)> =
                status.owners.iter().map(|o| (o.owner.to_string(), o.chunks, o.bytes)).collect();
            (status.chunk_bytes, status.chunks, status.max_storage, owners, status.owners_omitted)
        }
        (None, Some(store)) => {
            let (bytes, count) = store.chunk_usage()?;
            let owners = store.owner_usage()?.into_iter().map(|o| (o.owner.to_string(), o.chunks, o.bytes)).collect();
            (bytes, count, None, owners, 0)
        }
        (None, None) => bail!("this home's store is neither open here nor served"),
    };
    owners.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let tip = history.tip();
    drop(history);
    let pending: Vec<pending::PendingUnpin> =
        pending::load(home)?.into_iter().filter(|p| p.owner == owner.owner_id()).collect();
    let owner_id = owner.owner_id().to_string();
    let mut status = serde_json::json!({
        "home": home,
        "node_id": session.keys().node_id().to_string(),
        "served_by_pid": session.served().map(|s| s.pid()),
        "owner_id": owner_id,
        "names": tip.live_names,
        "live_versions": tip.live_versions,
        "logical_bytes": tip.live_bytes,
        "stored_chunks": chunk_count,
        "stored_bytes": chunk_bytes,
        "pending_removals": pending,
        "max_storage": max_storage,
        "owners": owners.iter().map(|(owner, chunks, bytes)| serde_json::json!({
            "owner": owner, "chunks": chunks, "bytes": bytes,
        })).collect::<Vec<_>>(),
        "owners_omitted": owners_omitted,
    });
    // How a push to peers places chunks by default, and what that stores per byte.
    let placement = match session.config().push.erasure() {
        Some(shape) => serde_json::json!({ "erasure": shape.to_string(), "overhead": shape.overhead() }),
        None => serde_json::json!({ "replicas": DEFAULT_REPLICAS, "overhead": f64::from(DEFAULT_REPLICAS) }),
    };
    status["placement"] = placement;
    if let Some(node) = &node_status {
        status["pins"] = node.pins.into();
        status["repair"] = serde_json::json!({
            "under_replicated": node.under_replicated,
            "repaired": node.repaired,
            "in_progress": node.repairing,
            "last_pass_ms": (node.last_repair_ms > 0).then_some(node.last_repair_ms),
        });
    }
    if json {
        return print_json(&status);
    }
    println!("home       {}", home.display());
    println!("node id    {}", session.keys().node_id());
    if let Some(served) = session.served() {
        println!("serving    yes: `p2pfs serve` (pid {}) answered for this home", served.pid());
    }
    println!("owner id   {owner_id}");
    println!(
        "versions   {} live, of {}, {} in all",
        tip.live_versions,
        output::count(tip.live_names, "name", "names"),
        output::size(status["logical_bytes"].as_u64().unwrap_or(0))
    );
    let quota = max_storage.map_or(String::new(), |q| format!(" (quota {})", output::size(q)));
    println!(
        "store      {}, {} on disk{quota}",
        output::count(chunk_count, "chunk", "chunks"),
        output::size(chunk_bytes)
    );
    // A chunk two owners pin counts for each, so the lines may add up to more than the store.
    for (id, chunks, bytes) in &owners {
        let you = if *id == owner_id { " (you)" } else { "" };
        println!(
            "owner      {}{you}: {}, {}",
            &id[..16],
            output::count(*chunks, "chunk", "chunks"),
            output::size(*bytes)
        );
    }
    if owners_omitted > 0 {
        println!("owner      … and {owners_omitted} more");
    }
    match session.config().push.erasure() {
        Some(shape) => println!(
            "pushes     {shape} erasure coded to peers, {:.2}x stored ([push] erasure in config.toml)",
            shape.overhead()
        ),
        None => println!(
            "pushes     {DEFAULT_REPLICAS} replicas to peers, {DEFAULT_REPLICAS}.00x stored (push --erasure K+M stores less)"
        ),
    }
    if let Some(node) = &node_status {
        println!("pins       {}", node.pins);
        let last = match node.last_repair_ms {
            0 => "no pass yet".to_owned(),
            ms => format!("last pass {}", output::utc_time(ms)),
        };
        println!(
            "repair     {} under R, {} sent; {}{}",
            output::count(node.under_replicated, "chunk", "chunks"),
            output::count(node.repaired, "copy", "copies"),
            last,
            if node.repairing { "; a pass is running" } else { "" }
        );
    }
    for (i, removal) in pending.iter().enumerate() {
        let nodes: Vec<String> = removal.nodes.iter().map(|n| n.short(16)).collect();
        println!(
            "{}{} removed {}, not yet confirmed by {}",
            if i == 0 { "pending    " } else { "           " },
            removal.label,
            output::utc_time(removal.since_ms),
            nodes.join(", ")
        );
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value).map_err(|e| anyhow!(e))?;
    writeln!(stdout)?;
    Ok(())
}

/// What to try next, for the failures whose fix is not in the message already.
fn hint(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    return Some(
                        "the disk is full: free some space, or run `p2pfs gc` to delete chunks no version needs; \
                         nothing was recorded, and earlier versions are intact"
                            .into(),
                    );
                }
                io::ErrorKind::NotFound => return Some("check the path".into()),
                io::ErrorKind::PermissionDenied => return Some("check the file's permissions".into()),
                _ => {}
            }
        }
        // Transparent wrappers forward `source()` past the error they wrap,
        // so look inside them as well as at each link of the chain.
        let transfer = cause.downcast_ref::<TransferError>();
        let store = cause.downcast_ref::<StoreError>().or(match transfer {
            Some(TransferError::Store(e)) => Some(e),
            _ => None,
        });
        let manifest = cause.downcast_ref::<ManifestError>().or(match transfer {
            Some(TransferError::Manifest(e)) => Some(e),
            _ => None,
        });
        if let Some(StoreError::ChunkCorrupted { .. } | StoreError::ChunkMissing(_)) = store {
            return Some(
                "the store's copy of this version is damaged; nothing was written to the output. \
                 Pushing the original file again repairs it"
                    .into(),
            );
        }
        match manifest {
            Some(ManifestError::Crypto { source: CryptoError::WrongOwnerKey, .. }) => {
                return Some(
                    "this manifest was pushed with another owner key: use the home that pushed it, \
                     or that home's keys/owner.key"
                        .into(),
                );
            }
            Some(ManifestError::IdMismatch(_) | ManifestError::Crypto { .. }) => {
                return Some("the manifest file in the store was altered; it cannot be trusted or repaired".into());
            }
            _ => {}
        }
        if let Some(TransferError::ChunkAuth(_)) = transfer {
            return Some("the manifest and the chunk disagree; the manifest may have been forged".into());
        }
    }
    None
}
