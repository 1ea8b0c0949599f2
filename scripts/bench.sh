#!/usr/bin/env bash
# Run benchmarks against the lab (NFS-Ganesha on loopback).
#
#   scripts/bench.sh                  # every bench target
#   scripts/bench.sh passthrough      # one or more bench targets by name
#   scripts/bench.sh wan_relay        # WAN emulator self-check (needs no lab, harmless with it)
#
# Starts the lab unless it is already running (then it is reused and left running), exports
# the GRIDVFS_LAB_* variables the benches read, runs `cargo bench --bench NAME` for each NAME,
# and stops the lab it started. Bench-specific knobs (GRIDVFS_BENCH_MIB, ...) pass through.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

export GRIDVFS_LAB_DIR=${GRIDVFS_LAB_DIR:-/tmp/gridvfs-lab}
T_START=$EPOCHREALTIME

cleanup() {
    local rc=$?
    set +e
    stage_failed "$rc"
    [[ $LAB_STARTED == 1 ]] && tests/lab/lab.sh down
    print_stages
    echo "  total $(since "$T_START")s: $([[ $rc == 0 ]] && echo OK || echo "FAILED (rc=$rc)")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "install-deps" scripts/install-deps.sh
stage "lab up (ganesha)" start_lab
# shellcheck disable=SC1091
. "$GRIDVFS_LAB_DIR/env"

if (($# == 0)); then
    stage "cargo bench (all)" cargo bench
else
    for b in "$@"; do
        stage "cargo bench --bench $b" cargo bench --bench "$b"
    done
fi
