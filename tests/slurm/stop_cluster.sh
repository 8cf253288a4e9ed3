#!/usr/bin/env bash
# Stops the daemons tests/slurm/start_cluster.sh STATE_DIR started, by the pids it recorded
# (slurmd, slurmctld, and munged only if that script started it), waits for them to exit,
# and removes the /etc/slurm/slurm.conf link if it still points into STATE_DIR.
set -uo pipefail
STATE=${1:?usage: stop_cluster.sh STATE_DIR}

stop() {  # pidfile, daemon name (checked, so that a reused pid is never signalled)
    local file=$STATE/$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$file"
}

# jobs still running belong to this cluster: cancel them before the daemons go (only when
# this cluster's slurmctld runs, so that no other cluster's jobs are touched)
if [ -s "$STATE/slurmctld.pid" ] && [ "$(cat "/proc/$(cat "$STATE/slurmctld.pid")/comm" 2>/dev/null)" = slurmctld ]; then
    SLURM_CONF=$STATE/slurm.conf timeout 10 scancel --full -u "$(id -un)" 2>/dev/null
fi
stop slurmd.pid slurmd
stop slurmctld.pid slurmctld
stop munged.pid munged
# the config link, if it is still this cluster's
[ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
exit 0
