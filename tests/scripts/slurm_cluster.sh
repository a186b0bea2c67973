#!/usr/bin/env bash
# A real SLURM cluster on this machine: one slurmctld and two slurmd (nodes slurm-node1 and
# slurm-node2, both this host on loopback), with their own munged, all under one folder.
#
#   tests/scripts/slurm_cluster.sh install      install the Debian packages if missing (as root)
#   tests/scripts/slurm_cluster.sh start DIR    install if missing, start, wait until both nodes are idle
#   tests/scripts/slurm_cluster.sh stop DIR     stop exactly the daemons started in DIR (pid files)
#
# After start, `export SLURM_CONF=DIR/slurm.conf` points sbatch/srun/squeue/scontrol at it.
# Nothing outside DIR is touched but /etc/hosts (one line naming the nodes, added once) and, when
# SLURM is missing, its Debian packages. Start prints "install S s, start S s" on its last line.
set -euo pipefail
NODES=(slurm-node1 slurm-node2)
PACKAGES=(slurmctld slurmd slurm-client munge)
action=${1:?usage: slurm_cluster.sh install | start DIR | stop DIR}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
    command -v munged >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "SLURM is not installed and cannot be installed here (that needs root and apt-get):" \
      "apt-get install ${PACKAGES[*]}" >&2
    return 3
  fi
  echo "installing SLURM (${PACKAGES[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
}

if [ "$action" = install ]; then
  started=$(date +%s.%N)
  install
  awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "install %.1f s\n", b - a }'
  exit 0
fi
DIR=$(mkdir -p "${2:?usage: slurm_cluster.sh start|stop DIR}" && cd "$2" && pwd)

# A pid file's process is ours while its command line names DIR or our munge folder (a pid may
# be reused once the daemon is gone).
ours() {
  grep -qs -e "$DIR" ${MUNGE:+-e "$MUNGE"} "/proc/$1/cmdline"
}

stop() {
  local pid_file pid
  MUNGE=$(cat "$DIR/munge_dir" 2>/dev/null || true)
  for pid_file in "$DIR"/pids/*.pid; do
    [ -f "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    if [ -n "$pid" ] && ours "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid_file in "$DIR"/pids/*.pid; do
    [ -f "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
    if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$pid_file"
  done
}

if [ "$action" = stop ]; then
  stop
  [ -z "$MUNGE" ] || rm -rf "$MUNGE" "$DIR/munge_dir"
  exit 0
fi
[ "$action" = start ] || { echo "usage: slurm_cluster.sh start|stop DIR" >&2; exit 2; }

started=$(date +%s.%N)
install || exit $?
installed=$(date +%s.%N)
if [ "$(id -u)" != 0 ]; then
  echo "starting slurmd needs root (SlurmdUser=root); run as root" >&2
  exit 3
fi
if ! getent hosts "${NODES[0]}" >/dev/null || ! getent hosts "${NODES[1]}" >/dev/null; then
  echo "127.0.0.1 ${NODES[*]}" >>/etc/hosts
fi

stop  # daemons left in DIR by an earlier start
mkdir -p "$DIR"/{pids,log,state}
for node in "${NODES[@]}"; do mkdir -p "$DIR/spool/$node"; done

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# munged with a key and socket of its own, as the munge user; slurm finds it through AuthInfo. Its
# folder is outside DIR, which may sit in a folder the munge user cannot enter (pytest's are 0700).
MUNGE=$(cat "$DIR/munge_dir" 2>/dev/null || true)
if [ ! -d "$MUNGE" ]; then
  MUNGE=$(mktemp -d /tmp/slurm-munge.XXXXXX)
  echo "$MUNGE" >"$DIR/munge_dir"
fi
chown munge: "$MUNGE"
chmod 700 "$MUNGE"
rm -f "$MUNGE"/munge.key "$MUNGE"/munged.pid
head -c 1024 /dev/urandom >"$MUNGE/munge.key"
chown munge: "$MUNGE/munge.key"
chmod 400 "$MUNGE/munge.key"
# munged checks that only its user may write to the socket's folders, up to /: /tmp is
# world-writable (sticky), which it accepts only with --force.
if ! runuser -u munge -- munged --force --key-file="$MUNGE/munge.key" --socket="$MUNGE/munge.socket" \
  --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed" 2>"$DIR/log/munged.err"; then
  echo "munged did not start:" >&2
  cat "$DIR/log/munged.err" "$MUNGE/munged.log" >&2 || true
  exit 1
fi
for _ in $(seq 50); do [ -s "$MUNGE/munged.pid" ] && break; sleep 0.1; done
cp "$MUNGE/munged.pid" "$DIR/pids/munged.pid"

cpus=$(nproc)
host=$(hostname -s)
ctld_port=$(free_port)
cat >"$DIR/slurm.conf" <<EOF
ClusterName=test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=${NODES[0]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$cpus State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF=$DIR/slurm.conf

slurmctld -f "$SLURM_CONF" -i  # -i: ignore state from a previous start in DIR
for node in "${NODES[@]}"; do slurmd -f "$SLURM_CONF" -N "$node"; done
for _ in $(seq 300); do
  idle=$( (sinfo -h -N -o '%N %t' 2>/dev/null || true) | awk '$2 == "idle"' | wc -l)  # slurmctld may not answer yet
  [ "$idle" -ge 2 ] && break
  sleep 0.1
done
if [ "$idle" -lt 2 ]; then
  echo "the nodes did not become idle within 30 s:" >&2
  sinfo -N >&2 || true
  tail -n 20 "$DIR"/log/*.log >&2 || true
  stop
  exit 1
fi
ready=$(date +%s.%N)
awk -v a="$started" -v b="$installed" -v c="$ready" 'BEGIN { printf "install %.1f s, start %.1f s\n", b - a, c - b }'
