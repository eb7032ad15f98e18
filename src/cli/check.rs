//! Replication health: `p2pfs check` (the owner asks whether every live
//! version has R healthy replicas) and the options with which `p2pfs serve`
//! keeps them so (`--replicas`, `--repair-interval`, `--repair-rate`).

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use super::session::Session;
use super::{Cx, network, output, print_json, units};
use crate::erasure::Shape;
use crate::home::Access;
use crate::id::ManifestId;
use crate::manifest::Manifest;
use crate::node::{self, RepairConfig};
use crate::transfer::check::{self, Replication};
use crate::transfer::{self, TransferError};

/// `p2pfs check`'s arguments.
#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    /// Check only this: NAME (its live versions), NAME@VERSION or a manifest id prefix
    /// (default: every live version).
    version: Option<String>,
    /// Also fetch every copy and verify its bytes (BLAKE3), not only ask who has it.
    #[arg(long)]
    read: bool,
    /// Replicas each chunk should have (default 3, as for push; capped by the peers reachable).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    replicas: Option<u16>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
}

/// What `check` found for one version.
#[derive(Debug, Serialize)]
struct VersionHealth {
    /// `NAME@N`.
    version: String,
    manifest: ManifestId,
    /// Whether every chunk has its replicas.
    healthy: bool,
    /// Why it could not be checked (its manifest is unavailable), if so.
    error: Option<String>,
    #[serde(flatten)]
    replication: Replication,
}

/// `p2pfs check [VERSION] [--read] [--replicas N] [--json]`: exit 0 when
/// every version checked has its replicas, 1 otherwise.
pub(super) fn check(cx: &Cx, args: &CheckArgs) -> Result<()> {
    let session = cx.session(Access::Read)?;
    let home = cx.existing_home()?;
    let owner = session.keys().owner_keys();
    let history = session.index().sync(&owner, session.catalog(), false)?;
    let versions = match &args.version {
        Some(spec) => history.select(spec)?,
        None => history.live()?,
    };
    drop(history);
    if !session.networked(home)? {
        bail!(
            "this home has no peers: its chunks are stored once, here, with nothing to replicate. `p2pfs init \
             --join TOKEN` joins a network"
        );
    }
    let link = session.link()?;
    let swarm = network::connect_swarm(&link.client, home, &session.own_node())?;
    let replicas = usize::from(args.replicas.unwrap_or(node::DEFAULT_REPLICAS));
    if swarm.live() < replicas {
        cx.warn(format_args!(
            "only {} reachable: each chunk is checked for {} on them",
            output::count(swarm.live() as u64, "peer is", "peers are"),
            output::count(swarm.live() as u64, "replica", "replicas")
        ));
    }
    let mut results = Vec::with_capacity(versions.len());
    for version in versions {
        let label = version.label();
        let manifest = version_manifest(&session, &swarm, &owner, version.manifest);
        let result = match manifest {
            Ok(manifest) => {
                let replication = match &manifest.erasure {
                    Some(erasure) => {
                        let shape = Shape::new(usize::from(erasure.data), usize::from(erasure.parity))?;
                        let stripes: Vec<(crate::id::ChunkId, &[crate::id::ChunkId])> = manifest
                            .chunks
                            .iter()
                            .zip(&erasure.stripes)
                            .map(|(c, s)| (c.id, s.shards.as_slice()))
                            .collect();
                        check::check_stripes(&swarm, shape, &stripes, args.read)
                    }
                    None => {
                        let chunks: Vec<crate::id::ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
                        check::check_chunks(&swarm, replicas, &chunks, args.read)
                    }
                };
                VersionHealth {
                    version: label,
                    manifest: version.manifest,
                    healthy: replication.healthy(),
                    error: None,
                    replication,
                }
            }
            Err(e) => VersionHealth {
                version: label,
                manifest: version.manifest,
                healthy: false,
                error: Some(format!("{e:#}")),
                replication: Replication::default(),
            },
        };
        if !result.healthy && !args.json {
            println!("{}", result.version);
        }
        describe(cx, &result, args.read);
        results.push(result);
    }
    if args.json {
        print_json(&results)?;
    }
    let unhealthy = results.iter().filter(|r| !r.healthy).count();
    if unhealthy > 0 {
        bail!(
            "{} of {} checked {} a chunk under its healthy replicas (or shards, if erasure coded) (listed on \
             stdout); a node's repair brings them back within its --repair-interval",
            unhealthy,
            output::count(results.len() as u64, "version", "versions"),
            if unhealthy == 1 { "has" } else { "have" }
        );
    }
    cx.say(format_args!(
        "{} healthy: every chunk has {} on its best-placed live peers{}",
        output::count(results.len() as u64, "version", "versions"),
        output::count(replicas.min(swarm.live()) as u64, "replica", "replicas"),
        if args.read { ", each copy read and verified" } else { "" }
    ));
    Ok(())
}

