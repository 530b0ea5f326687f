#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests (tests/test_slurm.py).
#
#   tests/slurm/cluster.sh start    configure (if needed) and start munged, slurmctld, slurmd
#   tests/slurm/cluster.sh status   daemons, controller and node state; exit 0 only when usable
#   tests/slurm/cluster.sh stop     stop the daemons it started, by the PIDs in their pidfiles
#
# Needs root and the Debian packages `slurm-wlm munge`. Idempotent: start leaves running daemons
# alone, stop ignores stopped ones. It writes /etc/slurm/slurm.conf (marked as ours) and refuses
# to touch a slurm.conf it did not write. Exit status 2: this machine cannot host it (not root,
# packages missing, a foreign slurm.conf); 1: it failed to start. No accounting database: `sacct` is disabled, so
# Snakemake must poll with `--slurm-status-command squeue` (profiles/slurm does).
# Node name = `hostname -s`, CPUs = `nproc`, RealMemory from `free -m`; partition "debug".
set -euo pipefail

CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
MARK="# segmia test cluster (tests/slurm/cluster.sh)"
PARTITION=debug
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

die() { echo "cluster.sh: $*" >&2; exit 1; }
cannot() { echo "cluster.sh: $*" >&2; exit 2; }  # this machine cannot host the test cluster
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.1
    done
}

check_prereqs() {
    [[ $(id -u) == 0 ]] || cannot "needs root (daemons run as root/slurm/munge)"
    local b
    for b in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
        command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] ||
            cannot "missing $b: apt-get install -y slurm-wlm munge"
    done
    [[ -s /etc/munge/munge.key ]] || cannot "missing /etc/munge/munge.key (reinstall munge)"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # schedulable memory: 90 % of the total (slurmd drains a node that reports less than RealMemory)
    mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        cannot "$CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF.new" <<CONFEOF
$MARK
# Single node on loopback, no cgroups, no accounting. Rewritten by start when it differs.
ClusterName=local
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default each job takes the whole node's memory and jobs run one at a time
DefMemPerCPU=1000
InactiveLimit=0
KillWait=5
# finished jobs stay visible to squeue for 300 s (>= 3 x the status-check interval)
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
Waittime=0
SlurmctldDebug=info
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdDebug=info
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# every finished job is appended here (job id, name, state): the test reads it as the history
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONFEOF
    if cmp -s "$CONF.new" "$CONF"; then
        rm "$CONF.new"
    else
        mv "$CONF.new" "$CONF"
        if alive "$CTLD_PID"; then scontrol reconfigure; fi
    fi
}

node_idle() { sinfo -h -n "$(hostname -s)" -o %T | grep -Eq '^(idle|mixed|allocated)'; }

start() {
    check_prereqs
    write_conf
    if ! alive "$MUNGE_PID"; then
        install -d -o munge -g munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        wait_for 10 munged alive "$MUNGE_PID"
    fi
    install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
    install -d /var/spool/slurmd
    if ! alive "$CTLD_PID"; then
        /usr/sbin/slurmctld
        wait_for 30 "slurmctld (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
    fi
    if ! alive "$SLURMD_PID"; then
        /usr/sbin/slurmd
    fi
    wait_for 60 "node $(hostname -s) to be idle (sinfo)" node_idle
    echo "cluster.sh: SLURM up: partition $PARTITION, node $(hostname -s)" \
        "($(nproc) CPUs), log /var/log/slurm"
}

stop_one() {  # stop_one PIDFILE NAME
    local pidfile=$1 name=$2 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    local end=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < end)) || die "$name (pid $pid) did not stop within 30 s"
        sleep 0.1
    done
    echo "cluster.sh: stopped $name (pid $pid)"
}

stop() {
    stop_one "$SLURMD_PID" slurmd
    stop_one "$CTLD_PID" slurmctld
    stop_one "$MUNGE_PID" munged
}

status() {
    local ok=0 f n
    for f in "$MUNGE_PID:munged" "$CTLD_PID:slurmctld" "$SLURMD_PID:slurmd"; do
        n=${f#*:}
        f=${f%%:*}
        if alive "$f"; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: stopped"; ok=1; fi
    done
    if ((ok == 0)); then
        scontrol ping || ok=1
        sinfo || ok=1
        node_idle || ok=1
    fi
    return $ok
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
