#!/usr/bin/env bash
# A one-node Slurm on this machine, so that `srun -n N moe ...` (and the CommUnderSrun tests in
# tests/integration/test_comm_launchers.cpp) can run without a cluster. Root only: installs
# Debian's slurmd, slurmctld, slurm-client and munge, writes /etc/slurm/slurm.conf for this
# host (one node, one partition "debug", tasks may outnumber CPUs with `srun -O`), and starts
# munged, slurmctld and slurmd. An existing slurm.conf is left alone unless --force is given.
# usage: scripts/slurm_local.sh [--force] | --stop
set -euo pipefail
force=0
case ${1:-} in
  --force) force=1 ;;
  --stop)
    pkill -x slurmd || true
    pkill -x slurmctld || true
    echo "slurm_local: slurmd and slurmctld stopped (munged left running)"
    exit 0 ;;
  "") ;;
  *) echo "slurm_local: unknown argument '$1' (use --force or --stop)" >&2; exit 2 ;;
esac
if [[ $(id -u) != 0 ]]; then
  echo "slurm_local: needs root (it installs packages and starts daemons); run as root:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y slurmd slurmctld slurm-client munge" >&2
  echo "  sudo bash $0" >&2
  exit 1
fi
pkgs=(slurmd slurmctld slurm-client munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "slurm_local: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(($(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 9 / 10))
conf=/etc/slurm/slurm.conf
if [[ -e $conf && $force == 0 ]]; then
  echo "slurm_local: $conf exists; keeping it (--force writes a one-node one for $host)"
else
  mkdir -p /etc/slurm
  cat >"$conf" <<EOF
# Written by moe.cpp scripts/slurm_local.sh: one node ($host), for tests on one machine.
ClusterName=moelocal
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmUser=root
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld-moelocal
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  echo "slurm_local: wrote $conf (node $host, $cpus CPUs, $mem_mb MB)"
fi
mkdir -p /var/spool/slurmctld-moelocal /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge 2>/dev/null || true
[[ -s /etc/munge/munge.key ]] || { echo "slurm_local: /etc/munge/munge.key is missing (the munge package makes it)" >&2; exit 1; }
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
  if timeout 20 srun -n 1 --time=1 true 2>/dev/null; then
    echo "slurm_local: ready: $(sinfo -h -o '%P %a %D %T %N')"
    exit 0
  fi
  sleep 1
done
echo "slurm_local: srun does not start a job step; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
