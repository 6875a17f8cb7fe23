#!/usr/bin/env bash
# A cohort on this machine: `wsi-nuc batch` starts a LocalCluster of single-threaded worker processes.
#
#   workflows/local/run.sh COHORT [OUT] [extra wsi-nuc batch flags...]
#   WORKERS=4 workflows/local/run.sh slides/ out --tile 512
#
# COHORT: a CSV with a `path` column, a folder of slides, a quoted glob ('slides/*.svs') or one slide.
# Re-running the same command resumes (finished slides are skipped); add --force to redo them.
# Exit status: 0 all slides done, 1 some failed (see OUT/cohort.csv), 2 bad usage.
set -euo pipefail
cohort="${1:?usage: run.sh COHORT [OUT] [wsi-nuc batch flags...]}"
out="${2:-wsi-nuc-out}"
shift $(( $# >= 2 ? 2 : 1 ))
exec wsi-nuc batch "$cohort" --out "$out" --workers "${WORKERS:-2}" "$@"
