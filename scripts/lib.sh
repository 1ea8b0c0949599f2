# shellcheck shell=bash
# Helpers shared by scripts/demo.sh, scripts/test.sh and scripts/bench.sh (sourced, not run).

# Repository root, whatever the caller's cwd.
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The Rust toolchain comes from rustup; non-login shells (CI) may not have ~/.cargo/bin in PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -f ${HOME:-/root}/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "${HOME:-/root}/.cargo/env"
fi

# Seconds since $1 (an $EPOCHREALTIME value), two decimals.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}'; }

# stage NAME CMD...: run CMD with a banner and record "NAME  N.Ns  ok" in STAGES.
# CMD runs with errexit still in force (it is not called in a || context, where bash would
# silently disable set -e inside functions), so a failure aborts the script; the EXIT trap
# then calls stage_failed to record which stage it was.
STAGES=()
STAGE_NAME=""
STAGE_T0=""
stage() {
    STAGE_NAME=$1 STAGE_T0=$EPOCHREALTIME
    shift
    echo "==> $STAGE_NAME"
    "$@"
    STAGES+=("$(printf '%-36s %7ss  ok' "$STAGE_NAME" "$(since "$STAGE_T0")")")
    STAGE_NAME=""
}
# stage_failed RC: record the interrupted stage (call from the EXIT trap).
stage_failed() {
    [[ -n $STAGE_NAME ]] || return 0
    STAGES+=("$(printf '%-36s %7ss  FAILED (rc=%s)' "$STAGE_NAME" "$(since "$STAGE_T0")" "$1")")
    STAGE_NAME=""
}
print_stages() {
    local s
    echo "---- stages ----"
    for s in "${STAGES[@]}"; do echo "  $s"; done
}

# stop_pid PID NAME: SIGTERM, wait up to 10 s, SIGKILL. Only for processes we started.
stop_pid() {
    local pid=$1 name=$2
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# start_lab: bring the lab (tests/lab/lab.sh) up, or reuse a running one, which is then
# left running. Sets LAB_STARTED=1 when this script started it (before `up`, so a
# half-started lab is stopped by the caller's EXIT trap too).
LAB_STARTED=0
start_lab() {
    if tests/lab/lab.sh status >/dev/null 2>&1; then
        echo "lab already running in $GRIDVFS_LAB_DIR; reusing it (it will be left running)"
    else
        LAB_STARTED=1
    fi
    tests/lab/lab.sh up
}
