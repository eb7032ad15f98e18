//! Compression as a user sees it: text shrinks in the store, random data is
//! stored raw (padded), both come back byte for byte, and the level is the
//! home's to choose.

mod common;

use std::fs;

use common::{Node, random_bytes};

const MIB: usize = 1 << 20;

/// Text-like bytes: lines of words drawn from a small vocabulary by a seeded
/// generator, so zstd shrinks them several times over but no two runs of
/// bytes repeat exactly.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let noise = random_bytes(len / 2, seed);
    let words: Vec<String> =
        (0..512).map(|i| format!("{}{i:x} ", ["peer", "chunk", "store", "node", "seal"][i % 5])).collect();
    let mut out = Vec::with_capacity(len + 16);
    for (i, pair) in noise.chunks(2).enumerate() {
        out.extend_from_slice(words[usize::from(pair[0]) * 2 % words.len()].as_bytes());
        if i % 12 == 11 {
            out.push(b'\n');
        }
        if out.len() >= len {
            break;
        }
    }
    out.truncate(len);
    out
}

fn chunk_bytes(node: &Node) -> u64 {
    node.chunk_files().iter().map(|f| fs::metadata(f).unwrap().len()).sum()
}

fn pull(node: &Node, what: &str) -> Vec<u8> {
    let out = node.run(&["pull", what, "-o", "-"]);
    assert!(out.status.success(), "pull {what}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn text_is_stored_compressed_and_random_data_raw_and_both_come_back() {
    let node = Node::new();
    node.ok(&["init"]);
    let words = text(8 * MIB, 1);
    let report = node.push_json(&node.write("words.txt", &words), &[]);
    let stored = chunk_bytes(&node);
    assert!(stored * 3 < words.len() as u64, "8 MiB of text took {stored} bytes");
    assert_eq!(report["stored_bytes"].as_u64().unwrap(), stored, "the report says what the store holds: {report}");
    assert_eq!(pull(&node, "words.txt"), words);

    let noise = random_bytes(8 * MIB, 2);
    node.push(&node.write("noise.bin", &noise), &[]);
    let noise_stored = chunk_bytes(&node) - stored;
    let len = noise.len() as u64;
    assert!(noise_stored >= len && noise_stored <= len + len / 25, "8 MiB of noise took {noise_stored} bytes");
    assert_eq!(pull(&node, "noise.bin"), noise);

    // The human summary says what the new bytes took.
    let out = node.run(&["push", node.write("more.txt", &text(2 * MIB, 3)).to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && summary.contains("stored)"), "{summary}");
}

#[test]
fn the_level_is_the_homes_and_a_bad_one_is_refused_by_name() {
    let node = Node::new();
    node.ok(&["init"]);
    let config = node.home.join("config.toml");
    let default = fs::read_to_string(&config).unwrap();
    assert!(default.contains("[compression]\nlevel = 3"), "init writes the default level: {default}");

    fs::write(&config, "[compression]\nlevel = 0\n").unwrap();
    let words = text(4 * MIB, 4);
    node.push(&node.write("plain.txt", &words), &[]);
    assert!(chunk_bytes(&node) >= words.len() as u64, "level 0 stores every chunk raw");
    assert_eq!(pull(&node, "plain.txt"), words);

    fs::write(&config, "[compression]\nlevel = 19\n").unwrap();
    let before = chunk_bytes(&node);
    node.push(&node.write("dense.txt", &text(4 * MIB, 5)), &[]);
    assert!((chunk_bytes(&node) - before) * 3 < words.len() as u64);
    // Both levels' versions read, whatever the level is now.
    assert_eq!(pull(&node, "plain.txt"), words);

    fs::write(&config, "[compression]\nlevel = 30\n").unwrap();
    let stderr = node.fails(&["push", node.write("x.txt", b"x").to_str().unwrap()], 1);
    assert!(stderr.contains("config.toml") && stderr.contains("level = 30") && stderr.contains("-7"), "{stderr}");
}

#[test]
fn an_unchanged_push_compresses_nothing_and_an_edit_only_its_chunks() {
    let node = Node::with_chunks(common::SMALL_CHUNKS);
    let mut words = text(4 * MIB, 6);
    let file = node.write("log.txt", &words);
    let first = node.push_json(&file, &[]);
    assert!(first["chunks_sealed"].as_u64().unwrap() > 8, "{first}");

    let again = node.push_json(&file, &[]);
    assert_eq!(again["unchanged"], true, "{again}");
    assert_eq!(again["chunks_sealed"], 0, "nothing compressed or sealed again: {again}");
    assert_eq!(again["stored_bytes"], 0, "{again}");

    words[2 * MIB..2 * MIB + 1000].copy_from_slice(&text(1000, 7));
    fs::write(&file, &words).unwrap();
    let edited = node.push_json(&file, &[]);
    let sealed = edited["chunks_sealed"].as_u64().unwrap();
    assert!((1..=3).contains(&sealed), "an edit in one place seals one to three chunks: {edited}");
    assert_eq!(pull(&node, "log.txt"), words);
}
