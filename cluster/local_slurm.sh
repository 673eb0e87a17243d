#!/usr/bin/env bash
# A real single-node SLURM on this machine, for signlock's tests and for trying `--backend slurm`.
#
#   cluster/local_slurm.sh up       install slurm-wlm + munge if missing, write slurm.conf, start
#                                   munged, slurmctld and slurmd, wait until the node is idle
#   cluster/local_slurm.sh down     stop only the daemons `up` started
#   cluster/local_slurm.sh status   sinfo, or "down"
#
# The configuration (known to run as root with slurm-wlm 22.05): one node with this host's real
# CPU count and memory, one partition `debug`, ProctrackType=proctrack/linuxproc,
# TaskPlugin=task/none and no cgroup.conf. State, logs and pid files live in $SIGNLOCK_SLURM_DIR
# (default /tmp/signlock-slurm). Requires root (it writes /etc/slurm/slurm.conf).
set -euo pipefail

STATE_DIR="${SIGNLOCK_SLURM_DIR:-/tmp/signlock-slurm}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
PARTITION=debug

log() { echo "local_slurm: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

real_memory_mb() {
    # slurmd refuses a node whose RealMemory exceeds what it measures; leave it 5 % headroom.
    awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.95 }' /proc/meminfo
}

write_config() {
    local host cpus
    host="$(hostname -s)"
    cpus="$(nproc)"
    mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/spool"
    cat >"$CONF" <<EOF
# written by signlock's cluster/local_slurm.sh
ClusterName=signlock
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    rm -f "$CONF_DIR/cgroup.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged already answers
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    echo started >"$STATE_DIR/munged.started"
}

wait_idle() {
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        state="$(sinfo -h -p "$PARTITION" -o %t 2>/dev/null || true)"
        case "$state" in
            idle | mix | alloc) return 0 ;;
        esac
        if [ "$state" = "drain" ] || [ "$state" = "down" ] || [ "$state" = "down*" ]; then
            scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        fi
        sleep 1
    done
    log "the node did not become idle; see $STATE_DIR/slurmctld.log and slurmd.log"
    return 1
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    if running "$STATE_DIR/slurmctld.pid" && running "$STATE_DIR/slurmd.pid"; then
        wait_idle
        return
    fi
    install_packages
    mkdir -p "$STATE_DIR"
    write_config
    start_munge
    slurmctld -i  # -i: ignore state saved by an earlier configuration
    slurmd
    wait_idle
    log "up: partition $PARTITION on $(hostname -s) ($(nproc) CPUs)"
}

stop_pidfile() {
    local pidfile="$1" pid
    running "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

down() {
    stop_pidfile "$STATE_DIR/slurmd.pid"
    stop_pidfile "$STATE_DIR/slurmctld.pid"
    if [ -f "$STATE_DIR/munged.started" ]; then
        stop_pidfile /run/munge/munged.pid
        rm -f "$STATE_DIR/munged.started"
    fi
    log "down"
}

status() {
    if running "$STATE_DIR/slurmctld.pid"; then
        sinfo
    else
        echo down
        return 3
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
