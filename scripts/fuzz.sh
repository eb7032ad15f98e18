#!/usr/bin/env bash
# Runs one fuzz target: scripts/fuzz.sh TARGET [SECONDS]  (default 60)
#
# cargo-fuzz builds with AddressSanitizer, which needs a nightly compiler's
# -Z flag. RUSTC_BOOTSTRAP=1 lets this stable toolchain accept it, for this
# one command only (the main build never sees it). `--sanitizer none` would
# also work on stable, without ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS]}
seconds=${2:-60}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# -malloc_limit_mb: no single allocation may exceed 16 MiB. The decoder's
# limits allow at most a 128 KiB frame, so a bigger one is a bug; the store
# node_requests drives holds chunks of at most 72 bytes, and its database's
# largest allocations are far below the limit too.
#
# node_requests reads a sequence of steps (requests, collections, restarts):
# a few steps find little, and libFuzzer's default grows inputs from a few
# bytes slowly, so there inputs may be 1 KiB (about the 64 steps a run
# takes) from the start.
case $target in
    node_requests) shape=(-max_len=1024 -len_control=0) ;;
    *) shape=() ;;
esac
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
    -max_total_time="$seconds" -malloc_limit_mb=16 -print_final_stats=1 "${shape[@]}"
