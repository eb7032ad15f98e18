//! The `p2pfs` command line: arguments → home → library calls → output.
//!
//! stdout carries only machine results (a manifest id, file bytes with
//! `-o -`, `--json`); summaries, progress and errors go to stderr. Exit codes:
//! 0 ok, 1 the operation failed, 2 usage error.

mod output;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};

use crate::crypto::CryptoError;
use crate::home::{self, Home, InitOutcome};
use crate::id::ManifestId;
use crate::manifest::log::{History, Version};
use crate::manifest::{Manifest, ManifestError};
use crate::store::StoreError;
use crate::transfer::{self, Parallelism, TransferError, pull, push};

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
    Init,
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
    },
    /// Get a version back, verified.
    Pull {
        /// NAME (latest version), NAME@VERSION, or a manifest id (a unique prefix of 8+ hex digits will do).
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
    if let Command::Init = args.command {
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
    let home = Home::open(&home_path)?;
    match &args.command {
        Command::Init => unreachable!("handled above"),
        Command::Push { file, name, json } => push_file(&home, file, name.as_deref(), *json, args.quiet),
        Command::Pull { version, output, force } => pull_file(&home, version, output.as_deref(), *force, args.quiet),
        Command::Log { name, json } => show_log(&home, name.as_deref(), *json),
        Command::Ls { json } => list(&home, *json),
        Command::Rm { version } => remove(&home, version, args.quiet),
        Command::Gc { json } => collect_garbage(&home, *json, args.quiet),
        Command::Status { json } => status(&home, *json),
    }
}

fn push_file(home: &Home, file: &Path, name: Option<&str>, json: bool, quiet: bool) -> Result<()> {
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
    let owner = home.keys().owner_keys();
    let bar = output::progress_bar(total, quiet, "push");
    let report =
        push::push(home.store(), &owner, &name, input, home.config().chunker, Parallelism::for_this_machine(), &|n| {
            bar.inc(n)
        })
        .with_context(|| format!("pushing {}", file.display()))?;
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
    }
    Ok(())
}

fn pull_file(home: &Home, spec: &str, output: Option<&Path>, force: bool, quiet: bool) -> Result<()> {
    let owner = home.keys().owner_keys();
    let history = transfer::history(home.store(), &owner)?;
    let (manifest_id, label) = resolve_for_pull(&history, spec)?;
    let manifest =
        pull::open_manifest(home.store(), &owner, manifest_id).with_context(|| format!("pulling {label}"))?;
    let started = Instant::now();
    let bar = output::progress_bar(Some(manifest.size), quiet || output == Some(Path::new("-")), "pull");
    let destination = match output {
        Some(path) if path == Path::new("-") => {
            let mut stdout = io::stdout().lock();
            pull::write_to(home.store(), &manifest, &mut stdout, Parallelism::for_this_machine(), &|n| bar.inc(n))
                .with_context(|| format!("pulling {label}"))?;
            "standard output".to_owned()
        }
        _ => {
            let path = output_path(&manifest, manifest_id, output)?;
            if path.exists() && !force {
                bail!("{} exists; add --force to overwrite it, or -o another path", path.display());
            }
            pull::write_to_path(home.store(), &manifest, &path, Parallelism::for_this_machine(), &|n| bar.inc(n))
                .with_context(|| format!("pulling {label}"))?;
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
    }
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

fn show_log(home: &Home, name: Option<&str>, json: bool) -> Result<()> {
    let history = transfer::history(home.store(), &home.keys().owner_keys())?;
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

fn list(home: &Home, json: bool) -> Result<()> {
    let history = transfer::history(home.store(), &home.keys().owner_keys())?;
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

fn remove(home: &Home, spec: &str, quiet: bool) -> Result<()> {
    let owner = home.keys().owner_keys();
    let history = transfer::history(home.store(), &owner)?;
    let versions: Vec<Version> = history.select(spec)?.into_iter().cloned().collect();
    transfer::remove_versions(home.store(), &owner, &versions)?;
    if !quiet {
        let labels: Vec<String> = versions.iter().map(Version::label).collect();
        eprintln!("removed {}; `p2pfs gc` frees the chunks no live version needs", labels.join(", "));
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

fn status(home: &Home, json: bool) -> Result<()> {
    let owner = home.keys().owner_keys();
    let history = transfer::history(home.store(), &owner)?;
    let (chunk_bytes, chunk_count) = home.store().chunk_usage()?;
    let live: Vec<&Version> = history.versions().iter().filter(|v| v.is_live()).collect();
    let status = serde_json::json!({
        "home": home.path(),
        "node_id": home.keys().node_id().to_string(),
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
    println!("home       {}", home.path().display());
    println!("node id    {}", home.keys().node_id());
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
