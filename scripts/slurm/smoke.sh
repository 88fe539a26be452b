#!/usr/bin/env bash
# Smoke test of a real Slurm on this machine: the mechanisms cluster sweeps rely on.
#
#   scripts/slurm/smoke.sh            # as root; starts the cluster if needed, stops it after
#
# 1. a 4-task array job writes one file per task (identity from the environment) and one
#    log per task (--output=%A_%a); waited for with a squeue loop;
# 2. TERM to a batch script that traps it and runs a child "worker" in the background:
#    `scancel --signal=TERM` (steps only) must NOT reach it, `scancel --batch --signal=TERM`
#    (what --signal=B:TERM@N does at the deadline) must, and the trap forwards it to the child;
# 3. the same with `exec`: the worker replaces the shell and gets the signal itself.
# SMOKE_DEADLINE=1 adds a job with --time=1 --signal=B:TERM@50 and measures when the signal
# arrives (about a minute). A cluster that was already running is left running.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HERE/cluster.sh"
STATE="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
export SLURM_CONF="$STATE/slurm.conf"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
since() { local d=$(($(now_ms) - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
T0="$(now_ms)"
log() { printf '[smoke %5ss] %s\n' "$(since "$T0")" "$*"; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

# Polls `$@` every 0.2 s until it succeeds or $1 seconds pass.
wait_until() {
    local limit="$1"; shift
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.2
    done
}
job_gone() { [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; }
job_state() { scontrol -o show job "$1" | grep -o 'JobState=[A-Z_]*' | head -n1 | cut -d= -f2; }

started_here=0
t="$(now_ms)"
if "$CLUSTER" status >/dev/null 2>&1; then
    log "cluster already running"
else
    "$CLUSTER" start
    started_here=1
    log "cluster start took $(since "$t") s (install included when it ran)"
fi
stop_after=0
if [ "$started_here" = 1 ] && [ "${SMOKE_KEEP:-0}" != 1 ]; then
    stop_after=1
    # On failure too (the work folder is kept for a look).
    trap 'cd /; "$CLUSTER" stop' EXIT
fi

WORK="$(mktemp -d /tmp/harness-slurm-smoke.XXXXXX)"
cd "$WORK"  # sbatch's default output folder and the jobs' working folder
log "work folder $WORK"

# 1. A 4-task array job.
cat >array.sh <<EOF
#!/bin/bash
#SBATCH --job-name=smoke-array
#SBATCH --array=0-3
#SBATCH --output=$WORK/array-%A_%a.log
#SBATCH --time=5
echo "task \$SLURM_ARRAY_TASK_ID of \$SLURM_ARRAY_JOB_ID on \$SLURMD_NODENAME"
printf '%s %s %s %s\n' "\$SLURM_ARRAY_JOB_ID" "\$SLURM_ARRAY_TASK_ID" "\$SLURM_JOB_ID" "\$SLURMD_NODENAME" >$WORK/task-\$SLURM_ARRAY_TASK_ID
sleep 2
EOF
t="$(now_ms)"
job="$(sbatch --parsable array.sh)"
job="${job%%;*}"
wait_until 120 job_gone "$job" || fail "array job $job still queued after 120 s: $(squeue -j "$job")"
log "array job $job (4 tasks x 2 s) done in $(since "$t") s"
for i in 0 1 2 3; do
    [ -f "task-$i" ] || fail "array task $i wrote nothing"
    read -r a tid jid node <"task-$i"
    if [ "$a" != "$job" ] || [ "$tid" != "$i" ] || [ "$node" != "$(hostname -s)" ]; then
        fail "task $i identity: array=$a task=$tid node=$node, expected $job $i $(hostname -s)"
    fi
    grep -q "^task $i of $job on " "array-${job}_$i.log" || fail "log array-${job}_$i.log lacks the task's line"
    echo "  task $i: SLURM_JOB_ID=$jid log array-${job}_$i.log"
done

# 2. TERM reaches a batch shell that traps it, and the trap forwards it to the worker.
cat >worker.sh <<'EOF'
#!/bin/bash
# Stand-in for `harness worker`: records TERM, then exits like a worker that checkpointed.
trap 'echo term >"$1/worker-term"; exit 0' TERM
echo "$$" >"$1/worker-started"
while :; do sleep 0.1; done
EOF
chmod +x worker.sh
cat >forward.sh <<EOF
#!/bin/bash
#SBATCH --job-name=smoke-forward
#SBATCH --output=$WORK/forward.log
#SBATCH --time=5
mkdir -p $WORK/forward
trap 'echo term >$WORK/forward/shell-term; kill -TERM "\$worker" 2>/dev/null' TERM
$WORK/worker.sh $WORK/forward &
worker=\$!
wait "\$worker"; rc=\$?
# wait returns as soon as the trap has run: wait again for the worker's own exit.
while kill -0 "\$worker" 2>/dev/null; do wait "\$worker"; rc=\$?; done
echo "worker exit \$rc"
EOF
t="$(now_ms)"
job="$(sbatch --parsable forward.sh)"
job="${job%%;*}"
wait_until 60 test -f forward/worker-started || fail "job $job did not start its worker"
scancel --signal=TERM "$job"
sleep 2
if [ -f forward/shell-term ] || [ -f forward/worker-term ]; then
    fail "'scancel --signal=TERM' reached the batch shell; expected it to signal job steps only"
fi
log "scancel --signal=TERM (no --batch): batch shell not signalled, as documented"
scancel --batch --signal=TERM "$job"
wait_until 10 test -f forward/worker-term || fail "TERM was not forwarded to the worker"
[ -f forward/shell-term ] || fail "the batch shell's TERM trap did not run"
wait_until 30 job_gone "$job" || fail "job $job still running after its worker exited"
grep -q '^worker exit 0$' forward.log || fail "forward.log: $(cat forward.log)"
log "scancel --batch --signal=TERM: trap ran, worker got TERM, exited 0, job $(job_state "$job") ($(since "$t") s)"

# 3. With exec the worker is the batch shell's process and gets TERM itself.
cat >exec.sh <<EOF
#!/bin/bash
#SBATCH --job-name=smoke-exec
#SBATCH --output=$WORK/exec.log
#SBATCH --time=5
mkdir -p $WORK/exec
exec $WORK/worker.sh $WORK/exec
EOF
t="$(now_ms)"
job="$(sbatch --parsable exec.sh)"
job="${job%%;*}"
wait_until 60 test -f exec/worker-started || fail "job $job did not start its worker"
scancel --batch --signal=TERM "$job"
wait_until 10 test -f exec/worker-term || fail "TERM did not reach the exec'd worker"
wait_until 30 job_gone "$job" || fail "job $job still running after its worker exited"
log "exec: worker got TERM, job $(job_state "$job") ($(since "$t") s)"

# Optional: the deadline signal itself.
if [ "${SMOKE_DEADLINE:-0}" = 1 ]; then
    cat >deadline.sh <<EOF
#!/bin/bash
#SBATCH --job-name=smoke-deadline
#SBATCH --output=$WORK/deadline.log
#SBATCH --time=1
#SBATCH --signal=B:TERM@50
mkdir -p $WORK/deadline
date +%s%N >$WORK/deadline/start
exec $WORK/worker.sh $WORK/deadline
EOF
    job="$(sbatch --parsable deadline.sh)"
    job="${job%%;*}"
    wait_until 60 test -f deadline/start || fail "deadline job $job did not start"
    wait_until 70 test -f deadline/worker-term || fail "no TERM within 70 s of a 60 s limit"
    start="$(cat deadline/start)"
    got="$(stat -c %Y deadline/worker-term)"
    log "--time=1 --signal=B:TERM@50: TERM $((got - start / 1000000000)) s after the start (asked: 10 s)"
fi

cd /
rm -rf "$WORK"
if [ "$stop_after" = 1 ]; then
    trap - EXIT
    t="$(now_ms)"
    "$CLUSTER" stop
    log "cluster stop took $(since "$t") s"
fi
log "smoke: OK"
