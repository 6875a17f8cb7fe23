#!/usr/bin/env bash
# The driver: submit a cohort to a running scheduler. Run it where OUT is on fast, shared-enough disk;
# stitching and writing happen here (a few cores and memory for the slides in flight).
#
#   workflows/dask-cli/batch.sh tcp://SCHEDULER_HOST:8786 COHORT OUT [extra flags, e.g. --device cuda]
set -euo pipefail
sched="${1:?usage: batch.sh tcp://host:8786 COHORT OUT [flags...]}"
cohort="${2:?cohort}"
out="${3:?out}"
shift 3
exec wsi-nuc batch "$cohort" --out "$out" --scheduler "$sched" "$@"
