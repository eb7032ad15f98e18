//! The `p2pfs` command line: arguments → home → library calls → output.
//!
//! stdout carries only machine results (a manifest id, file bytes with
//! `-o -`, `--json`); summaries, progress and errors go to stderr. Exit codes:
//! 0 ok, 1 the operation failed, 2 usage error.

mod network;
mod output;
mod session;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};

use crate::crypto::{CryptoError, FileKey};
use crate::home::{self, Home, InitOutcome};
use crate::id::ManifestId;
use crate::manifest::log::{History, Version};
use crate::manifest::{Manifest, ManifestError};
use crate::node::peers::KnownPeer;
use crate::store::StoreError;
use crate::transfer::catalog::Catalog;
use crate::transfer::fetch::Fetch;
use crate::transfer::replicate::Replicate;
use crate::transfer::{self, Parallelism, TransferError, pull, push, record};
use session::Session;

/// A peer-to-peer, end-to-end encrypted, deduplicating, versioned file store.
///
/// With no network configured, files go to this machine's own encrypted
/// store in $P2PFS_HOME (default: the platform data directory).
#[derive(Debug, Parser)]
#[command(name = "p2pfs", version, about, max_term_width = 100)]
pub struct Args {
    /// Print nothing on stderr but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
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
        /// Replicas per chunk when pushing to peers (capped by the peers reachable).
        #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        replicas: u16,
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
    /// Show the versions of one name, or of every name.
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
    /// Run a storage node: answer peers' requests from this home's store.
    Serve {
        /// The UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7070", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// A peer to join at start (repeatable).
        #[arg(long, value_name = "NODEID@ADDR")]
        bootstrap: Vec<String>,
    },
    /// Print a token that lets another home join this node's network.
    Invite {
        /// The address to give out (default: where this home's node listens).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<std::net::SocketAddr>,
    },
    /// List known peers: NodeId, address, state and round-trip time.
    Peers {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
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

fn execute(args: &Args) -> Result<()> {
    let home_path =
        home::default_home_path().context("cannot tell where the p2pfs home is: set P2PFS_HOME to a directory")?;
    let say = |message: String| {
        if !args.quiet {
            eprintln!("{message}");
        }
    };
    if let Command::Init { join: Some(token) } = &args.command {
        return network::join(&home_path, token, args.quiet);
    }
    if let Command::Init { join: None } = args.command {
        let message = match home::init(&home_path)? {
            InitOutcome::Created => format!("initialised p2pfs home at {}", home_path.display()),
            InitOutcome::AlreadyInitialised => {
                format!("{} is already a p2pfs home; nothing changed", home_path.display())
            }
        };
        say(message);
        return Ok(());
    }
    if !home::is_initialised(&home_path) {
        home::init(&home_path)?;
        say(format!("initialised p2pfs home at {}", home_path.display()));
    }
    // These only read keys and talk to peers: they work beside a running node.
    match &args.command {
        Command::Invite { addr } => return network::invite(&home_path, *addr),
        Command::Peers { json } => return network::peers(&home_path, *json),
        Command::Key(KeyCommand::Export) => return network::key_export(&home_path, args.quiet),
        _ => {}
    }
    if let Command::Serve { listen, bootstrap } = &args.command {
        return network::serve(Home::open(&home_path)?, *listen, bootstrap, args.quiet);
    }
    let session = Session::open(&home_path)?;
    let path = home_path.as_path();
    match &args.command {
        Command::Init { .. }
        | Command::Invite { .. }
        | Command::Peers { .. }
        | Command::Key(KeyCommand::Export)
        | Command::Serve { .. } => {
            unreachable!("handled above")
        }
        Command::Share { version } => share(&session, path, version),
        Command::Key(KeyCommand::Import { file, force }) => {
            network::key_import(session.require_owned("key import")?, file, *force, args.quiet)
        }
        Command::Push { file, name, json, replicas } => {
            push_file(&session, path, file, name.as_deref(), *json, usize::from(*replicas), args.quiet)
        }
        Command::Pull { version, output, force } => {
            pull_file(&session, path, version, output.as_deref(), *force, args.quiet)
        }
        Command::Log { name, json } => show_log(&session, name.as_deref(), *json),
        Command::Ls { json } => list(&session, *json),
        Command::Rm { version } => remove(&session, path, version, args.quiet),
        Command::Gc { json } => collect_garbage(session.require_owned("gc")?, *json, args.quiet),
        Command::Status { json } => status(&session, path, *json),
    }
}

fn push_file(
    session: &Session,
    home: &Path,
    file: &Path,
    name: Option<&str>,
    json: bool,
    replicas: usize,
    quiet: bool,
) -> Result<()> {
    let (input, name, total): (Box<dyn Read + Send>, String, Option<u64>) = if file == Path::new("-") {
        let name = name.context("pushing standard input needs a name: add --name NAME")?;
        (Box::new(io::stdin()), name.to_owned(), None)
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
            None => file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{} has no file name to store it under: add --name NAME", file.display()))?,
        };
        (Box::new(input), name, Some(metadata.len()))
    };
    if name.is_empty() || name.len() > crate::manifest::MAX_NAME_LEN {
        bail!("'{name}' cannot be a name: give 1 to {} bytes", crate::manifest::MAX_NAME_LEN);
    }
    let owner = session.keys().owner_keys();
    let bar = output::progress_bar(total, quiet, "push");
    let progress = |n| bar.inc(n);
    let chunker = session.config().chunker;
    let catalog = session.catalog();
    let mut peer_summary = None;
    let report = if session.networked(home)? {
        let link = session.link()?;
        let swarm = network::connect_swarm(&link.client, home, &session.own_node())?;
        let previous = previous_chunks(catalog, &owner, &name);
        let destination = Replicate::new(&swarm, &owner, replicas, &previous);
        // A home whose only peer is its own node has nowhere else to put replicas.
        let alone = session.served().is_some() && swarm.len() == 1;
        if destination.replicas < replicas && !quiet && !alone {
            eprintln!(
                "p2pfs: warning: only {} of the {replicas} peers wanted are reachable: each chunk gets {} copies",
                swarm.len(),
                destination.replicas
            );
        }
        let report =
            push::push(catalog, &destination, &owner, &name, input, chunker, Parallelism::for_network(), &progress)
                .with_context(|| format!("pushing {} to peers", file.display()))?;
        peer_summary = Some((destination.replicas, swarm.report(), swarm.unreachable.clone()));
        report
    } else {
        let store = session.store().expect("a home without peers or a node is opened by this process");
        push::push(store, store, &owner, &name, input, chunker, Parallelism::for_this_machine(), &progress)
            .with_context(|| format!("pushing {}", file.display()))?
    };
    bar.finish_and_clear();
    if json {
        let v = &report.version;
        print_json(&serde_json::json!({
            "manifest": v.manifest,
            "name": v.name,
            "version": v.number,
            "size": v.size,
            "chunks": v.chunks,
            "new_bytes": v.new_bytes,
            "chunks_stored": report.chunks_stored,
            "chunks_sealed": report.chunks_sealed,
            "seconds": report.elapsed.as_secs_f64(),
        }))?;
    } else {
        println!("{}", report.manifest());
    }
    if !quiet {
        let v = &report.version;
        let reused_chunks = v.chunks - report.chunks_stored;
        eprintln!(
            "pushed {}: {} in {} chunks; {} new ({} chunks), {} reused ({} chunks); {:.2} s, {}",
            v.label(),
            output::size(v.size),
            v.chunks,
            output::size(v.new_bytes),
            report.chunks_stored,
            output::size(v.size - v.new_bytes),
            reused_chunks,
            report.elapsed.as_secs_f64(),
            output::rate(v.size, report.elapsed),
        );
        if let Some((replicas, members, unreachable)) = &peer_summary {
            let copies = if *replicas == 1 { "1 durable copy" } else { &format!("{replicas} durable replicas") };
            eprintln!("every chunk has {copies}:");
            network::print_member_report(members, unreachable, false);
        }
    }
    Ok(())
}

/// The chunks of the latest live version of `name`, which a new version
/// probably shares: peers are asked about them in one batched `Has`.
fn previous_chunks(catalog: &dyn Catalog, owner: &crate::crypto::OwnerKeys, name: &str) -> Vec<crate::id::ChunkId> {
    let Ok(history) = transfer::history(catalog, owner) else { return Vec::new() };
    let Some(latest) = history.versions_of(name).filter(|v| v.is_live()).last() else { return Vec::new() };
    match pull::open_manifest(catalog, owner, latest.manifest) {
        Ok(manifest) => manifest.chunks.iter().map(|c| c.id).collect(),
        Err(_) => Vec::new(),
    }
}

fn pull_file(
    session: &Session,
    home: &Path,
    spec: &str,
    output: Option<&Path>,
    force: bool,
    quiet: bool,
) -> Result<()> {
    let owner = session.keys().owner_keys();
    let catalog = session.catalog();
    let spec = &network::secret_argument(spec, "share ticket")?;
    let ticket = if network::is_share_ticket(spec) { Some(network::parse_share_ticket(spec)?) } else { None };
    let (manifest_id, label) = match &ticket {
        Some(ticket) => (ticket.manifest, format!("shared manifest {}", ticket.manifest.short(16))),
        None => resolve_for_pull(&transfer::history(catalog, &owner)?, spec)?,
    };
    // Peers are needed for a share ticket, or when this home is part of a network.
    let link = if session.networked(home)? || ticket.is_some() { Some(session.link()?) } else { None };
    let swarm = match &link {
        Some(link) => {
            let mut extra = session.own_node();
            extra.extend(
                ticket
                    .iter()
                    .flat_map(|t| &t.peers)
                    .map(|p| KnownPeer { node: p.node, addrs: p.addrs.iter().map(|&a| a.into()).collect() }),
            );
            Some(network::connect_swarm(&link.client, home, &extra)?)
        }
        None => None,
    };
    let envelope = match catalog.manifest(&manifest_id).with_context(|| format!("pulling {label}"))? {
        Some(envelope) => envelope,
        None => match &swarm {
            Some(swarm) => swarm.fetch_manifest(&manifest_id).with_context(|| format!("pulling {label}"))?,
            None => {
                return Err(anyhow::Error::new(TransferError::from(StoreError::ManifestMissing(manifest_id)))
                    .context(format!("pulling {label}")));
            }
        },
    };
    let manifest = match &ticket {
        Some(ticket) => Manifest::open_with_file_key(&FileKey(ticket.file_key), manifest_id, &envelope),
        None => Manifest::open(&owner, manifest_id, &envelope).map(|(_, manifest)| manifest),
    }
    .map_err(TransferError::from)
    .with_context(|| format!("pulling {label}"))?;

    let fetch = swarm.as_ref().map(|swarm| Fetch::new(swarm, session.store()));
    let source: &dyn pull::Source = match (&fetch, session.store()) {
        (Some(fetch), _) => fetch,
        (None, Some(store)) => store,
        (None, None) => unreachable!("a served home always pulls through its node"),
    };
    let parallelism = if swarm.is_some() { Parallelism::for_network() } else { Parallelism::for_this_machine() };
    let started = Instant::now();
    let bar = output::progress_bar(Some(manifest.size), quiet || output == Some(Path::new("-")), "pull");
    let mut resumed = None;
    let destination = match output {
        Some(path) if path == Path::new("-") => {
            let mut stdout = io::stdout().lock();
            pull::write_to(source, &manifest, &mut stdout, parallelism, &|n| bar.inc(n))
                .with_context(|| format!("pulling {label}"))?;
            "standard output".to_owned()
        }
        _ => {
            let path = output_path(&manifest, manifest_id, output)?;
            if path.exists() && !force {
                bail!("{} exists; add --force to overwrite it, or -o another path", path.display());
            }
            let outcome =
                pull::write_to_path(source, &manifest, &manifest_id, &path, parallelism, swarm.is_some(), &|n| {
                    bar.inc(n)
                })
                .with_context(|| format!("pulling {label}"))?;
            resumed = Some(outcome);
            path.display().to_string()
        }
    };
    bar.finish_and_clear();
    if !quiet {
        let elapsed = started.elapsed();
        eprintln!(
            "pulled {label} to {destination}: {} in {} verified chunks; {:.2} s, {}",
            output::size(manifest.size),
            manifest.chunks.len(),
            elapsed.as_secs_f64(),
            output::rate(manifest.size, elapsed),
        );
        if let Some(outcome) = resumed.filter(|o| o.resumed_chunks > 0) {
            eprintln!(
                "resumed an interrupted pull: {} chunks ({}) were already there and verified",
                outcome.resumed_chunks,
                output::size(outcome.resumed_bytes)
            );
        }
        if let Some(swarm) = &swarm {
            network::print_member_report(&swarm.report(), &swarm.unreachable, true);
        }
    }
    Ok(())
}

fn share(session: &Session, home: &Path, spec: &str) -> Result<()> {
    let owner = session.keys().owner_keys();
    let history = transfer::history(session.catalog(), &owner)?;
    let version = history.select_one(spec)?;
    let envelope = session
        .catalog()
        .manifest(&version.manifest)?
        .ok_or(TransferError::from(StoreError::ManifestMissing(version.manifest)))?;
    let (file_key, _) = Manifest::open(&owner, version.manifest, &envelope).map_err(TransferError::from)?;
    println!("{}", network::share_ticket(home, &session.own_node(), version.manifest, &file_key)?);
    eprintln!("this ticket reads {} (and nothing else); anyone in the network who has it can pull it", version.label());
    Ok(())
}

/// The manifest a pull spec names, and how to call it in messages. A whole
/// manifest id the log does not know is still tried against the store.
fn resolve_for_pull(history: &History, spec: &str) -> Result<(ManifestId, String)> {
    match history.select_one(spec) {
        Ok(version) => Ok((version.manifest, version.label())),
        Err(err) => match spec.parse::<ManifestId>() {
            Ok(id) => Ok((id, format!("manifest {}", id.short(16)))),
            Err(_) => Err(err.into()),
        },
    }
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

fn show_log(session: &Session, name: Option<&str>, json: bool) -> Result<()> {
    let history = transfer::history(session.catalog(), &session.keys().owner_keys())?;
    let versions: Vec<&Version> = match name {
        Some(name) => {
            let versions: Vec<_> = history.versions_of(name).collect();
            if versions.is_empty() {
                bail!("no file named '{name}' in the log; `p2pfs ls` lists what there is");
            }
            versions
        }
        None => history.versions().iter().collect(),
    };
    if json {
        return print_json(&versions);
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.label(),
                output::utc_time(v.pushed_ms),
                output::size(v.size),
                v.chunks.to_string(),
                output::size(v.new_bytes),
                v.manifest.short(16),
                v.removed_ms.map_or(String::new(), |ms| format!("removed {}", output::utc_time(ms))),
            ]
        })
        .collect();
    print!("{}", output::table(&["VERSION", "PUSHED", "SIZE", "CHUNKS", "NEW", "ID", ""], &rows));
    Ok(())
}

