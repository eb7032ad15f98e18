//! An arbitrary frame → encode → decode gives the same frame back. Frames
//! that break a payload limit, or whose fields disagree (an erasure `Pin`
//! listing part of a stripe), must be refused by the encoder, and only those.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pfs::wire::{EncodeError, Frame, decode};

fuzz_target!(|frame: Frame| {
    let mut bytes = Vec::new();
    match frame.encode(&mut bytes) {
        Ok(()) => {
            assert_eq!(decode(&bytes), Ok(Some((frame, bytes.len()))));
        }
        Err(EncodeError::LimitExceeded { limit, .. }) => {
            assert!(frame.payload_len() > limit, "only an over-limit payload is refused");
            assert!(bytes.is_empty(), "a refused frame writes nothing");
        }
        Err(EncodeError::Inconsistent(_)) => {
            assert!(bytes.is_empty(), "a refused frame writes nothing");
        }
        Err(e) => panic!("a bounded frame failed to encode: {e}"),
    }
});
