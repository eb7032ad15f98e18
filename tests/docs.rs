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
    assert_eq!(MAX_CHUNKS, 16 << 20);
    documents("≤ 16 Mi entries");
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
