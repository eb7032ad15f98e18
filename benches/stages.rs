//! Throughput of each push/pull stage on one core: chunking, hashing,
//! sealing and opening. `cargo bench --bench stages`.
//!
//! Sealing is measured with ring (what p2pfs uses) and with RustCrypto's
//! portable ChaCha20-Poly1305 (the alternative), on the same input; chunk
//! format v2 (compression when it pays, padding) on random data, where the
//! sample says "store raw", beside v1 (no compression), which is its baseline,
//! and on text, where it compresses.

use std::hint::black_box;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use p2pfs::chunk::{ChunkerConfig, CutPoints, GearTable};
use p2pfs::crypto::{ChunkKey, OwnerKeys, open_chunk, seal_chunk};
use p2pfs::sealing::Sealing;

const CHUNK: usize = 1 << 20;

fn random(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(b"bench").finalize_xof().fill(&mut out);
    out
}

fn chunking(c: &mut Criterion) {
    let data = random(64 << 20);
    let cuts = CutPoints::new(ChunkerConfig::default(), GearTable::from_seed(&[7; 32])).unwrap();
    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    group.bench_function("fastcdc2020_keyed_64MiB", |b| b.iter(|| black_box(cuts.lengths(black_box(&data)))));
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let data = random(CHUNK);
    let owner = OwnerKeys::derive(&[1; 32]);
    let mut group = c.benchmark_group("hashing");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("blake3_1MiB", |b| b.iter(|| black_box(blake3::hash(black_box(&data)))));
    group.bench_function("blake3_keyed_chunk_key_1MiB", |b| b.iter(|| black_box(owner.chunk_key(black_box(&data)))));
    group.finish();
}

fn sealing(c: &mut Criterion) {
    let data = random(CHUNK);
    let key = ChunkKey([3; 32]);
    let mut group = c.benchmark_group("sealing");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    let mut buf = Vec::with_capacity(CHUNK + 16);
    group.bench_function(BenchmarkId::new("seal_chunk_ring", "1MiB"), |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&data);
            black_box(seal_chunk(&key, &mut buf))
        })
    });
    let portable = ChaCha20Poly1305::new(&key.0.into());
    group.bench_function(BenchmarkId::new("chacha20poly1305_rustcrypto", "1MiB"), |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&data);
            let tag = portable.encrypt_inout_detached(&[0u8; 12].into(), b"", buf.as_mut_slice().into()).unwrap();
            black_box(tag)
        })
    });
    let mut sealed = data.clone();
    seal_chunk(&key, &mut sealed);
    group.bench_function(BenchmarkId::new("open_chunk_ring", "1MiB"), |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&sealed);
            open_chunk(&key, &mut buf).unwrap();
        })
    });
    group.finish();
}

fn compressing(c: &mut Criterion) {
    let noise = random(CHUNK);
    let words: Vec<u8> =
        random(CHUNK / 4).iter().flat_map(|b| format!("word{} ", b % 97).into_bytes()).take(CHUNK).collect();
    let key = ChunkKey([5; 32]);
    let mut group = c.benchmark_group("chunk_format");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    let mut buf = Vec::with_capacity(CHUNK + CHUNK / 16);
    let cases = [
        ("v1_random", Sealing::V1, &noise),
        ("v2_random", Sealing::current(3), &noise),
        ("v2_text_zstd3", Sealing::current(3), &words),
    ];
    for (name, sealing, data) in cases {
        group.bench_function(BenchmarkId::new(name, "1MiB"), |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(data);
                black_box(sealing.seal(&key, &mut buf))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, chunking, hashing, sealing, compressing);
criterion_main!(benches);
