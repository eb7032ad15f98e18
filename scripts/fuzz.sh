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
# limits allow at most a 128 KiB frame, so a bigger one is a bug.
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
    -max_total_time="$seconds" -malloc_limit_mb=16 -print_final_stats=1
