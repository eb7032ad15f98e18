//! Arbitrary bytes into the frame decoder, whole and split: it must never
//! panic, never disagree with itself, and every frame it returns must
//! re-encode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    p2pfs::wire::check_decoder(input);
});
