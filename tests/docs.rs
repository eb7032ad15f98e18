//! The limits and defaults written in docs/FORMAT.md are the ones in the code.

use p2pfs::chunk::{ChunkerConfig, MAX_CHUNK_SIZE};
use p2pfs::crypto::{ENVELOPE_MAGIC, ENVELOPE_MIN_LEN, ENVELOPE_VERSION};
use p2pfs::manifest::log::{LOG_ENTRY_VERSION, MAX_LOG_ENTRY_LEN};
use p2pfs::manifest::{MANIFEST_VERSION, MAX_CHUNKS, MAX_NAME_LEN};

const FORMAT: &str = include_str!("../docs/FORMAT.md");

fn documents(text: &str) {
    assert!(FORMAT.contains(text), "docs/FORMAT.md should say {text:?}");
}

#[test]
fn format_doc_states_the_limits_in_the_code() {
    documents(&format!("≤ {MAX_NAME_LEN} bytes"));
    assert_eq!(MAX_CHUNKS, 256 << 10);
    documents("≤ 256 Ki entries");
    assert_eq!(p2pfs::manifest::MAX_ENVELOPE_LEN, 18 << 20);
    documents("An envelope is at most 18 MiB");
    assert_eq!(MAX_CHUNK_SIZE, 16 << 20);
    documents("1 ..= 16 MiB");
    documents("1 KiB ≤ max ≤ 16 MiB");
    assert_eq!(MAX_LOG_ENTRY_LEN, 64 << 10);
    documents("Maximum stored size 64 KiB");
}

#[test]
fn format_doc_states_the_defaults_and_versions_in_the_code() {
    let defaults = ChunkerConfig::default();
    assert_eq!((defaults.min_size, defaults.avg_size, defaults.max_size), (256 << 10, 1 << 20, 4 << 20));
    documents("Default sizes: min 256 KiB, avg 1 MiB, max 4 MiB");
    documents(&format!("magic `{}`", std::str::from_utf8(ENVELOPE_MAGIC).unwrap()));
    documents(&format!("envelope version, `0x{ENVELOPE_VERSION:02x}`"));
    // Header of 105 bytes, then at least the 16-byte tag.
    assert_eq!(ENVELOPE_MIN_LEN, 105 + 16);
    documents("| 105 | rest (≥ 16) |");
    documents(&format!("| `version` | u8 | `{MANIFEST_VERSION}` |"));
    documents(&format!("| `version` | u8, `{LOG_ENTRY_VERSION}` |"));
}

const PROTOCOL: &str = include_str!("../docs/PROTOCOL.md");

/// `| `NAME` | value |` rows of PROTOCOL.md's limits table.
fn protocol_limits() -> Vec<(String, u64)> {
    let table = PROTOCOL.split("## Limits").nth(1).expect("a Limits section").split("\n## ").next().unwrap();
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.get(2)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn protocol_doc_limits_are_the_constants_in_the_code() {
    use p2pfs::wire;
    let code: Vec<(&str, u64)> = vec![
        ("MAX_FRAME_LEN", wire::MAX_FRAME_LEN as u64),
        ("MAX_CHUNK_PAYLOAD", wire::MAX_CHUNK_PAYLOAD.into()),
        ("MAX_MANIFEST_PAYLOAD", wire::MAX_MANIFEST_PAYLOAD.into()),
        ("MAX_PIN_CHUNKS", wire::MAX_PIN_CHUNKS.into()),
        ("MAX_STRIPE_SHARDS", wire::MAX_STRIPE_SHARDS.into()),
        ("MAX_HAS_IDS", wire::MAX_HAS_IDS as u64),
        ("MAX_PEERS", wire::MAX_PEERS as u64),
        ("MAX_PEER_ADDRS", wire::MAX_PEER_ADDRS as u64),
        ("MAX_LOG_ENTRY_LEN", wire::MAX_LOG_ENTRY_LEN as u64),
        ("MAX_ERROR_MESSAGE_LEN", wire::MAX_ERROR_MESSAGE_LEN as u64),
        ("MAX_LOG_BATCH", wire::MAX_LOG_BATCH as u64),
        ("MAX_STATUS_OWNERS", wire::MAX_STATUS_OWNERS as u64),
    ];
    let documented = protocol_limits();
    assert_eq!(documented.len(), code.len(), "every documented limit is checked: {documented:?}");
    for (name, value) in code {
        assert!(documented.contains(&(name.to_owned(), value)), "PROTOCOL.md should give {name} = {value}");
    }
}

#[test]
fn wire_limits_agree_with_the_formats_they_carry() {
    use p2pfs::{crypto, manifest, wire};
    // `wire` may use only `id`, so it states these limits itself.
    assert_eq!(wire::MAX_CHUNK_PAYLOAD, p2pfs::sealing::max_sealed_len(MAX_CHUNK_SIZE));
    assert_eq!(wire::MAX_CHUNK_PAYLOAD, p2pfs::sealing::MAX_SEALED_LEN);
    assert!(wire::MAX_CHUNK_PAYLOAD > MAX_CHUNK_SIZE + crypto::TAG_LEN as u32);
    assert_eq!(wire::MAX_LOG_ENTRY_LEN, MAX_LOG_ENTRY_LEN);
    assert_eq!(wire::MAX_PIN_CHUNKS as usize, manifest::MAX_CHUNKS);
    assert_eq!(usize::from(wire::MAX_STRIPE_SHARDS), manifest::MAX_SHARDS);
    assert_eq!(u64::from(wire::MAX_MANIFEST_PAYLOAD), p2pfs::store::MAX_MANIFEST_LEN);
    assert_eq!(wire::MAX_MANIFEST_PAYLOAD as usize, manifest::MAX_ENVELOPE_LEN);
    assert_eq!(wire::ALPN, format!("p2pfs/{}", wire::PROTOCOL_VERSION).as_bytes());
}

#[test]
fn protocol_doc_lists_every_frame_type_with_its_byte() {
    for &frame_type in p2pfs::wire::FrameType::ALL {
        let row = format!("| 0x{:02x} | {:?} |", frame_type as u8, frame_type);
        assert!(PROTOCOL.contains(&row), "PROTOCOL.md should have the row {row}");
    }
}

const README: &str = include_str!("../README.md");

/// The `sh` code blocks of the README section that starts at `heading`.
fn readme_blocks(heading: &str) -> Vec<Vec<String>> {
    let section = README.split(heading).nth(1).expect("the README has that section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| {
            block.split("```").next().unwrap().lines().map(str::to_owned).filter(|l| !l.trim().is_empty()).collect()
        })
        .collect()
}

