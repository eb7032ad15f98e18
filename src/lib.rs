//! p2pfs: a peer-to-peer, end-to-end encrypted, deduplicating, versioned file store.
//!
//! # Layout
//!
//! Pure modules (no sockets, no files but through `Read`/`Write`, no clocks):
//! - [`id`]: 32-byte addresses ([`id::ChunkId`], [`id::ManifestId`], …), hex and prefixes.
//! - [`chunk`]: streaming FastCDC with an owner-keyed gear table.
//! - [`crypto`]: key derivation, convergent chunk sealing, manifest envelope, signatures.
//! - [`erasure`]: Reed-Solomon shards of a sealed chunk (K data + M parity), any K rebuild it.
//! - [`sealing`]: chunk formats: compression, padding, and the seal around them.
//! - [`manifest`]: the manifest of one version and the signed per-owner version log.
//! - [`wire`]: protocol frames ↔ bytes, with hard limits (docs/PROTOCOL.md).
//! - [`token`]: join tokens and share tickets, with a version and a checksum.
//!
//! I/O modules:
//! - [`store`]: chunk files and the metadata database of one node, durable writes, GC.
//! - [`home`]: the `$P2PFS_HOME` directory: keys, configuration, the lock, the store,
//!   the peer table.
//! - [`net`]: the QUIC endpoint, pinned mutual TLS, the membership handshake, framed requests.
//! - [`node`]: `p2pfs serve`: answers every request of the protocol from a store.
//! - [`transfer`]: the push and pull pipelines (chunk → seal → store or send to peers;
//!   fetch or read → verify → open → write), and rendezvous placement.
//! - [`cli`]: command-line arguments, output and progress.
//!
//! `ARCHITECTURE.md` has the bird's-eye view and the invariants; `docs/FORMAT.md`
//! the byte layouts.
//!
//! # Example: one chunk through the pure core
//!
//! ```
//! use p2pfs::chunk::{ChunkerConfig, CutPoints, GearTable};
//! use p2pfs::crypto::{open_chunk, seal_chunk, OwnerKeys};
//! use p2pfs::id::ChunkId;
//!
//! let owner = OwnerKeys::derive(&[7; 32]); // normally keys/owner.key
//! let cuts = CutPoints::new(ChunkerConfig::default(), GearTable::from_seed(owner.chunker_seed()))?;
//! let file = vec![42u8; 100_000];
//! let first = &file[..cuts.next_len(&file)];
//!
//! let key = owner.chunk_key(first); // convergent: same bytes, same key
//! let mut buf = first.to_vec();
//! let id = seal_chunk(&key, &mut buf); // buf now holds the ciphertext
//! assert_eq!(ChunkId::of(&buf), id); // anyone can verify a chunk by its id
//! open_chunk(&key, &mut buf)?;
//! assert_eq!(buf, first);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod chunk;
pub mod cli;
pub mod crypto;
pub mod erasure;
pub mod home;
pub mod id;
pub mod manifest;
pub mod net;
pub mod node;
pub mod sealing;
pub mod store;
pub mod token;
pub mod transfer;
pub mod wire;
