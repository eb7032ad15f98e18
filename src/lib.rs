//! p2pfs: a peer-to-peer, end-to-end encrypted, deduplicating, versioned file store.
//!
//! # Layout
//!
//! Pure modules (no sockets, no files but through `Read`/`Write`, no clocks):
//! - [`id`]: 32-byte addresses ([`id::ChunkId`], [`id::ManifestId`], …), hex and prefixes.
//! - [`chunk`]: streaming FastCDC with an owner-keyed gear table.
//! - [`crypto`]: key derivation, convergent chunk sealing, manifest envelope, signatures.
//! - [`manifest`]: the manifest of one version and the signed per-owner version log.
//!
//! I/O modules:
//! - [`store`]: chunk files and the metadata database of one node, durable writes, GC.
//! - [`home`]: the `$P2PFS_HOME` directory: keys, configuration, the lock, the store.
//! - [`transfer`]: the push and pull pipelines (chunk → seal → store; read → verify → open → write).
//! - [`cli`]: command-line arguments, output and progress.
//!
//! `ARCHITECTURE.md` has the bird's-eye view and the invariants; `docs/FORMAT.md`
//! the byte layouts.

#![warn(missing_docs)]

pub mod chunk;
pub mod cli;
pub mod crypto;
pub mod home;
pub mod id;
pub mod manifest;
pub mod store;
pub mod transfer;
