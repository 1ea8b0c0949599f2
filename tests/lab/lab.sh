#!/usr/bin/env bash
# The gridvfs lab: a real NFSv3 server (NFS-Ganesha, FSAL VFS) on loopback, used as the
# upstream of the proxy by the integration tests, scripts/demo.sh and scripts/test.sh.
#
#   tests/lab/lab.sh up       start ganesha (+ its own rpcbind if none answers), wait until
#                             NFS and MOUNT answer, write $GRIDVFS_LAB_DIR/env
#   tests/lab/lab.sh env      print that env file (source it, or: eval "$(tests/lab/lab.sh env)")
#   tests/lab/lab.sh status   exit 0 if the lab's ganesha is running
#   tests/lab/lab.sh down     stop, by recorded PID, only what `up` started
#
# Environment (all optional):
#   GRIDVFS_LAB_DIR        state dir (config, logs, pid files, export)   default /tmp/gridvfs-lab
#   GRIDVFS_LAB_NFS_PORT   ganesha NFS port on 127.0.0.1                 default 20490
#   GRIDVFS_LAB_MNT_PORT   ganesha MOUNT port on 127.0.0.1               default 20048
#   GRIDVFS_LAB_LOGLEVEL   ganesha log level (FULL_DEBUG traces each op)  default EVENT
#   GRIDVFS_LAB_FRESH=1    empty the export directory before starting
#
# The env file exports GRIDVFS_LAB_DIR, GRIDVFS_LAB_NFS (host:port), GRIDVFS_LAB_MOUNT
# (host:port), GRIDVFS_LAB_EXPORT (the path clients mount, /export) and
# GRIDVFS_LAB_EXPORT_DIR (the directory on this machine that backs it).
#
# Facts this script relies on (Debian 12, nfs-ganesha 4.3):
#  * Files changed on disk under the export are seen at once only because the config below
#    turns attribute caching off (Attr_Expiration_Time = 0) and makes directory changes
#    invalidate the dirent cache; with defaults ganesha serves stale handles for ~60 s.
#  * Ganesha must register with a portmapper at start-up; with none it exits rc=2 at once
#    ("Cannot register NFS V3 on TCP"). There is no option to skip that. After start-up the
#    portmapper is not needed by clients that pass explicit ports.
#  * Plugins_Dir must be /usr/lib/x86_64-linux-gnu/ganesha on Debian (the documented default
#    /usr/lib64/ganesha does not exist there).
#  * mount_path_pseudo = true makes NFSv3 clients mount the pseudo path (/export) rather than
#    the real directory.
#  * It listens on an IPv6 socket bound to ::ffff:127.0.0.1; connecting to 127.0.0.1 works.
#  * Start to "answers NULL" ~0.1 s; SIGTERM is a clean exit in ~1.3 s (it unregisters from
#    rpcbind). dbus / krb5 / RADOS CRIT lines in its log are harmless.
set -euo pipefail

LAB=${GRIDVFS_LAB_DIR:-/tmp/gridvfs-lab}
NFS_PORT=${GRIDVFS_LAB_NFS_PORT:-20490}
MNT_PORT=${GRIDVFS_LAB_MNT_PORT:-20048}
NLM_PORT=${GRIDVFS_LAB_NLM_PORT:-20049}
LOGLEVEL=${GRIDVFS_LAB_LOGLEVEL:-EVENT}
BIND=127.0.0.1
PSEUDO=/export
EXPORT_DIR=$LAB/export
GANESHA_PID=$LAB/ganesha.pid      # PID of the ganesha.nfsd we started ($! of a -F process)
RPCBIND_PID=$LAB/rpcbind.pid      # only exists if we started rpcbind ourselves
ENV_FILE=$LAB/env

die() { echo "lab.sh: $*" >&2; exit 1; }
log() { echo "lab.sh: $*"; }

