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
        ("MAX_HAS_IDS", wire::MAX_HAS_IDS as u64),
        ("MAX_PEERS", wire::MAX_PEERS as u64),
        ("MAX_PEER_ADDRS", wire::MAX_PEER_ADDRS as u64),
        ("MAX_LOG_ENTRY_LEN", wire::MAX_LOG_ENTRY_LEN as u64),
        ("MAX_ERROR_MESSAGE_LEN", wire::MAX_ERROR_MESSAGE_LEN as u64),
        ("MAX_LOG_BATCH", wire::MAX_LOG_BATCH as u64),
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
    assert_eq!(wire::MAX_CHUNK_PAYLOAD, MAX_CHUNK_SIZE + crypto::TAG_LEN as u32);
    assert_eq!(wire::MAX_LOG_ENTRY_LEN, MAX_LOG_ENTRY_LEN);
    assert_eq!(wire::MAX_PIN_CHUNKS as usize, manifest::MAX_CHUNKS);
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
