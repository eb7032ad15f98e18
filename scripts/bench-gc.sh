#!/usr/bin/env bash
# GC benchmark: scripts/bench-gc.sh [RECORDS]  (default 1000000)
#
# Builds a store of RECORDS chunk records on tmpfs (half kept by pins, half
# not) through the library, collects it once in a process of its own, and
# prints the pass's time and that process's peak RSS (ru_maxrss). The store
# is removed after. A benchmark, not a test: it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --example gc_bench -- "${1:-1000000}"