fn list(session: &Session, json: bool) -> Result<()> {
    let history = transfer::history(session.catalog(), &session.keys().owner_keys())?;
    let latest: Vec<(usize, &Version)> = history
        .live_names()
        .into_iter()
        .map(|name| {
            let live: Vec<&Version> = history.versions_of(name).filter(|v| v.is_live()).collect();
            (live.len(), *live.last().expect("live_names only lists names with live versions"))
        })
        .collect();
    if json {
        let entries: Vec<_> = latest
            .iter()
            .map(|(count, v)| serde_json::json!({ "name": v.name, "versions": count, "latest": v }))
            .collect();
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = latest
        .iter()
        .map(|(count, v)| {
            vec![
                v.name.clone(),
                count.to_string(),
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

fn remove(session: &Session, home: &Path, spec: &str, quiet: bool) -> Result<()> {
    let owner = session.keys().owner_keys();
    let history = transfer::history(session.catalog(), &owner)?;
    let versions: Vec<Version> = history.select(spec)?.into_iter().cloned().collect();
    let labels: Vec<String> = versions.iter().map(Version::label).collect();
    // Peers first: if none answers, nothing is removed anywhere.
    let link = if session.networked(home)? { Some(session.link()?) } else { None };
    let swarm = match &link {
        Some(link) => Some(
            network::connect_swarm(&link.client, home, &session.own_node())
                .with_context(|| format!("removing {}: nothing was removed", labels.join(", ")))?,
        ),
        None => None,
    };
    let retracted = record::retract_versions(session.catalog(), swarm.as_ref(), &owner, &versions)?;
    if !retracted.unconfirmed.is_empty() {
        eprintln!("p2pfs: warning: some peers did not confirm the unpin: {}", retracted.unconfirmed.join("; "));
    }
    if !quiet {
        let gc = match session.served() {
            Some(_) => "stop the node and run `p2pfs gc` to free the chunks no live version needs",
            None => "`p2pfs gc` frees the chunks no live version needs",
        };
        eprintln!("removed {}; {gc}", labels.join(", "));
    }
    Ok(())
}

fn collect_garbage(home: &Home, json: bool, quiet: bool) -> Result<()> {
    let report = home.store().gc()?;
    if json {
        return print_json(&report);
    }
    if !quiet {
        eprintln!(
            "gc: deleted {} chunks and {} manifests, freed {}",
            report.chunks_deleted,
            report.manifests_deleted,
            output::size(report.bytes_freed)
        );
    }
    Ok(())
}

fn status(session: &Session, home: &Path, json: bool) -> Result<()> {
    let owner = session.keys().owner_keys();
    let history = transfer::history(session.catalog(), &owner)?;
    let (chunk_bytes, chunk_count) = match session.served() {
        Some(served) => {
            let status = served.daemon().status()?;
            (status.chunk_bytes, status.chunks)
        }
        None => session.store().expect("an owned home has its store").chunk_usage()?,
    };
    let live: Vec<&Version> = history.versions().iter().filter(|v| v.is_live()).collect();
    let status = serde_json::json!({
        "home": home,
        "node_id": session.keys().node_id().to_string(),
        "served_by_pid": session.served().map(|s| s.pid()),
        "owner_id": owner.owner_id().to_string(),
        "names": history.live_names().len(),
        "live_versions": live.len(),
        "logical_bytes": live.iter().map(|v| v.size).sum::<u64>(),
        "stored_chunks": chunk_count,
        "stored_bytes": chunk_bytes,
    });
    if json {
        return print_json(&status);
    }
    println!("home       {}", home.display());
    println!("node id    {}", session.keys().node_id());
    if let Some(served) = session.served() {
        println!("serving    yes: `p2pfs serve` (pid {}) answered for this home", served.pid());
    }
    println!("owner id   {}", owner.owner_id());
    println!(
        "versions   {} live, of {} names, {} in all",
        live.len(),
        status["names"],
        output::size(status["logical_bytes"].as_u64().unwrap_or(0))
    );
    println!("store      {} chunks, {} on disk", chunk_count, output::size(chunk_bytes));
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