/// A line without its trailing `# comment`.
fn command_of(line: &str) -> String {
    match line.find("  #") {
        Some(at) => line[..at].trim().to_owned(),
        None => line.trim().to_owned(),
    }
}

/// A UDP port nobody listens on right now.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Shell {
    work: tempfile::TempDir,
    path: String,
    children: Vec<std::process::Child>,
}

impl Shell {
    fn new() -> Self {
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_p2pfs")).parent().unwrap().to_owned();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        Self { work: tempfile::tempdir().unwrap(), path, children: Vec::new() }
    }

    fn command(&self, home: &str, line: &str) -> std::process::Command {
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", line])
            .current_dir(self.work.path())
            .env("PATH", &self.path)
            .env("P2PFS_HOME", self.work.path().join(home))
            .env_remove("RUST_LOG");
        command
    }

    /// Runs `line` as the README shows it, in the home `home`; it must succeed.
    fn run(&self, home: &str, line: &str) -> String {
        let out = self.command(home, line).output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed as the README shows it:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `p2pfs serve …` (a line ending in `&`) and waits until it serves.
    fn serve(&mut self, home: &str, line: &str) {
        let line = line.trim_end_matches('&').trim();
        let child = self
            .command(home, line)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let info = self.work.path().join(home).join("serve.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !info.exists() {
            assert!(std::time::Instant::now() < deadline, "`{line}` did not start serving");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.children.push(child);
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn readme_quickstart_runs_as_shown() {
    let shell = Shell::new();
    let file: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(shell.work.path().join("bigfile.iso"), &file).unwrap();
    std::fs::create_dir(shell.work.path().join("photos")).unwrap();
    std::fs::write(shell.work.path().join("photos/a.jpg"), b"not really a photo").unwrap();
    let blocks = readme_blocks("## Quickstart");
    assert!(blocks.len() >= 2, "the quickstart has its blocks");
    let mut id = String::new();
    for line in blocks[0].iter().chain(&blocks[1]) {
        let command = command_of(line).replace("cargo run --release --", "p2pfs");
        if !command.starts_with("p2pfs") && !command.starts_with("tar") {
            continue;
        }
        let command = command.replace("3f1c9a0b", id.get(..8).unwrap_or_default());
        let out = shell.run("home", &command);
        if id.is_empty() && command.starts_with("p2pfs push bigfile.iso") {
            id = out.trim().to_owned();
        }
    }
    assert_eq!(id.len(), 64, "the first push printed the id");
    assert_eq!(std::fs::read(shell.work.path().join("copy.iso")).unwrap(), file);
    assert_eq!(std::fs::read(shell.work.path().join("same.iso")).unwrap(), file);
}

#[test]
fn readme_storage_node_steps_run_as_shown() {
    let mut shell = Shell::new();
    let file: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(40_503) >> 7) as u8).collect();
    std::fs::write(shell.work.path().join("bigfile.iso"), &file).unwrap();
    let first = free_port();
    let block = readme_blocks("### With peers").remove(0);
    let mut home = String::new();
    let mut homes = 0;
    for line in &block {
        if line.starts_with('#') {
            homes += 1;
            home = format!("home{homes}");
            continue;
        }
        let command = command_of(line).replace("192.0.2.10:7070", &format!("127.0.0.1:{first}"));
        let command = if command.contains("serve") {
            let port = if homes == 1 { first } else { free_port() };
            command.replace("0.0.0.0:7070", &format!("127.0.0.1:{port}"))
        } else {
            command
        };
        if command.ends_with('&') {
            shell.serve(&home, &command);
        } else {
            shell.run(&home, &command);
        }
    }
    assert_eq!(homes, 3, "three machines: the first node, another node, the laptop");
    assert_eq!(std::fs::read(shell.work.path().join("copy.iso")).unwrap(), file);
    assert_eq!(std::fs::read(shell.work.path().join("shared.iso")).unwrap(), file);
    let peers = shell.run(&home, "p2pfs peers --json");
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 2, "the laptop knows both storage nodes: {peers}");

    // A new machine with the owner key the laptop exported, and the token.
    let restore = readme_blocks("### With peers").remove(1);
    let mut listed = String::new();
    for line in &restore {
        let output = shell.run("home4", &command_of(line));
        if line.starts_with("p2pfs ls") {
            listed = output;
        }
    }
    assert!(listed.contains("bigfile.iso"), "the new machine lists the laptop's file: {listed}");
    assert_eq!(std::fs::read(shell.work.path().join("restored.iso")).unwrap(), file);
}
