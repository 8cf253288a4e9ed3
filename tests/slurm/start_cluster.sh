#!/usr/bin/env bash
# A one-node SLURM for tests: installs slurm + munge with apt when missing (needs root),
# writes a slurm.conf for this machine into STATE_DIR, starts munged (unless one already
# answers), slurmctld and slurmd by hand (no systemd), and waits until the node is idle.
#
#   tests/slurm/start_cluster.sh STATE_DIR     # slurm.conf in STATE_DIR, linked from /etc/slurm
#   tests/slurm/stop_cluster.sh STATE_DIR      # stops exactly what this script started
#
# Two partitions on the one node: `gpu` (the default) and `cpu`, so a test can see which
# jobs went where. No accounting database: job completions go to STATE_DIR/jobcomp.txt
# (jobcomp/filetxt) and finished jobs stay visible to squeue for MinJobAge seconds.
# Exit status 3 means SLURM cannot be installed or started here (callers skip on it).
set -euo pipefail

STATE=${1:?usage: start_cluster.sh STATE_DIR}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
unavailable() { echo "slurm unavailable: $*" >&2; exit 3; }
export PATH=$PATH:/usr/sbin:/sbin   # the daemons live in sbin

# --- packages ------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || unavailable "slurmctld/slurmd/munged missing and not root (cannot apt-get install)"
    command -v apt-get >/dev/null || unavailable "slurmctld/slurmd/munged missing and no apt-get"
    echo "installing slurm and munge with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } > "$STATE/apt.log" 2>&1 \
        || unavailable "apt-get install failed (see $STATE/apt.log)"
fi
[ "$(id -u)" = 0 ] || unavailable "the daemons are started as root here; run as root"

# The job-step plugin drops SLURM_CONF before its `srun`, so jobs find the config only at the
# compiled-in path, /etc/slurm/slurm.conf: it becomes a link to STATE_DIR/slurm.conf, unless
# another cluster's config (or a test cluster still running from STATE) is already there.
ETC_CONF=/etc/slurm/slurm.conf
if [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; then
    OTHER=$(readlink "$ETC_CONF" || true)
    OTHER_CTLD=${OTHER%/slurm.conf}/slurmctld.pid
    if [ "$OTHER" != "$STATE/slurm.conf" ] && [ "$OTHER" != "${OTHER%/slurm.conf}" ] \
            && ! { [ -s "$OTHER_CTLD" ] && kill -0 "$(cat "$OTHER_CTLD")" 2>/dev/null; }; then
        echo "replacing the stale link $ETC_CONF -> $OTHER (its slurmctld is gone)" >&2
    elif [ "$OTHER" != "$STATE/slurm.conf" ]; then
        case "$OTHER" in
            */slurm.conf) unavailable "$ETC_CONF is in use by the test cluster in ${OTHER%/slurm.conf} (another test session, or a leftover: tests/slurm/stop_cluster.sh ${OTHER%/slurm.conf})" ;;
            *) unavailable "$ETC_CONF exists and is not a test cluster's (left alone)" ;;
        esac
    fi
fi

# From here on, a failure stops whatever this script has started.
give_up() { "$(dirname "$0")/stop_cluster.sh" "$STATE" >/dev/null 2>&1 || true; unavailable "$@"; }
trap '"$(dirname "$0")/stop_cluster.sh" "$STATE" >/dev/null 2>&1 || true' ERR

# --- munge -----------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "munged already running: using it" >&2
else
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || mungekey -c; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    cat /run/munge/munged.pid > "$STATE/munged.pid"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || give_up "munged does not answer"
fi

# --- slurm.conf --------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # nproc alone counts OMP_NUM_THREADS
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # 10% below what slurmd sees
CTLD_PORT=${SALSA_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SALSA_SLURMD_PORT:-6818}
mkdir -p "$STATE/ctld" "$STATE/spool"
cat > "$STATE/slurm.conf" <<CONF
# written by tests/slurm/start_cluster.sh for this machine ($HOST, $CPUS CPUs, $MEM_MB MB)
ClusterName=salsa-test
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups in a container: track job processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# no accounting: completions to a text file, finished jobs kept by slurmctld for 5 minutes
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
MinJobAge=300
# schedule at once on submit; cores and memory are consumable, so jobs share the node
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_interval=2,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=gpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
mkdir -p /etc/slurm
ln -sfn "$STATE/slurm.conf" "$ETC_CONF"
export SLURM_CONF=$STATE/slurm.conf

# --- daemons -------------------------------------------------------------------------
if scontrol ping 2>/dev/null | grep -q "is UP"; then
    give_up "a slurmctld already answers on port $CTLD_PORT (set SALSA_SLURMCTLD_PORT/SALSA_SLURMD_PORT)"
fi
slurmctld -f "$SLURM_CONF" -i      # -i: ignore state left by an earlier run in this STATE_DIR
slurmd -f "$SLURM_CONF"

for _ in $(seq 120); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle; then
        echo "slurm up: $HOST, $CPUS CPUs, $MEM_MB MB; export SLURM_CONF=$SLURM_CONF" >&2
        exit 0
    fi
    sleep 0.5
done
echo "node not idle after 60 s; sinfo says: $(sinfo -N 2>&1 | tail -n +2)" >&2
tail -5 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
give_up "node did not become idle"