# pid_alive PIDFILE COMM: the recorded PID runs and is still the program we started
# (guards against killing an unrelated process that reused a stale PID).
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# stop_pid PIDFILE COMM NAME: SIGTERM, wait up to 15 s, then SIGKILL; by PID only.
stop_pid() {
    local pidfile=$1 comm=$2 name=$3 pid
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if pid_alive "$pidfile" "$comm"; then
        kill -TERM "$pid"
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM for 15 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

write_env() {
    {
        echo "# written by tests/lab/lab.sh up; source this file"
        printf 'export GRIDVFS_LAB_DIR=%q\n' "$LAB"
        printf 'export GRIDVFS_LAB_NFS=%q\n' "$BIND:$NFS_PORT"
        printf 'export GRIDVFS_LAB_MOUNT=%q\n' "$BIND:$MNT_PORT"
        printf 'export GRIDVFS_LAB_EXPORT=%q\n' "$PSEUDO"
        printf 'export GRIDVFS_LAB_EXPORT_DIR=%q\n' "$EXPORT_DIR"
    } > "$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# Direct NFSv3 + MOUNTv3 round trip on the fixed ports without the portmapper: libnfs mounts
# the export (MOUNT) and lists it (NFS READDIRPLUS).
probe_libnfs() {
    timeout 10 nfs-ls "nfs://$BIND$PSEUDO/?version=3&nfsport=$NFS_PORT&mountport=$MNT_PORT" >/dev/null 2>&1
}

cmd_up() {
    local t0=$EPOCHREALTIME
    for c in ganesha.nfsd rpcbind rpcinfo nfs-ls; do
        command -v "$c" >/dev/null || die "$c not found; run scripts/install-deps.sh (apt: nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils)"
    done
    [[ -f /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ]] || die "FSAL VFS missing; apt-get install nfs-ganesha-vfs"
    mkdir -p "$LAB" "$LAB/recov"

    if pid_alive "$GANESHA_PID" ganesha.nfsd; then
        # Reuse: same LAB dir means same ports/config, so the running server is what we want.
        probe_libnfs || die "ganesha (pid $(<"$GANESHA_PID")) is running but does not answer on $BIND:$NFS_PORT/$MNT_PORT; run 'lab.sh down' first"
        write_env
        log "already running (ganesha pid $(<"$GANESHA_PID")); reusing it. env: $ENV_FILE"
        return 0
    fi
    rm -f "$GANESHA_PID"   # stale

    # Refuse to start if another process owns our ports (e.g. a system nfs-ganesha.service,
    # whose default MOUNT port is also 20048): we would otherwise talk to the wrong server.
    for p in "$NFS_PORT" "$MNT_PORT"; do
        port_open "$p" && die "127.0.0.1:$p is already in use by a process this lab did not start (system nfs-ganesha? 'systemctl stop nfs-ganesha'); or set GRIDVFS_LAB_NFS_PORT/GRIDVFS_LAB_MNT_PORT"
    done

    if [[ ${GRIDVFS_LAB_FRESH:-0} == 1 && -d $EXPORT_DIR ]]; then
        find "$EXPORT_DIR" -mindepth 1 -delete
    fi
    mkdir -p "$EXPORT_DIR"
    # Tests and the kernel client (root, but possibly other uids via AUTH_SYS) write here.
    chmod 0777 "$EXPORT_DIR"

    cat > "$LAB/ganesha.conf" <<EOF
# generated by tests/lab/lab.sh
NFS_CORE_PARAM {
    Protocols = 3;
    Bind_Addr = $BIND;
    NFS_Port = $NFS_PORT;
    MNT_Port = $MNT_PORT;
    NLM_Port = $NLM_PORT;      # unused (NLM off), but keep it away from 0/random
    Enable_NLM = false;      # clients mount with nolock
    Enable_RQUOTA = false;
    Enable_UDP = false;      # TCP only (the proxy is TCP only)
    Plugins_Dir = /usr/lib/x86_64-linux-gnu/ganesha;
    mount_path_pseudo = true;
}
NFSV4 {
    Graceless = true;
    RecoveryRoot = $LAB/recov;
}
EXPORT {
    Export_Id = 1;
    Path = $EXPORT_DIR;
    Pseudo = $PSEUDO;
    Protocols = 3;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    # Tests change the export directly on disk behind ganesha's back (seed files, delete and
    # recreate trees). With the default 60 s attribute cache ganesha then serves stale
    # handles (NFS3ERR_STALE / NOENT for a recreated directory); 0 = always revalidate.
    Attr_Expiration_Time = 0;
    FSAL { Name = VFS; }
}
MDCACHE {
    # Notice directory changes made on disk (mtime/ctime seen by getattr) and drop the
    # cached dirents, for the same reason.
    Use_Getattr_Directory_Invalidation = true;
    # NFSv3 I/O goes through a global fd per file, which ganesha keeps open; tests
    # delete their files on disk behind its back, so kept fds pin the space of every
    # file written (tens of GB over a suite). A low fd water mark and a short reaper
    # interval let ganesha close them soon.
    FD_LWMark_Percent = 0;
    FD_HWMark_Percent = 1;
    LRU_Run_Interval = 5;
}
LOG { Default_Log_Level = $LOGLEVEL; }
EOF

    # A portmapper is mandatory while ganesha starts. Use the one that answers (possibly
    # ours, left from a run whose ganesha died), else start our own.
    pid_alive "$RPCBIND_PID" rpcbind || rm -f "$RPCBIND_PID"
    if ! rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then
        # rpcbind drops privileges to _rpc and keeps state under /run/rpcbind; a fresh
        # machine where the service never ran may not have that directory yet.
        mkdir -p /run/rpcbind
        id _rpc >/dev/null 2>&1 && chown _rpc /run/rpcbind
        rpcbind -f >"$LAB/rpcbind.log" 2>&1 9>&- &
        echo $! > "$RPCBIND_PID"
        local ok=0
        for _ in $(seq 1 100); do
            if rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then ok=1; break; fi
            sleep 0.05
        done
        [[ $ok == 1 ]] || { stop_pid "$RPCBIND_PID" rpcbind rpcbind; die "rpcbind did not come up; see $LAB/rpcbind.log"; }
        log "started rpcbind (pid $(<"$RPCBIND_PID"))"
    fi

    : > "$LAB/ganesha.log"
    # -F: foreground, so $! is ganesha itself (we never rely on its own -p pid file).
    ganesha.nfsd -F -L "$LAB/ganesha.log" -f "$LAB/ganesha.conf" -p "$LAB/ganesha.nfsd.pid" \
        >"$LAB/ganesha.stdout" 2>&1 9>&- &
    local gpid=$!
    echo "$gpid" > "$GANESHA_PID"

    # Readiness: NULL answers for NFS v3 and MOUNT v3 (rpcinfo asks the portmapper for the
    # port), then a real MOUNT + READDIR on the fixed ports with libnfs.
    local ok=0
    for _ in $(seq 1 300); do
        kill -0 "$gpid" 2>/dev/null || break
        if rpcinfo -t 127.0.0.1 100003 3 >/dev/null 2>&1 && rpcinfo -t 127.0.0.1 100005 3 >/dev/null 2>&1 &&
            probe_libnfs; then
            ok=1; break
        fi
        sleep 0.05
    done
    if [[ $ok != 1 ]]; then
        echo "lab.sh: ganesha failed to start (or did not answer within 15 s); last log lines:" >&2
        tail -n 20 "$LAB/ganesha.log" "$LAB/ganesha.stdout" >&2 || true
        stop_pid "$GANESHA_PID" ganesha.nfsd ganesha
        stop_pid "$RPCBIND_PID" rpcbind rpcbind
        exit 1
    fi
    write_env
    log "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}')s: ganesha pid $gpid ready: NFS $BIND:$NFS_PORT MOUNT $BIND:$MNT_PORT export $PSEUDO -> $EXPORT_DIR"
    log "libnfs URL: nfs://$BIND$PSEUDO/?version=3&nfsport=$NFS_PORT&mountport=$MNT_PORT"
    log "env: source $ENV_FILE"
}

cmd_down() {
    stop_pid "$GANESHA_PID" ganesha.nfsd ganesha
    stop_pid "$RPCBIND_PID" rpcbind rpcbind
    rm -f "$ENV_FILE" "$LAB/ganesha.nfsd.pid"
}

cmd_env() {
    pid_alive "$GANESHA_PID" ganesha.nfsd || die "lab is not running (no live ganesha in $LAB); run 'tests/lab/lab.sh up'"
    [[ -f $ENV_FILE ]] || die "$ENV_FILE missing; run 'tests/lab/lab.sh up'"
    cat "$ENV_FILE"
}

cmd_status() {
    if pid_alive "$GANESHA_PID" ganesha.nfsd; then
        echo "running: ganesha pid $(<"$GANESHA_PID")$(pid_alive "$RPCBIND_PID" rpcbind && echo ", own rpcbind pid $(<"$RPCBIND_PID")")"
    else
        echo "not running"; return 1
    fi
}

# Serialise up/down (two test runs starting at once). Daemons are started with fd 9
# closed so that they do not keep holding the lock.
lock() { mkdir -p "$LAB"; exec 9>"$LAB/.lock"; flock 9; }

case ${1:-} in
up) lock; cmd_up ;;
down) lock; cmd_down ;;
env) cmd_env ;;
status) cmd_status ;;
*) echo "usage: $0 up|down|env|status   (GRIDVFS_LAB_DIR=${LAB})" >&2; exit 2 ;;
esac
