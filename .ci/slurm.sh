#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the scheduler tests (tests/test_slurm.py) and CI (.ci/run).
#
#   .ci/slurm.sh install        slurm-wlm + munge from Debian's packages when missing (root with apt-get)
#   .ci/slurm.sh start [DIR]    munged + slurmctld + slurmd with their own config, keys, sockets, logs, state
#                               under DIR (default build/slurm); prints the `export SLURM_CONF=...` to use
#   .ci/slurm.sh stop [DIR]     stops the three daemons started in DIR, by the PIDs they wrote there
#   .ci/slurm.sh env [DIR]      prints the environment lines (SLURM_CONF) for a running cluster in DIR
#
# What works in a sandbox without cgroups (Slurm 22.05 from Debian bookworm): select/cons_tres with
# CR_Core_Memory (jobs get the cores and memory they ask for, as on a real cluster), proctrack/linuxproc,
# task/none, no accounting database (jobcomp/filetxt keeps a record of every job in DIR/jobcomp.txt), and one GPU
# gres declared with File=/dev/null, so that --gres=gpu:1 / --gpus=1 jobs can be scheduled and inspected on a
# machine without a GPU (the job sees no device). Two partitions: `cpu` (default) and `gpu`, the same node.
# The daemons listen on ports 16817/16818 (C2L_SLURM_PORT0, +1), not SLURM's defaults, and run as the calling
# user (root in CI); nothing outside DIR is written, the system's /etc/slurm and /etc/munge are not used.
set -euo pipefail

cmd=${1:-}
dir=$(realpath -m "${2:-build/slurm}")
port=${C2L_SLURM_PORT0:-16817}

die() { echo "slurm.sh: ERROR: $*" >&2; exit 1; }

install() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 \
    || missing+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  (( ${#missing[@]} )) || return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install slurm-wlm munge) or run as root"
  fi
  echo "slurm.sh: installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    die "slurm-wlm/munge not installed (run: $0 install)"
  fi
  if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" && alive "$dir/munged.pid"; then
    echo "slurm.sh: already running in $dir"; print_env; return 0
  fi
  stop_daemons quiet
  rm -rf "$dir/state" "$dir/spool" "$dir"/*.log "$dir/jobcomp.txt"
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"
  local host cpus mem_mb user
  host=$(hostname -s)
  cpus=$(nproc)
  user=$(id -un)
  # what slurmd will find, less 1 GB for the system: jobs asking for more are refused at sbatch, as on a cluster
  mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  [[ -f $dir/munge/munge.key ]] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  cat > "$dir/slurm.conf" <<EOF
# written by .ci/slurm.sh: a one-node cluster for tests
ClusterName=c2ltest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
MpiDefault=none
ReturnToService=2
GresTypes=gpu
# Nextflow polls squeue; finished jobs stay visible for a while
MinJobAge=300
KillWait=10
SchedulerParameters=batch_sched_delay=1,sched_min_interval=100000
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
  echo "NodeName=$host Name=gpu File=/dev/null" > "$dir/gres.conf"
  # munged refuses to run as root without --force; its socket, key, pid and log all live under $dir
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
  export SLURM_CONF=$dir/slurm.conf
  rm -f "$dir/cgroup.conf"  # none: proctrack/linuxproc and task/none need no cgroups
  slurmctld -i || { tail -20 "$dir/slurmctld.log" >&2 || true; stop_daemons quiet; die "slurmctld did not start (log above)"; }
  slurmd || { tail -20 "$dir/slurmd.log" >&2 || true; stop_daemons quiet; die "slurmd did not start (log above)"; }
  for _ in $(seq 1 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then break; fi
    sleep 1
  done
  sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle || {
    tail -20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    stop_daemons quiet
    die "the node did not become idle within 60 s (logs above, in $dir)"
  }
  echo "slurm.sh: cluster up in $dir ($host: $cpus CPUs, ${mem_mb} MB, 1 gres gpu on /dev/null; partitions cpu, gpu)"
  print_env
}

print_env() { echo "export SLURM_CONF=$dir/slurm.conf"; }

stop_daemons() {
  local quiet=${1:-} name pidfile pid
  for name in slurmd slurmctld munged; do
    pidfile=$dir/$name.pid
    alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    [[ -n $quiet ]] || echo "slurm.sh: stopped $name (pid $pid)"
  done
}

case $cmd in
  install) install ;;
  start) start ;;
  stop) stop_daemons ;;
  env) print_env ;;
  *) echo "usage: $0 install|start|stop|env [DIR]" >&2; exit 2 ;;
esac
