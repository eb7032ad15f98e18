//! Writes the seed corpus of the `decode_frame` fuzz target: one valid
//! encoding of every frame type, and edge cases for each decoder error.
//!
//! `cargo run --example wire_seeds -- fuzz/corpus/decode_frame`

use std::path::PathBuf;

use p2pfs::id::ChunkId;
use p2pfs::wire::{self, Bounded, BoundedBytes, Frame, Has, PutHead};

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

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/decode_frame".into()));
    std::fs::create_dir_all(&dir)?;
    let mut seeds: Vec<(String, Vec<u8>)> = wire::sample_frames()
        .iter()
        .map(|frame| (format!("seed-frame-{:?}", frame.frame_type()).to_lowercase(), encode(frame)))
        .collect();

    let ping = encode(&wire::sample_frames().swap_remove(17));
    let full_has =
        Frame::Has(Has { ids: Bounded::new(vec![ChunkId([3; 32]); wire::MAX_HAS_IDS]).expect("at the limit") });
    let full_head =
        Frame::PutHead(PutHead { entry: BoundedBytes::new(vec![7; wire::MAX_LOG_ENTRY_LEN]).expect("at the limit") });
    let mut over_has = vec![0x81, 0x08];
    over_has.resize(2 + 1025 * 32, 0);
    let mut two = ping.clone();
    two.extend_from_slice(&encode(&wire::sample_frames().swap_remove(18)));
    seeds.extend([
        ("seed-edge-empty".into(), vec![]),
        ("seed-edge-partial-length".into(), vec![3, 0]),
        ("seed-edge-partial-body".into(), ping[..ping.len() - 1].to_vec()),
        ("seed-edge-two-frames".into(), two),
        ("seed-edge-oversize".into(), raw(wire::MAX_FRAME_LEN as u32 + 1, 1, 0x12, &[])),
        ("seed-edge-too-short".into(), raw(1, 1, 0, &[])),
        ("seed-edge-unknown-version".into(), raw(3, 2, 0x12, &[0])),
        ("seed-edge-unknown-type".into(), raw(2, 1, 0xee, &[])),
        ("seed-edge-truncated-body".into(), raw(10, 1, 0x07, &[0; 8])),
        ("seed-edge-trailing-bytes".into(), raw(4, 1, 0x12, &[1, 2])),
        ("seed-edge-has-over-limit".into(), raw(2 + over_has.len() as u32, 1, 0x03, &over_has)),
        ("seed-edge-huge-list-prefix".into(), raw(8, 1, 0x02, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0])),
        (
            "seed-edge-chunk-payload-over-limit".into(),
            raw(39, 1, 0x05, &{
                let mut body = vec![0u8; 32];
                body.extend_from_slice(&[0x91, 0x80, 0x80, 0x08, 0x00]);
                body
            }),
        ),
        (
            "seed-edge-bad-signature-length".into(),
            raw(70, 1, 0x0e, &{
                let mut body = vec![0u8; 64];
                body.extend_from_slice(&[3, 1, 2, 3]);
                body
            }),
        ),
        ("seed-edge-full-has".into(), encode(&full_has)),
        ("seed-edge-full-head".into(), encode(&full_head)),
    ]);
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}
