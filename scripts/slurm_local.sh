#!/usr/bin/env bash
# A single-node SLURM on this machine, for selfreg's cluster tests and for trying `--launcher slurm`.
#
#   sudo apt-get install slurmctld slurmd slurm-client munge     # Debian/Ubuntu packages
#   scripts/slurm_local.sh start      # writes $SELFREG_SLURM_DIR/slurm.conf, starts munged, slurmctld, slurmd
#   export SLURM_CONF=$SELFREG_SLURM_DIR/slurm.conf                # (start prints this line)
#   scripts/slurm_local.sh status     # sinfo
#   scripts/slurm_local.sh stop
#
# Run as root (the daemons run as root; munged with --force). The configuration is minimal: one
# node with this machine's cores and memory, one partition `debug`, no cgroups, no accounting,
# requeue allowed. Nothing is written outside $SELFREG_SLURM_DIR (default /tmp/selfreg-slurm)
# except munged's socket folder. Starting takes a few seconds; `start` waits until the node is idle.
set -euo pipefail

DIR=${SELFREG_SLURM_DIR:-/tmp/selfreg-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)

need() { command -v "$1" >/dev/null || { echo "slurm_local: $1 not found; install: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 2; }; }

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))   # MiB, leaving 1 GiB to the system
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat > "$CONF" <<EOF
ClusterName=selfreg-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  need munged; need slurmctld; need slurmd; need sinfo
  write_conf
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
      runuser -u munge -- munged 2>/dev/null || munged --force
    else
      munged --force
    fi
  fi
  export SLURM_CONF=$CONF
  stop_daemons
  slurmctld -f "$CONF" -i
  slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm_local: the node did not come up; see $DIR/log/" >&2
  sinfo >&2 || true
  exit 1
}

stop_daemons() {
  for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  for _ in $(seq 1 20); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || return 0
    sleep 0.25
  done
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  status) SLURM_CONF=$CONF sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
