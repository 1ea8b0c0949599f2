#!/usr/bin/env bash
# The full check, as CI runs it (.ci/run): lint, build, start the lab (NFS-Ganesha on
# loopback), run every test against it, stop the lab.
#
#   scripts/test.sh                  # everything
#   scripts/test.sh kernel_client    # extra arguments go to `cargo test` before `--` (a filter)
#   SKIP_LINT=1 scripts/test.sh      # skip cargo fmt --check / clippy (local iteration)
#   GRIDVFS_KEEP_LAB=1 scripts/test.sh   # leave the lab running afterwards
#
# Test binaries find the lab through the GRIDVFS_LAB_* variables from `tests/lab/lab.sh up`
# (GRIDVFS_LAB_DIR, _NFS, _MOUNT, _EXPORT, _EXPORT_DIR) and the kernel-client VM script
# through GRIDVFS_LAB_VM. A lab that was already running is reused and left running.
# Exit status: the first failing stage's, i.e. the tests' when lint and build pass.
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
    if [[ $LAB_STARTED == 1 ]]; then
        if [[ ${GRIDVFS_KEEP_LAB:-0} == 1 ]]; then
            echo "lab left running (GRIDVFS_KEEP_LAB=1): tests/lab/lab.sh down to stop it"
        else
            tests/lab/lab.sh down
        fi
    fi
    print_stages
    echo "  total $(since "$T_START")s: $([[ $rc == 0 ]] && echo PASSED || echo "FAILED (rc=$rc)")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stage "install-deps" scripts/install-deps.sh
if [[ ${SKIP_LINT:-0} != 1 ]]; then
    stage "cargo fmt --check" cargo fmt --check
    stage "cargo clippy --all-targets -D warnings" cargo clippy --all-targets -- -D warnings
fi
stage "cargo build --release" cargo build --release

stage "lab up (ganesha)" start_lab
# shellcheck disable=SC1091
. "$GRIDVFS_LAB_DIR/env"
export GRIDVFS_LAB_VM=$REPO/tests/lab/kernel-client-vm.sh

stage "cargo test --release" cargo test --release "$@" -- --test-threads=2
if (($# == 0)); then
    # The clone suite on small images: fails if any clone's bytes are wrong.
    stage "clone suite smoke (quick profile)" env GRIDVFS_SUITE_PROFILE=quick \
        cargo test --release --bench suite
fi
