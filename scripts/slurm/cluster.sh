#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on this machine, for testing cluster sweeps.
#
#   scripts/slurm/cluster.sh start    # install if missing, write the config, start, wait idle
#   scripts/slurm/cluster.sh status   # daemons, controller ping, node state (rc 0 when up)
#   scripts/slurm/cluster.sh stop     # cancel jobs, stop the daemons it started (by PID)
#   scripts/slurm/cluster.sh env      # prints `export SLURM_CONF=...`
#
# Needs root (it installs packages and runs slurmd, which must be root to start jobs as
# their submitters). Debian 12 packages: slurmctld slurmd slurm-client munge (Slurm 22.05).
#
# Everything the cluster writes lives in $HARNESS_SLURM_DIR (default /tmp/harness-slurm):
# slurm.conf, controller state, slurmd spool, logs and pidfiles. The client commands
# (sbatch, squeue, ...) read /etc/slurm/slurm.conf unless SLURM_CONF says otherwise, and
# the harness calls them plainly, as on a real cluster; so `start` also links
# /etc/slurm/slurm.conf to the state folder's file -- only when no other file is there
# (a real config is never replaced; then clients need the SLURM_CONF that `env` prints).
# munged keeps Debian's places (/etc/munge/munge.key, socket in /run/munge): Slurm's
# auth/munge plugin talks to the default socket. A munged already running is used, not
# restarted, and `stop` leaves it alone.
#
# Settings (environment): HARNESS_SLURM_DIR, HARNESS_SLURM_CPUS (CPUs declared, default 8,
# more than the machine has so array tasks overlap), HARNESS_SLURM_PORT (slurmctld port,
# default 6817; slurmd takes the next one).
set -euo pipefail

STATE="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
CONF="$STATE/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
CPUS="${HARNESS_SLURM_CPUS:-8}"
CTLD_PORT="${HARNESS_SLURM_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
NODE="$(hostname -s)"
PACKAGES=(slurmctld slurmd slurm-client munge)
# Our records of the PIDs we started; `stop` kills only these.
PID_CTLD="$STATE/run/slurmctld.pid"
PID_SLURMD="$STATE/run/slurmd.pid"
PID_MUNGED="$STATE/run/munged.pid"

export SLURM_CONF="$CONF"

