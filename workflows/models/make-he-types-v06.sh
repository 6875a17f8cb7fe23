#!/usr/bin/env bash
# he-types v0.6 from nothing to a built model folder, in three steps; each resumes where it stopped, so
# after any stop (a closed session, SIGTERM) run the same command again:
#   1. the teacher: wsi-nuc train configs/he-teacher-v06.yaml (a 12,000-step schedule; about 20 CPU-hours
#      on a 2-core AVX2 machine), here run up to the snapshot the default is distilled from, step
#      TEACHER_STEP (9,000 for v0.6: 72,000 samples, the learning rate at 5 % of its peak); a run that is
#      already past it is left as it is;
#   2. the slim student: wsi-nuc distill configs/he-types-v06-slim.yaml, narrowed from that snapshot's
#      weight average and tuned with its outputs (1,500 steps, about 2 hours at 2 threads);
#   3. the build: workflows/models/build-he-types-v06.sh (calibration, post-processing, type weights,
#      ONNX INT8, type trust, the val sets with v0.5 beside it) into RUNS/he-types-v06-build.
# Usage: nohup workflows/models/make-he-types-v06.sh [RUNS] >> make-he-types-v06.log 2>&1 &
#        (RUNS defaults to runs/; THREADS=1 while other work shares the cores; each step logs to RUNS/*.log)
# Pause: kill -TERM the running `wsi_nuc.cli train` or `distill` process: it writes a checkpoint and exits,
# and this script stops with it. The teacher's own schedule goes on with
# `wsi-nuc train configs/he-teacher-v06.yaml --out RUNS/he-teacher-v06`.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs}
PY=${PYTHON:-.venv/bin/python}
T=${THREADS:-2}
STEP=${TEACHER_STEP:-9000}
TM=$R/he-teacher-v06/snapshots/$(printf 'step%06d-ema' "$STEP")
mkdir -p "$R"
if [ ! -f "$TM/config.json" ]; then
    echo "$(date -u +%FT%TZ) teacher to step $STEP"
    $PY -m wsi_nuc.cli train configs/he-teacher-v06.yaml --out "$R/he-teacher-v06" --set train.threads="$T" \
        --set train.stop_at="$STEP" >> "$R/he-teacher-v06.log" 2>&1
fi
[ -f "$TM/config.json" ] || { echo "$TM: no such teacher snapshot" >&2; exit 1; }
echo "$(date -u +%FT%TZ) slim student from $TM"
$PY -m wsi_nuc.cli distill configs/he-types-v06-slim.yaml --out "$R/he-types-v06-slim" \
    --set train.threads="$T" --set teacher="$TM" --set data.stain_target="$TM" \
    --set distill.init_student_from="$TM" >> "$R/he-types-v06-slim.log" 2>&1
SM=$R/he-types-v06-slim/model
[ -f "$SM/config.json" ] || { echo "$SM: the student has not run to its last step" >&2; exit 1; }
B=$R/he-types-v06-build
if [ ! -e "$B" ]; then
    echo "$(date -u +%FT%TZ) build"
    workflows/models/build-he-types-v06.sh "$SM" "$B" >> "$R/he-types-v06-build.log" 2>&1
fi
echo "$(date -u +%FT%TZ) built $B: val sets with v0.5 in $B/val-sets.json"
