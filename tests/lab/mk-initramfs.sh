#!/usr/bin/env bash
# Build the initramfs for the kernel-client VM: busybox-static + the Debian kernel's own NFS
# client modules + an /init that mounts an NFSv3 export from the host with the unmodified
# Linux NFS client, exercises it, prints "LAB: ..." lines on the serial console and powers off.
#
#   tests/lab/mk-initramfs.sh            -> $OUT/initrd.cpio.gz, $OUT/vmlinuz, $OUT/kver
#   OUT=/tmp/x KVER=6.1.0-56-amd64 tests/lab/mk-initramfs.sh
# Needs: linux-image-amd64, busybox-static, cpio (scripts/install-deps.sh). ~0.3 s, ~2 MB.
# Normally called by kernel-client-vm.sh, which rebuilds when this file is newer than the image.
#
# /init reads its parameters from the kernel command line (no spaces inside values):
#   lab.nfsport=N lab.mntport=M     server ports on the host (qemu user net: host 127.0.0.1 = 10.0.2.2)
#   lab.export=/export              path to mount
#   lab.mb=16                       write N MiB of random data (dd conv=fsync), drop caches,
#                                   read it back, compare sha256; 0 = skip
#   lab.name=FILE                   name of that file in the export (default vm-write-RANDOM.bin);
#                                   removed afterwards unless lab.keep=1
#   lab.readfile=PATH               read an existing file (relative to the export), print sha256;
#   lab.readsha=HEX                 ... and compare it with HEX
#   lab.script=PATH                 run "sh /mnt/PATH" with cwd /mnt, output prefixed "LAB: script| ",
#                                   report "LAB: script rc=N" (rc != 0 fails the run)
#   lab.opts=a,b                    extra mount options appended to the defaults
#   lab.rawopts=...                 replace the whole mount option string
# The last line the guest prints before powering off is "LAB: RESULT OK" or
# "LAB: RESULT FAIL <reasons>".
set -euo pipefail

OUT=${OUT:-/tmp/gridvfs-lab/vm}
BUSYBOX=${BUSYBOX:-/bin/busybox}
MODS=${MODS:-"virtio_pci virtio_net nfsv3"}

# Newest installed kernel that has both its modules and a bootable image.
if [[ -z ${KVER:-} ]]; then
    while read -r d; do
        [[ -f /boot/vmlinuz-$d && -f /lib/modules/$d/modules.dep ]] && KVER=$d
    done < <(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V)
fi
[[ -n ${KVER:-} && -f /boot/vmlinuz-$KVER ]] ||
    { echo "mk-initramfs: no kernel image with modules found (apt-get install --no-install-recommends linux-image-amd64)" >&2; exit 1; }
