#!/usr/bin/env bash
# Benchmarks against the local stack (not tests: nothing here asserts on timings).
# Builds the release binary, starts the stack, runs `cargo bench --bench pruner`
# and leaves a table on stdout and JSON under target/bench/. Arguments go to the
# bench, e.g.:
#   scripts/bench.sh                      # all scenarios at full size
#   scripts/bench.sh --scale-runs 1000    # a smaller scale sweep
#   scripts/bench.sh --smoke              # tiny sizes, checks the harness
#   scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[bench] %s\n' "$*" >&2; }

scripts/stack.sh up
eval "$(scripts/stack.sh env)"

log "cargo build --release --bin model-pruner"
cargo build --release --bin model-pruner
cargo bench --no-run --bench pruner

read -r load1 load5 load15 _ </proc/loadavg
log "load average $load1 $load5 $load15 on $(nproc) cores (figures are noisy when it is high)"
log "cargo bench --bench pruner -- $*"
cargo bench --bench pruner -- "$@"
