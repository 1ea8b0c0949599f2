#!/usr/bin/env bash
# Boot the stock Debian kernel in qemu with the lab initramfs (mk-initramfs.sh): the guest's
# unmodified Linux NFSv3 client mounts 10.0.2.2:$EXPORT (qemu user networking maps 10.0.2.2 to
# the host's 127.0.0.1), writes/reads back/checksums, optionally reads a file or runs a script
# from the export, prints "LAB: ..." lines and powers off.
#
#   NFS_PORT=20490 MNT_PORT=20048 MB=16 tests/lab/kernel-client-vm.sh     # straight to ganesha
#   PORT=41234 tests/lab/kernel-client-vm.sh                               # proxy: NFS+MOUNT on one port
#   READFILE=dir/big.bin PORT=41234 MB=0 tests/lab/kernel-client-vm.sh     # read + compare an export file
#   SCRIPT=t/check.sh PORT=41234 MB=0 tests/lab/kernel-client-vm.sh       # run sh /mnt/t/check.sh in the guest
#
# Environment:
#   NFS_PORT, MNT_PORT   server ports on 127.0.0.1 (default: from GRIDVFS_LAB_NFS / GRIDVFS_LAB_MOUNT,
#                        else 20490 / 20048); PORT=P sets both (the gridvfs proxy serves both on one port)
#   EXPORT               path to mount (default $GRIDVFS_LAB_EXPORT or /export)
#   MB                   MiB to write + read back + checksum (default 16; 0 = skip)
#   WRITE_NAME, KEEP=1   name of that file in the export (default unique), keep it afterwards
#   READFILE             file (relative to the export) to read and sha256 in the guest
#   READFILE_SHA256      expected sha256 of READFILE; default: computed from
#                        $GRIDVFS_LAB_EXPORT_DIR/$READFILE when that file exists on this host
#   SCRIPT               file (relative to the export) run with sh in the guest, cwd /mnt; rc != 0 fails
#   EXTRA_OPTS           extra mount options, comma separated (e.g. rsize=65536,wsize=65536)
#   RAW_OPTS             the whole mount option string instead of the defaults
#   TIMEOUT (300 s), MEM (512 MiB), ACCEL (auto|tcg|kvm), VERBOSE=1 (whole console),
#   OUT (default $GRIDVFS_LAB_DIR/vm or /tmp/gridvfs-lab/vm), REBUILD=1 (force a new initramfs)
# Exit status: 0 iff the guest printed "LAB: RESULT OK" (mounted, every requested check passed,
# script rc 0, unmounted). The console log path is printed at the end.
#
# Values are passed on the kernel command line, so they must not contain spaces.
# Guest /tmp is RAM: keep MB well below MEM. Under TCG guest dd/sha256 are CPU-bound
# (~10 MiB/s write, ~28 MiB/s read); the "LAB: stats|" lines give per-op RPC times.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