[[ -x $BUSYBOX ]] || { echo "mk-initramfs: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
# The initramfs has no libc: busybox must be the static build (ldd is in libc-bin, always present).
{ ldd "$BUSYBOX" 2>&1 || true; } | grep -qE 'not a dynamic executable|statically linked' ||
    { echo "mk-initramfs: $BUSYBOX is dynamically linked (apt-get install busybox-static)" >&2; exit 1; }
command -v cpio >/dev/null || { echo "mk-initramfs: cpio missing (apt-get install cpio)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,tmp,lib/modules}
cp "$BUSYBOX" "$root/bin/busybox"

# --- resolve module dependencies from modules.dep (depth first: dependencies load first) ---
MD=/lib/modules/$KVER
declare -A seen=()
order=()
path_of() {
    awk -F: -v m="$1" '{n=$1; sub(/.*\//,"",n); sub(/\.ko(\.(xz|zst|gz))?$/,"",n); gsub(/-/,"_",n); if(n==m){print $1; exit}}' "$MD/modules.dep"
}
visit() {
    local name=${1//-/_} p deps d
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    p=$(path_of "$name")
    if [[ -z $p ]]; then
        # Built into the kernel: nothing to load.
        grep -qE "/${1}\.ko|/${name}\.ko" "$MD/modules.builtin" && return 0
        echo "mk-initramfs: module $name not found for $KVER" >&2; exit 1
    fi
    deps=$(grep -E "^$p:" "$MD/modules.dep" | cut -d: -f2)
    for d in $deps; do d=${d##*/}; d=${d%%.ko*}; visit "$d"; done
    order+=("$p")
}
for m in $MODS; do visit "$m"; done

# Debian 6.1 ships plain .ko; newer kernels compress them and busybox insmod cannot
# decompress, so unpack here.
: > "$root/lib/modules/load-order"
for p in "${order[@]}"; do
    b=${p##*/}
    case $b in
    *.ko.xz) xz -dc "$MD/$p" > "$root/lib/modules/${b%.xz}"; b=${b%.xz} ;;
    *.ko.zst) zstd -qdc "$MD/$p" > "$root/lib/modules/${b%.zst}"; b=${b%.zst} ;;
    *.ko.gz) gzip -dc "$MD/$p" > "$root/lib/modules/${b%.gz}"; b=${b%.gz} ;;
    *) cp "$MD/$p" "$root/lib/modules/$b" ;;
    esac
    echo "$b" >> "$root/lib/modules/load-order"
done

cat > "$root/init" <<'EOF'
#!/bin/busybox sh
# gridvfs lab guest: mount NFSv3 from the host, exercise it, report, power off.
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
up() { cut -d' ' -f1 /proc/uptime; }
dt() { echo "$1 $2" | awk '{printf "%.2f", $1-$2}'; }
FAIL=""
fail() { FAIL="$FAIL $1"; echo "LAB: FAIL $1"; }
finish() {
    if [ -z "$FAIL" ]; then echo "LAB: RESULT OK"; else echo "LAB: RESULT FAIL$FAIL"; fi
    echo "LAB: done at uptime $(up)s"
    sync
    poweroff -f
}
echo "LAB: init started at uptime $(up)s, kernel $(uname -r)"
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m || echo "LAB: insmod $m failed"; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

NFSPORT=$(arg lab.nfsport); MNTPORT=$(arg lab.mntport); EXP=$(arg lab.export); MB=$(arg lab.mb)
EXTRA=$(arg lab.opts); RAW=$(arg lab.rawopts); RF=$(arg lab.readfile); RSHA=$(arg lab.readsha)
SCRIPT=$(arg lab.script); NAME=$(arg lab.name); KEEP=$(arg lab.keep)
: ${EXP:=/export} ${MB:=16} ${NFSPORT:=2049} ${MNTPORT:=20048}
# Unique default name: several VMs may share one export concurrently.
[ -n "$NAME" ] || NAME=vm-write-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n').bin
OPTS="vers=3,proto=tcp,nolock,port=$NFSPORT,mountport=$MNTPORT,mountproto=tcp,mountvers=3,addr=10.0.2.2${EXTRA:+,$EXTRA}"
[ -n "$RAW" ] && OPTS="$RAW"

echo "LAB: mount -t nfs -o $OPTS 10.0.2.2:$EXP /mnt   (uptime $(up)s)"
if ! mount -t nfs -o "$OPTS" "10.0.2.2:$EXP" /mnt 2>/tmp/mount.err; then
    sed 's/^/LAB: mount| /' /tmp/mount.err
    dmesg | grep -iE 'nfs|rpc|lockd' | tail -10 | sed 's/^/LAB: dmesg| /'
    fail "mount"; finish
fi
echo "LAB: mounted at uptime $(up)s"; grep ' /mnt ' /proc/mounts | sed 's/^/LAB: mounts| /'
ls -la /mnt | head -20

if [ -n "$SCRIPT" ]; then
    echo "LAB: running sh /mnt/$SCRIPT (cwd /mnt)"
    t0=$(up)
    ( cd /mnt && sh "/mnt/$SCRIPT" </dev/null; echo $? > /tmp/script.rc ) 2>&1 | sed 's/^/LAB: script| /'
    RC=$(cat /tmp/script.rc 2>/dev/null || echo 255)
    echo "LAB: script rc=$RC took $(dt $(up) $t0)s"
    [ "$RC" = 0 ] || fail "script-rc=$RC"
fi

if [ "$MB" != 0 ]; then
    dd if=/dev/urandom of=/tmp/src bs=1M count=$MB 2>/dev/null
    S1=$(sha256sum /tmp/src | cut -d' ' -f1)
    t0=$(up)
    if dd if=/tmp/src of="/mnt/$NAME" bs=1M conv=fsync 2>/tmp/dd.err; then
        echo "LAB: write ${MB}MiB to $NAME (conv=fsync) took $(dt $(up) $t0)s"
    else
        sed 's/^/LAB: dd| /' /tmp/dd.err; fail "write"
    fi
    rm -f /tmp/src
    echo 3 > /proc/sys/vm/drop_caches
    t0=$(up)
    S2=$(dd if="/mnt/$NAME" bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "LAB: read-back+sha256 ${MB}MiB took $(dt $(up) $t0)s"
    if [ "$S1" = "$S2" ]; then echo "LAB: WRITE-READ CHECKSUM OK $S1"
    else echo "LAB: CHECKSUM MISMATCH wrote $S1 read $S2"; fail "checksum"; fi
    if [ "$KEEP" != 1 ]; then rm -f "/mnt/$NAME" || fail "remove"; fi
fi

if [ -n "$RF" ]; then
    echo 3 > /proc/sys/vm/drop_caches
    t0=$(up)
    if S3=$(sha256sum "/mnt/$RF" | cut -d' ' -f1) && [ -n "$S3" ]; then
        echo "LAB: read+sha256 /mnt/$RF took $(dt $(up) $t0)s: sha256 $S3"
        if [ -n "$RSHA" ]; then
            if [ "$RSHA" = "$S3" ]; then echo "LAB: READFILE CHECKSUM OK"
            else echo "LAB: READFILE CHECKSUM MISMATCH expected $RSHA"; fail "readfile-checksum"; fi
        fi
    else
        fail "readfile"
    fi
fi

# Per-op RPC counts and times as the kernel client saw them (useful under TCG, where guest
# CPU time dominates wall time).
grep -E '^\s+(NULL|GETATTR|SETATTR|LOOKUP|ACCESS|READ|WRITE|CREATE|REMOVE|READDIRPLUS|FSSTAT|FSINFO|PATHCONF|COMMIT):' /proc/self/mountstats 2>/dev/null | sed 's/^\s*/LAB: stats| /'
cd /
if umount /mnt; then echo "LAB: umounted"; else fail "umount"; fi
finish
EOF
chmod +x "$root/init"

# Build into a temp file and rename, so a concurrent reader never sees a partial image.
mkdir -p "$OUT"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.cpio.gz.tmp.$$"
cp "/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp.$$"
mv "$OUT/vmlinuz.tmp.$$" "$OUT/vmlinuz"
mv "$OUT/initrd.cpio.gz.tmp.$$" "$OUT/initrd.cpio.gz"
echo "$KVER" > "$OUT/kver"
echo "mk-initramfs: built $OUT/initrd.cpio.gz ($(du -h "$OUT/initrd.cpio.gz" | cut -f1)) for kernel $KVER, modules: $(tr '\n' ' ' < "$root/lib/modules/load-order")"
