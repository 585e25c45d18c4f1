#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying and testing the SLURM launcher (hydra/launcher=slurm).
#
#   scripts/slurm_local.sh [start]   install slurm-wlm + munge if missing (apt-get), write /etc/slurm/slurm.conf
#                                    for this host (its CPUs and memory, no GPUs), start munged, slurmctld and
#                                    slurmd in the background and wait until `sinfo` shows the node idle
#   scripts/slurm_local.sh stop      cancel every job, stop the three daemons
#   scripts/slurm_local.sh status    the daemons, the node and the queue; exit 1 when the node is not up
#
# Runs as root (or through sudo) and needs no systemd: the daemons are started directly, so it works in a
# container. Every step is skipped when already done, so `start` may be run again at any time. There is no
# accounting database: `sacct` does not work here, and submitit reads a job's end from its result file.
set -euo pipefail

SLURM_CONF=/etc/slurm/slurm.conf
MARKER="# written by diffusion_lab scripts/slurm_local.sh"
NODE=$(hostname -s)
SPOOL=/var/spool/slurm-local
LOGS=/var/log/slurm-local
PIDS=/run/slurm-local
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
say() { echo "[slurm_local] $*"; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null &&
        command -v munged >/dev/null; then
        return
    fi
    say "installing slurm-wlm and munge (apt-get)"
    # Without systemd the packages' scripts cannot start services; a policy-rc.d that says no keeps them from
    # trying (left alone if the system already has one).
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added=1
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge
    if [ -n "$added" ]; then as_root rm -f "$policy"; fi
}

write_config() {
    if [ -f "$SLURM_CONF" ] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
        echo "error: $SLURM_CONF exists and was not written by this script; move it away to use the local cluster" >&2
        exit 2
    fi
    local cpus mem_mb
    cpus=$(nproc)
    # A little under the machine's memory: slurmd drains a node that has less than its RealMemory.
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    as_root mkdir -p /etc/slurm "$SPOOL/ctld" "$SPOOL/d" "$LOGS" "$PIDS"
    as_root tee "$SLURM_CONF.new" >/dev/null <<EOF
$MARKER
ClusterName=localcluster
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# No cgroups (a container rarely has them writable): processes are tracked by their parent process.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Look at the queue every 2 s (a requeued job starts as soon as it may, not at the next 30-60 s pass).
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
# Jobs may be requeued (scontrol requeue, submitit's and Lightning's auto-requeue); finished ones leave the
# queue after MinJobAge seconds. A requeued job waits cred_expire seconds before it starts again (120 by
# default).
JobRequeue=1
AuthInfo=cred_expire=10
MinJobAge=30
KillWait=30
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    as_root tee /etc/slurm/cgroup.conf.new >/dev/null <<EOF
$MARKER
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
    as_root mv /etc/slurm/cgroup.conf.new /etc/slurm/cgroup.conf
    if [ -f "$SLURM_CONF" ] && cmp -s "$SLURM_CONF" "$SLURM_CONF.new"; then
        as_root rm "$SLURM_CONF.new"
    else
        as_root mv "$SLURM_CONF.new" "$SLURM_CONF"
        # A running controller of an older config is restarted with this one.
        stop_daemons
    fi
}

start_munge() {
    as_root mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    as_root chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        as_root sh -c 'umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none'
    fi
    as_root chown munge:munge /etc/munge/munge.key
    as_root chmod 0400 /etc/munge/munge.key
    if ! running /run/munge/munged.pid; then
        say "starting munged"
        as_root runuser -u munge -- /usr/sbin/munged
    fi
}

start_slurm() {
    if ! running "$PIDS/slurmctld.pid"; then
        say "starting slurmctld"
        as_root slurmctld
    fi
    if ! running "$PIDS/slurmd.pid"; then
        say "starting slurmd"
        as_root slurmd
    fi
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

wait_idle() {
    local state="" resumed=""
    for _ in $(seq "$WAIT_S"); do
        state=$(node_state || true)
        case "$state" in
        idle | mixed | allocated | completing) say "node $NODE is $state"; return 0 ;;
        down* | drain* | drained*)
            # A node left down by an earlier stop comes back at once.
            if [ -z "$resumed" ]; then as_root scontrol update nodename="$NODE" state=resume || true; resumed=1; fi ;;
        esac
        sleep 1
    done
    echo "error: the SLURM node $NODE is not idle after ${WAIT_S}s (state: ${state:-none}); see $LOGS/" >&2
    exit 1
}

stop_daemons() {
    local pidfile pid
    for pidfile in "$PIDS/slurmd.pid" "$PIDS/slurmctld.pid"; do
        if running "$pidfile"; then
            pid=$(cat "$pidfile")
            as_root kill "$pid"
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
    done
}

stop() {
    if running "$PIDS/slurmctld.pid"; then
        # Cancel every job first, so no job step outlives the daemons.
        squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    stop_daemons
    if running /run/munge/munged.pid; then
        as_root kill "$(cat /run/munge/munged.pid)"
    fi
    say "stopped"
}

status() {
    local ok=0 name pidfile
    for name in munged slurmctld slurmd; do
        case $name in munged) pidfile=/run/munge/munged.pid ;; *) pidfile=$PIDS/$name.pid ;; esac
        if running "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; ok=1; fi
    done
    if [ $ok = 0 ]; then
        sinfo
        squeue
        case "$(node_state)" in idle | mixed | allocated | completing) ;; *) ok=1 ;; esac
    fi
    return $ok
}

case "${1:-start}" in
start)
    started=$(date +%s)
    install_packages
    write_config
    start_munge
    start_slurm
    wait_idle
    say "up in $(($(date +%s) - started)) s (config: $SLURM_CONF, logs: $LOGS/)"
    ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
