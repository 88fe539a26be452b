#!/usr/bin/env bash
# CI against a real Slurm: starts a single-node cluster (installing Debian's slurmctld,
# slurmd, slurm-client and munge when missing; scripts/slurm/cluster.sh), runs the
# HARNESS_SLURM_TEST=1 integration tests against it, and stops every daemon it started, by
# PID, also when a test fails (trap). A cluster that was already up is used and left up.
#
#   scripts/slurm/ci.sh           # as root, after `cargo build --release --all-targets`
#
# The tests (tests/it/slurm_cluster.rs, tests/it/slurm_sweep.rs): the batch script's
# identity, per-task logs and TERM delivery; a micro sweep of four experiments (two sharing
# a stage 1) as three overlapping array tasks, each stage trained exactly once, a second
# submission finding nothing to do, and a task signalled mid-stage resumed by a
# resubmission. They run one at a time: they share the cluster's 8 declared CPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=scripts/slurm/cluster.sh
started=0
stop() {
    local rc=$?
    if [ "$started" = 1 ]; then
        "$CLUSTER" stop || rc=1
    fi
    exit "$rc"
}
trap stop EXIT

if "$CLUSTER" status >/dev/null 2>&1; then
    echo "ci.sh: a cluster is already running; using it and leaving it running"
else
    # Set before starting: a start that fails halfway still stops what it started.
    started=1
    "$CLUSTER" start
fi
# The client commands read the cluster's config through /etc/slurm/slurm.conf, or this.
eval "$("$CLUSTER" env)"

t0=$SECONDS
HARNESS_SLURM_TEST=1 cargo test --release --test it slurm -- --test-threads=1
echo "ci.sh: Slurm tests took $((SECONDS - t0)) s"