/// A version's manifest: from this home, or a peer.
fn version_manifest(
    session: &Session,
    swarm: &transfer::swarm::Swarm,
    owner: &crate::crypto::OwnerKeys,
    id: ManifestId,
) -> Result<Manifest> {
    let envelope = match session.catalog().manifest(&id)? {
        Some(envelope) => envelope,
        None => swarm.fetch_manifest(&id)?,
    };
    let (_, manifest) = Manifest::open(owner, id, &envelope).map_err(TransferError::from)?;
    Ok(manifest)
}

/// One version's result, for people, on stderr.
fn describe(cx: &Cx, result: &VersionHealth, read: bool) {
    let r = &result.replication;
    if let Some(error) = &result.error {
        cx.say(format_args!("{}: not checked: {error}", result.version));
        return;
    }
    let (one, many) = if r.erasure.is_some() { ("shard", "shards") } else { ("replica", "replicas") };
    if result.healthy {
        cx.say(format_args!(
            "{}: ok, {} at {} each{}{}",
            result.version,
            output::count(r.chunks, "chunk", "chunks"),
            output::count(r.replicas as u64, one, many),
            r.erasure.as_ref().map(|code| format!(" ({code} erasure coded)")).unwrap_or_default(),
            if read {
                format!(" ({} read and verified)", output::count(r.copies_read, "copy", "copies"))
            } else {
                String::new()
            }
        ));
        return;
    }
    cx.say(format_args!(
        "{}: {} of {} under {} healthy {many}{}{}",
        result.version,
        r.under_replicated,
        output::count(r.chunks, "chunk", "chunks"),
        r.replicas,
        if r.lost > 0 {
            format!(", {} with too few shards to rebuild it (lost until a node holding one comes back)", r.lost)
        } else {
            String::new()
        },
        if r.bad_copies > 0 {
            format!("; {} bad", output::count(r.bad_copies, "copy", "copies"))
        } else {
            String::new()
        }
    ));
    for chunk in &r.listed {
        let nodes = |ids: &[crate::id::NodeId]| ids.iter().map(|n| n.short(16)).collect::<Vec<_>>().join(", ");
        let mut line = format!("  chunk {}: {} healthy", chunk.chunk.short(16), chunk.healthy);
        if !chunk.missing_on.is_empty() {
            line.push_str(&format!("; missing on {}", nodes(&chunk.missing_on)));
        }
        if !chunk.bad_on.is_empty() {
            line.push_str(&format!("; bad on {}", nodes(&chunk.bad_on)));
        }
        cx.say(line);
    }
    if r.under_replicated > r.listed.len() as u64 {
        cx.say(format_args!("  … and {} more", r.under_replicated - r.listed.len() as u64));
    }
}

/// `p2pfs serve`'s repair options.
#[derive(Debug, clap::Args)]
pub(super) struct RepairArgs {
    /// Replicas each chunk this node holds for a pin should have: it sends a chunk to its
    /// best-placed live nodes that lack it (default 3, as for push).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    replicas: Option<u16>,
    /// How often the node checks the replicas of every chunk it holds (e.g. 30s, 10m, 1h).
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = units::parse_interval)]
    repair_interval: Duration,
    /// Most chunk bytes a repair sends per second (e.g. 32MiB, 500k, 1G).
    #[arg(long, default_value = "32MiB", value_name = "BYTES", value_parser = units::parse_rate)]
    repair_rate: u64,
    /// How long a known peer stays unreachable before the node repairs without waiting.
    #[arg(long, default_value = "1m", value_name = "DURATION", value_parser = units::parse_interval, hide = true)]
    unreachable_after: Duration,
    /// Time between two scrub passes over every stored chunk.
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = units::parse_interval, hide = true)]
    scrub_interval: Duration,
}

impl RepairArgs {
    /// The node's repair configuration.
    pub(super) fn config(&self) -> RepairConfig {
        RepairConfig {
            replicas: usize::from(self.replicas.unwrap_or(node::DEFAULT_REPLICAS)),
            interval: self.repair_interval,
            rate: self.repair_rate,
            unreachable_after: self.unreachable_after,
            scrub_interval: self.scrub_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_nodes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            repair: RepairArgs,
        }
        let config = Serve::parse_from(["serve"]).repair.config();
        let defaults = RepairConfig::default();
        assert_eq!(config.replicas, defaults.replicas);
        assert_eq!(config.interval, defaults.interval);
        assert_eq!(config.rate, defaults.rate);
        assert_eq!(config.unreachable_after, defaults.unreachable_after);
        assert_eq!(config.scrub_interval, defaults.scrub_interval);
    }
}