# Milliseconds since the epoch, for timings.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0="$(now_ms)"
# Seconds since $1 (a now_ms stamp), one decimal.
since() { local d=$(($(now_ms) - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
log() { printf '[cluster %5ss] %s\n' "$(since "$T0")" "$*"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

# Polls `$@` every 0.2 s until it succeeds or $1 seconds pass.
wait_until() {
    local limit="$1"; shift
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.2
    done
}

# Whether the pid in pidfile $1 is alive and is the program $2 (guards against a PID
# reused by something else after a crash).
pid_is() {
    local file="$1" comm="$2" pid
    [ -s "$file" ] || return 1
    pid="$(tr -dc 0-9 <"$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$comm" ]
}

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts slurmd); try sudo $0 $*"
}

install_packages() {
    local t missing=()
    t="$(now_ms)"
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "packages already installed ($(since "$t") s)"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
    log "installing ${missing[*]}"
    # A fresh image may have no package lists yet.
    if ! apt-cache show slurmctld >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "installed ($(since "$t") s)"
}

# RealMemory in MiB: what the machine has, less 1 GiB for the system. Without it every
# --mem request fails (Slurm's default is 1 MB).
real_memory() {
    local kib
    kib="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    echo $((kib / 1024 > 2048 ? kib / 1024 - 1024 : kib / 1024))
}

write_config() {
    mkdir -p "$STATE"/{ctld,spool,log,run}
    cat >"$CONF" <<EOF
# Written by scripts/slurm/cluster.sh: a single-node test cluster on $NODE.
ClusterName=harness
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$PID_CTLD
SlurmdPidFile=$PID_SLURMD
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups on these machines (cgroup v1, no systemd): track processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that was down (slurmd restarted) comes back by itself.
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled or hits its time limit.
KillWait=10
# Declare more CPUs than the machine has so array tasks run side by side.
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$(real_memory) State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$NODE Default=NO MaxTime=30 State=UP
EOF
    # Plain clients read /etc/slurm/slurm.conf: link ours there unless another is present.
    mkdir -p /etc/slurm
    if [ -L "$ETC_CONF" ] || [ ! -e "$ETC_CONF" ]; then
        ln -sfn "$CONF" "$ETC_CONF"
        log "config $CONF (linked from $ETC_CONF)"
    else
        log "config $CONF; $ETC_CONF is another file, left alone: export SLURM_CONF=$CONF"
    fi
}

munge_ok() { munge -n | unmunge; }

start_munged() {
    local t
    t="$(now_ms)"
    if munge_ok >/dev/null 2>&1; then
        log "munged already running (not started here, will be left running)"
        rm -f "$PID_MUNGED"
        return
    fi
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (the munge package makes it; try 'mungekey -c' as user munge)"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    wait_until 10 munge_ok || die "munged did not answer within 10 s (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$PID_MUNGED"
    log "munged up, pid $(cat "$PID_MUNGED") ($(since "$t") s)"
}

ctld_up() { scontrol ping | grep -q ' is UP'; }

node_idle() { [ "$(sinfo -h -N -n "$NODE" -o %t | sort -u)" = idle ]; }

start() {
    need_root start
    if pid_is "$PID_CTLD" slurmctld && pid_is "$PID_SLURMD" slurmd && ctld_up 2>/dev/null; then
        log "already running (state in $STATE)"
        return
    fi
    install_packages
    write_config
    start_munged

    local t
    t="$(now_ms)"
    pid_is "$PID_CTLD" slurmctld && die "slurmctld already running (pid $(cat "$PID_CTLD")) but not answering; run '$0 stop' first"
    # slurmctld leaves its pidfile behind when stopped.
    rm -f "$PID_CTLD"
    # -c: cold start, forget jobs of an earlier cluster in this state folder.
    slurmctld -c -f "$CONF"
    if ! wait_until 30 ctld_up; then
        tail -n 20 "$STATE/log/slurmctld.log" >&2 || true
        die "slurmctld did not answer 'scontrol ping' within 30 s (log: $STATE/log/slurmctld.log)"
    fi
    log "slurmctld up, pid $(cat "$PID_CTLD") ($(since "$t") s)"

    t="$(now_ms)"
    pid_is "$PID_SLURMD" slurmd && die "slurmd already running (pid $(cat "$PID_SLURMD")); run '$0 stop' first"
    rm -f "$PID_SLURMD"
    slurmd -f "$CONF"
    if ! wait_until 60 node_idle; then
        tail -n 20 "$STATE/log/slurmd.log" >&2 || true
        sinfo -N -l >&2 || true
        die "node $NODE not idle within 60 s (log: $STATE/log/slurmd.log)"
    fi
    log "slurmd up, pid $(cat "$PID_SLURMD"), node $NODE idle with $CPUS CPUs ($(since "$t") s)"
    log "started; partitions: $(sinfo -h -o %P | tr '\n' ' ')"
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

no_jobs() { [ -z "$(squeue -h -o %A)" ]; }

# Sends TERM to the program $2 recorded in pidfile $1, waits up to 10 s, then KILLs it.
stop_pid() {
    local file="$1" comm="$2" pid t
    if ! pid_is "$file" "$comm"; then
        log "$comm not running"
        rm -f "$file"
        return
    fi
    t="$(now_ms)"
    pid="$(tr -dc 0-9 <"$file")"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 10 pid_gone "$pid"; then
        log "$comm (pid $pid) ignored TERM for 10 s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 pid_gone "$pid" || die "$comm (pid $pid) survived KILL"
    fi
    rm -f "$file"
    log "$comm stopped, pid $pid ($(since "$t") s)"
}

stop() {
    need_root stop
    # Jobs first, through Slurm (their processes belong to slurmstepd, not to slurmd).
    if pid_is "$PID_CTLD" slurmctld && ctld_up 2>/dev/null; then
        local jobs
        jobs="$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            wait_until 30 no_jobs || log "jobs still ending after 30 s"
        fi
    fi
    stop_pid "$PID_SLURMD" slurmd
    stop_pid "$PID_CTLD" slurmctld
    stop_pid "$PID_MUNGED" munged
    if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
        rm -f "$ETC_CONF"
    fi
    log "stopped"
}

status() {
    local rc=0
    for d in munged:"$PID_MUNGED" slurmctld:"$PID_CTLD" slurmd:"$PID_SLURMD"; do
        local name="${d%%:*}" file="${d#*:}"
        if pid_is "$file" "$name"; then
            echo "$name: running, pid $(cat "$file")"
        elif [ "$name" = munged ] && munge_ok >/dev/null 2>&1; then
            echo "munged: running (not started by cluster.sh)"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    if [ -f "$CONF" ] && ctld_up 2>/dev/null; then
        scontrol ping
        sinfo -N -o '%N %P %t %c %m'
    else
        echo "controller: not answering"
        rc=1
    fi
    return "$rc"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
