//! Frame encoding and decoding: a `Has` of 1,000 ids (the push pipeline's
//! batched question) and a `PutChunk` header (sent once per chunk).
//! `cargo bench --bench wire`; throughput is in frames per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2pfs::id::ChunkId;
use p2pfs::wire::{Bounded, Frame, Has, PutChunk, decode};

fn has_1000() -> Frame {
    let ids = (0..1000u32).map(|i| ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
    Frame::Has(Has { ids: Bounded::new(ids).expect("1000 ≤ MAX_HAS_IDS") })
}

fn bench_frame(c: &mut Criterion, name: &str, frame: Frame) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(64 * 1024);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&frame).encode(&mut out).unwrap();
        })
    });
    let mut bytes = Vec::new();
    frame.encode(&mut bytes).unwrap();
    group.bench_function("decode", |b| b.iter(|| black_box(decode(black_box(&bytes)).unwrap())));
    group.finish();
}

fn frames(c: &mut Criterion) {
    bench_frame(c, "has_1000_ids", has_1000());
    bench_frame(c, "put_chunk_header", Frame::PutChunk(PutChunk { id: ChunkId([7; 32]), len: 1 << 20 }));
}

criterion_group!(benches, frames);
criterion_main!(benches);
