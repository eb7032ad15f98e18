//! The committed fuzz corpus (`fuzz/corpus/`), checked by the unit tests,
//! which alone (with the fuzz targets) see [`check_decoder`] and
//! [`sample_frames`]:
//!
//! - every corpus file passes the decoder self-check, so an input that once
//!   crashed a fuzz target is a permanent test;
//! - the `decode_frame` seeds (`seed-*`) are exactly what [`seeds`] makes:
//!   one valid encoding of every frame type (picked by type, so a new frame
//!   type gets its seed) and edge cases for each decode error.
//!
//! After a change to the frames, rewrite the seeds with
//! `P2PFS_WRITE_SEEDS=1 cargo test --lib wire::fuzz_corpus`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::*;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn corpus_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for target in fs::read_dir(corpus_root()).expect("fuzz/corpus exists") {
        for file in fs::read_dir(target.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

/// The sample frame of type `frame_type`.
fn sample(frame_type: FrameType) -> Frame {
    sample_frames().into_iter().find(|f| f.frame_type() == frame_type).expect("a sample of every frame type")
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("seed frames are within the limits");
    out
}

fn raw(len: u32, version: u8, frame_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&[version, frame_type]);
    out.extend_from_slice(body);
    out
}

/// The seed corpus of the `decode_frame` fuzz target, by file name.
fn seeds() -> BTreeMap<String, Vec<u8>> {
    let mut seeds: BTreeMap<String, Vec<u8>> = sample_frames()
        .iter()
        .map(|frame| (format!("seed-frame-{:?}", frame.frame_type()).to_lowercase(), encode(frame)))
        .collect();

    let ping = encode(&sample(FrameType::Ping));
    let full_has = Frame::Has(Has { ids: Bounded::new(vec![ChunkId([3; 32]); MAX_HAS_IDS]).expect("at the limit") });
    let full_head =
        Frame::PutHead(PutHead { entry: BoundedBytes::new(vec![7; MAX_LOG_ENTRY_LEN]).expect("at the limit") });
    let mut over_has = vec![0x81, 0x08];
    over_has.resize(2 + 1025 * 32, 0);
    let mut two = ping.clone();
    two.extend_from_slice(&encode(&sample(FrameType::Pong)));
    let mut chunk_over_limit = vec![0u8; 32];
    chunk_over_limit.extend_from_slice(&[0x91, 0x80, 0x80, 0x08, 0x00]);
    let mut bad_signature = vec![0u8; 64];
    bad_signature.extend_from_slice(&[3, 1, 2, 3]);
    seeds.extend([
        ("seed-edge-empty".into(), vec![]),
        ("seed-edge-partial-length".into(), vec![3, 0]),
        ("seed-edge-partial-body".into(), ping[..ping.len() - 1].to_vec()),
        ("seed-edge-two-frames".into(), two),
        ("seed-edge-oversize".into(), raw(MAX_FRAME_LEN as u32 + 1, 1, FrameType::Ping as u8, &[])),
        ("seed-edge-too-short".into(), raw(1, 1, 0, &[])),
        ("seed-edge-unknown-version".into(), raw(3, 2, FrameType::Ping as u8, &[0])),
        ("seed-edge-unknown-type".into(), raw(2, 1, 0xee, &[])),
        ("seed-edge-truncated-body".into(), raw(10, 1, FrameType::GetChunk as u8, &[0; 8])),
        ("seed-edge-trailing-bytes".into(), raw(4, 1, FrameType::Ping as u8, &[1, 2])),
        ("seed-edge-has-over-limit".into(), raw(2 + over_has.len() as u32, 1, FrameType::Has as u8, &over_has)),
        ("seed-edge-huge-list-prefix".into(), raw(8, 1, FrameType::Peers as u8, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0])),
        ("seed-edge-chunk-payload-over-limit".into(), raw(39, 1, FrameType::PutChunk as u8, &chunk_over_limit)),
        ("seed-edge-bad-signature-length".into(), raw(70, 1, FrameType::Unpin as u8, &bad_signature)),
        ("seed-edge-full-has".into(), encode(&full_has)),
        ("seed-edge-full-head".into(), encode(&full_head)),
    ]);
    seeds
}

#[test]
fn the_committed_seeds_are_the_ones_made_here() {
    let dir = corpus_root().join("decode_frame");
    let seeds = seeds();
    if std::env::var_os("P2PFS_WRITE_SEEDS").is_some() {
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &seeds {
        let committed = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("seed {name} is not committed: {e}"));
        assert!(committed == *bytes, "seed {name} differs from the one made here: rewrite the seeds (see above)");
    }
    let committed: HashSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("seed-"))
        .collect();
    let made: HashSet<String> = seeds.into_keys().collect();
    assert_eq!(committed, made, "no stale seed is committed");
}

#[test]
fn every_corpus_file_passes_the_decoder_self_check() {
    let files = corpus_files();
    assert!(files.len() > seeds().len(), "the corpus is committed ({} files found)", files.len());
    for file in files {
        let input = fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| check_decoder(&input));
        assert!(outcome.is_ok(), "{} fails the decoder self-check", file.display());
    }
}

#[test]
fn the_seeds_hold_every_frame_type_and_every_decode_error() {
    let mut types = HashSet::new();
    let mut errors = HashSet::new();
    for bytes in seeds().values() {
        let mut rest = &bytes[..];
        loop {
            match decode(rest) {
                Ok(Some((frame, used))) => {
                    types.insert(frame.frame_type());
                    rest = &rest[used..];
                }
                Ok(None) => break,
                Err(e) => {
                    errors.insert(std::mem::discriminant(&e));
                    break;
                }
            }
        }
    }
    assert_eq!(types.len(), FrameType::ALL.len(), "a valid encoding of every frame type");
    let every_error = [
        DecodeError::Oversize(0),
        DecodeError::TooShort(0),
        DecodeError::UnknownVersion(0),
        DecodeError::UnknownType(0),
        DecodeError::Truncated(FrameType::Ping),
        DecodeError::Malformed(FrameType::Ping),
        DecodeError::TrailingBytes { frame: FrameType::Ping, count: 0 },
        DecodeError::LimitExceeded { frame: FrameType::Ping, limit: 0 },
    ];
    for error in every_error {
        assert!(errors.contains(&std::mem::discriminant(&error)), "no seed produces {error:?}");
    }
}
