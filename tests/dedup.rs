//! Deduplication a user can see, at the scale the issue states: a 1 GiB file,
//! 1 MiB of it overwritten, pushed again.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::{Node, random_bytes};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Writes `len` pseudo-random bytes to `path` in 64 MiB pieces.
fn write_random_file(path: &Path, len: u64, seed: u64) {
    let mut file = File::create(path).unwrap();
    let mut xof = blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof();
    let mut piece = vec![0u8; 64 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        xof.fill(&mut piece[..n]);
        file.write_all(&piece[..n]).unwrap();
        left -= n as u64;
    }
}

fn file_hash(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path).unwrap();
    let mut piece = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut piece).unwrap();
        if n == 0 {
            return hasher.finalize();
        }
        hasher.update(&piece[..n]);
    }
}

fn stored_bytes(node: &Node) -> u64 {
    let status: serde_json::Value = serde_json::from_str(&node.ok(&["status", "--json"])).unwrap();
    status["stored_bytes"].as_u64().unwrap()
}

#[test]
fn a_one_mib_edit_of_a_one_gib_file_stores_a_few_chunks_and_an_unchanged_push_stores_nothing() {
    // Default chunk sizes: 256 KiB / 1 MiB / 4 MiB.
    let node = Node::new();
    node.ok(&["init"]);
    let file = node.work.join("big.bin");
    write_random_file(&file, GIB, 40);

    let first = node.push_json(&file, &[]);
    assert_eq!(first["new_bytes"], GIB);
    let after_first = stored_bytes(&node);

    // Overwrite 1 MiB in the middle.
    let mut edit = OpenOptions::new().write(true).open(&file).unwrap();
    edit.seek(SeekFrom::Start(GIB / 2)).unwrap();
    edit.write_all(&random_bytes(MIB as usize, 41)).unwrap();
    drop(edit);

    let second = node.push_json(&file, &[]);
    let new_bytes = second["new_bytes"].as_u64().unwrap();
    assert!(new_bytes <= 8 * MIB, "a 1 MiB edit stored {new_bytes} new bytes: {second}");
    assert!(new_bytes >= MIB, "the edited bytes themselves are new: {second}");
    let growth = stored_bytes(&node) - after_first;
    assert!(growth <= 8 * MIB + 4096, "the store grew by {growth} bytes");

    let third = node.push_json(&file, &[]);
    assert_eq!(third["unchanged"], true, "an identical push records nothing: {third}");
    assert_eq!(third["manifest"], second["manifest"], "it names the version that has these bytes");
    assert_eq!(third["version"], 2, "{third}");
    assert_eq!(third["new_bytes"], 0, "{third}");
    assert_eq!(third["chunks_stored"], 0, "{third}");
    assert_eq!(third["chunks_sealed"], 0, "an unchanged push re-seals nothing: {third}");

    let out = node.work.join("back.bin");
    node.ok(&["pull", second["manifest"].as_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(file_hash(&out), file_hash(&file));
    fs::remove_file(&out).unwrap();
}