OUT=${OUT:-${GRIDVFS_LAB_DIR:-/tmp/gridvfs-lab}/vm}
lab_nfs=${GRIDVFS_LAB_NFS:-127.0.0.1:20490}
lab_mnt=${GRIDVFS_LAB_MOUNT:-127.0.0.1:20048}
NFS_PORT=${NFS_PORT:-${PORT:-${lab_nfs##*:}}}
MNT_PORT=${MNT_PORT:-${PORT:-${lab_mnt##*:}}}
EXPORT=${EXPORT:-${GRIDVFS_LAB_EXPORT:-/export}}
MB=${MB:-16}
READFILE=${READFILE:-}
READFILE_SHA256=${READFILE_SHA256:-}
SCRIPT=${SCRIPT:-}
EXTRA_OPTS=${EXTRA_OPTS:-}
RAW_OPTS=${RAW_OPTS:-}
WRITE_NAME=${WRITE_NAME:-}
KEEP=${KEEP:-0}
MEM=${MEM:-512}
TIMEOUT=${TIMEOUT:-300}
ACCEL=${ACCEL:-auto}
VERBOSE=${VERBOSE:-0}

die() { echo "HOST: kernel-client-vm: $*" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (scripts/install-deps.sh)"
for v in "$EXPORT" "$READFILE" "$SCRIPT" "$EXTRA_OPTS" "$RAW_OPTS" "$WRITE_NAME"; do
    [[ $v != *[[:space:]]* ]] || die "'$v' contains whitespace; values go on the kernel command line"
done
[[ $NFS_PORT =~ ^[0-9]+$ && $MNT_PORT =~ ^[0-9]+$ ]] || die "bad ports NFS_PORT=$NFS_PORT MNT_PORT=$MNT_PORT"

# (Re)build the image if missing or older than its builder. Several VMs may start at once
# (cargo test threads), so build under a lock; mk-initramfs.sh renames atomically.
mkdir -p "$OUT"
(
    flock 9
    if [[ ! -f $OUT/initrd.cpio.gz || ! -f $OUT/vmlinuz || $HERE/mk-initramfs.sh -nt $OUT/initrd.cpio.gz || ${REBUILD:-0} == 1 ]]; then
        OUT=$OUT "$HERE/mk-initramfs.sh"
    fi
) 9>"$OUT/.build.lock"

if [[ $ACCEL == auto ]]; then
    # KVM only if it is real VT-x/AMD-V. On the project's dev machines /dev/kvm is PVM
    # (module kvm_pvm) which only runs PVM-built guest kernels: the stock Debian kernel
    # aborts ("failed to set MSR 0x10a") or hangs after "Probing EDD". So TCG there.
    if [[ -r /dev/kvm && -w /dev/kvm && ! -d /sys/module/kvm_pvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        ACCEL=kvm
    else
        ACCEL=tcg
    fi
fi
case $ACCEL in
kvm) accel=(-enable-kvm -cpu host) ;;
tcg) accel=(-accel tcg -cpu max) ;;
*) die "ACCEL must be auto, tcg or kvm" ;;
esac

# Expected checksum of READFILE straight from the server's disk, when we can see it.
if [[ -n $READFILE && -z $READFILE_SHA256 && -n ${GRIDVFS_LAB_EXPORT_DIR:-} && -f $GRIDVFS_LAB_EXPORT_DIR/$READFILE ]]; then
    READFILE_SHA256=$(sha256sum < "$GRIDVFS_LAB_EXPORT_DIR/$READFILE" | cut -d' ' -f1)
fi

append="console=ttyS0 quiet panic=-1 lab.nfsport=$NFS_PORT lab.mntport=$MNT_PORT lab.export=$EXPORT lab.mb=$MB"
[[ -n $READFILE ]] && append+=" lab.readfile=$READFILE"
[[ -n $READFILE_SHA256 ]] && append+=" lab.readsha=$READFILE_SHA256"
[[ -n $SCRIPT ]] && append+=" lab.script=$SCRIPT"
[[ -n $EXTRA_OPTS ]] && append+=" lab.opts=$EXTRA_OPTS"
[[ -n $RAW_OPTS ]] && append+=" lab.rawopts=$RAW_OPTS"
[[ -n $WRITE_NAME ]] && append+=" lab.name=$WRITE_NAME"
[[ $KEEP == 1 ]] && append+=" lab.keep=1"

# One log per run: runs may be concurrent. Keep the newest 50.
log=${LOG:-$OUT/console-$(date +%Y%m%d-%H%M%S)-$$.log}
find "$OUT" -maxdepth 1 -name 'console-*.log' -printf '%T@ %p\n' | sort -rn | tail -n +50 | cut -d' ' -f2- |
    xargs -r rm -f
echo "HOST: booting kernel $(cat "$OUT/kver" 2>/dev/null || echo '?') accel=$ACCEL -> 10.0.2.2:$EXPORT nfsport=$NFS_PORT mountport=$MNT_PORT mb=$MB${READFILE:+ readfile=$READFILE}${SCRIPT:+ script=$SCRIPT}"

# Create the log before qemu starts: the streamer below opens it at once, and a `tail -f`
# that races the background job's redirect finds no file and prints nothing at all.
: > "$log"
t0=$EPOCHREALTIME
# -nic user (slirp): guest 10.0.2.15, host 127.0.0.1 reachable as 10.0.2.2; the guest talks to
# nothing else. (restrict=on would also cut 10.0.2.2 off, so it cannot be used.)
# timeout -k: qemu gets SIGTERM at TIMEOUT, SIGKILL 10 s later; it is the only thing we start.
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "${accel[@]}" -m "$MEM" -smp 1 -nographic -no-reboot \
    -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.cpio.gz" -append "$append" \
    -nic user,model=virtio-net-pci </dev/null >>"$log" 2>&1 &
qpid=$!
# If we are interrupted, take the VM down with us (by PID: timeout forwards TERM to qemu).
# Wait for it too, so it is reaped here rather than left as a zombie (which would keep the
# console streamer's tail --pid alive).
trap 'kill -TERM "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null; true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stream the console while qemu runs (serial lines end in \r\n). The streamer runs in the
# background so that `wait` below stays interruptible: bash runs traps only between
# foreground commands. tail exits by itself (--pid) once qemu is gone.
if [[ $VERBOSE == 1 ]]; then
    tail -n +1 -s 0.2 --pid="$qpid" -f "$log" | sed -u 's/\r$//' &
else
    # Drop terminal escapes (SeaBIOS clears the screen) and BIOS text before qemu messages.
    { tail -n +1 -s 0.2 --pid="$qpid" -f "$log" |
        sed -u -e 's/\r$//' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/^.*\(qemu-system-x86_64: \)/\1/' |
        grep --line-buffered -E '^LAB:|Kernel panic|nfs: |NFS: |qemu-system|Could not|error' || true; } &
fi
spid=$!
rc=0
wait "$qpid" || rc=$?
wait "$spid" || true
trap - EXIT
wall=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')

if tr -d '\r' < "$log" | grep -qx 'LAB: RESULT OK'; then
    echo "HOST: RESULT OK (accel=$ACCEL, qemu wall ${wall}s, console $log)"
    exit 0
fi
if [[ $rc == 124 || $rc == 137 ]]; then
    echo "HOST: qemu killed after TIMEOUT=${TIMEOUT}s (hung NFS mount? 'hard' mounts retry forever)" >&2
fi
if ! grep -q '^LAB: RESULT' "$log"; then
    echo "HOST: the guest printed no RESULT line; last console lines:" >&2
    tail -n 25 "$log" | tr -d '\r' | sed 's/^/HOST: | /' >&2
fi
echo "HOST: RESULT FAIL (qemu rc=$rc, accel=$ACCEL, wall ${wall}s, console $log)" >&2
exit 1
