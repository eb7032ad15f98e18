//! Every committed fuzz corpus file goes through the decoder's self-check,
//! so an input that once crashed a fuzz target is a permanent test.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use p2pfs::wire::{self, DecodeError, FrameType};

fn corpus_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut files = Vec::new();
    for target in fs::read_dir(&root).expect("fuzz/corpus exists") {
        for file in fs::read_dir(target.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_the_decoder_self_check() {
    let files = corpus_files();
    assert!(files.len() >= 36, "the seed corpus is committed ({} files found)", files.len());
    for file in files {
        let input = fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| wire::check_decoder(&input));
        assert!(outcome.is_ok(), "{} fails the decoder self-check", file.display());
    }
}

#[test]
fn the_seeds_hold_every_frame_type_and_every_decode_error() {
    let mut types = HashSet::new();
    let mut errors = HashSet::new();
    for file in corpus_files().iter().filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("seed-")) {
        let mut rest = &fs::read(file).unwrap()[..];
        loop {
            match wire::decode(rest) {
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
