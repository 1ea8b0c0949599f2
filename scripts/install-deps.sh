#!/usr/bin/env bash
# Install what the gridvfs test bed needs on Debian 12, only what is missing; one line of
# output when everything is already there.
#
#   scripts/install-deps.sh          (as root, or with sudo available)
#
# apt packages:
#   nfs-ganesha nfs-ganesha-vfs   the real NFSv3 server behind the proxy (pulls rpcbind)
#   libnfs-utils                  nfs-ls / nfs-cp / nfs-cat: userspace NFSv3 clients
#   busybox-static cpio           the kernel-client VM's initramfs
#   rsync                         the full-copy baseline of the clone benchmark suite
#   qemu-system-x86 linux-image-amd64   the VM running the unmodified Linux NFS client
#   openssh-server                tunnel tests
#   python3-fusepy                tests/lab/faultyfs.py: a cache disk whose fsync fails (pulls libfuse2)
# plus a Rust toolchain (cargo, rustfmt, clippy), which is expected to be preinstalled (rustup).
set -euo pipefail
t0=$EPOCHREALTIME
export DEBIAN_FRONTEND=noninteractive

PKGS=(nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils busybox-static cpio rsync python3-fusepy)
# Recommends of these are large (qemu: GUI/audio/firmware; kernel: firmware; sshd: xauth...).
PKGS_NORECOMMENDS=(qemu-system-x86 linux-image-amd64 openssh-server)

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

missing=() missing_nr=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
for p in "${PKGS_NORECOMMENDS[@]}"; do installed "$p" || missing_nr+=("$p"); done
# Package says installed but the file is gone (e.g. manual removal): reinstall.
command -v ganesha.nfsd >/dev/null || [[ " ${missing[*]} " == *" nfs-ganesha "* ]] || missing+=(nfs-ganesha)
command -v qemu-system-x86_64 >/dev/null || [[ " ${missing_nr[*]} " == *" qemu-system-x86 "* ]] || missing_nr+=(qemu-system-x86)
compgen -G '/boot/vmlinuz-*' >/dev/null || [[ " ${missing_nr[*]} " == *" linux-image-amd64 "* ]] || missing_nr+=(linux-image-amd64)

all_missing=$(printf '%s ' "${missing[@]}" "${missing_nr[@]}")
all_missing=${all_missing% }
if [[ -n $all_missing ]]; then
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: $all_missing" >&2; exit 1; }
        SUDO=(sudo -E)
    fi
    command -v apt-get >/dev/null || { echo "install-deps: no apt-get; this test bed targets Debian 12" >&2; exit 1; }
    echo "install-deps: installing $all_missing"

    # Installing must not start system services: nfs-ganesha.service would listen on 2049
    # and on MOUNT port 20048 (the lab's port) and rpcbind/sshd would come up too. Debian's
    # invoke-rc.d / deb-systemd-invoke honour policy-rc.d; add a temporary one if none exists.
    policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from gridvfs scripts/install-deps.sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
        trap '[[ $policy_added == 1 ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi

    APT=("${SUDO[@]}" apt-get -q -y -o DPkg::Lock::Timeout=300)
    log=/tmp/gridvfs-install-deps.log
    apt_install() {
        "${APT[@]}" install "$@" >>"$log" 2>&1 ||
            { tail -n 30 "$log" >&2; echo "install-deps: 'apt-get install $*' failed (full log: $log)" >&2; exit 1; }
    }
    : > "$log"
    "${APT[@]}" update >>"$log" 2>&1 || { tail -n 20 "$log" >&2; echo "install-deps: apt-get update failed" >&2; exit 1; }
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    ((${#missing_nr[@]} == 0)) || apt_install --no-install-recommends "${missing_nr[@]}"
fi

# Rust: preinstalled via rustup; a non-login shell may lack ~/.cargo/bin in PATH.
if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: ERROR: cargo not found (PATH=$PATH). Install the Rust toolchain with rustup" >&2
    echo "install-deps:        (https://rustup.rs; then 'rustup component add rustfmt clippy') or add ~/.cargo/bin to PATH." >&2
    exit 1
fi
for comp in fmt clippy; do
    cargo "$comp" --version >/dev/null 2>&1 ||
        { echo "install-deps: ERROR: 'cargo $comp' unavailable; run: rustup component add ${comp/fmt/rustfmt}" >&2; exit 1; }
done

dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
if [[ -n $all_missing ]]; then
    echo "install-deps: installed $all_missing in ${dt}s"
else
    echo "install-deps: all present (${dt}s)"
fi
