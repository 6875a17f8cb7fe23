#!/usr/bin/env bash
# he-types v0.6 on v0.5's own network (the v0.5 default's U-Net, its speed unchanged), from the v0.6
# teacher's snapshot to a built model folder; each step resumes where it stopped, so after any stop run the
# same command again:
#   1. the trunk: wsi-nuc distill configs/he-student-v06-v05net.yaml, v0.5 tuned on the teacher's four
#      sources with their labels and the teacher's instance outputs (600 steps, about 30 minutes at 2 threads);
#   2. the type branch on that frozen trunk: wsi-nuc distill configs/he-types-v06-v05net.yaml (400 steps);
#   3. the build: workflows/models/build-he-types-v06.sh (calibration, post-processing, type weights, ONNX
#      INT8, type trust, the val sets with v0.5 beside it) into RUNS/he-types-v06-v05net-build.
# The teacher snapshot (TEACHER_STEP, default 9000) must exist: workflows/models/make-he-types-v06.sh trains it.
# Usage: nohup workflows/models/make-he-types-v06-v05net.sh [RUNS] >> make-he-types-v06-v05net.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs}
mkdir -p "$R"
PY=${PYTHON:-.venv/bin/python}
T=${THREADS:-2}
STEP=${TEACHER_STEP:-9000}
# TRUNK_STEPS: the trunk's length (default the config's 600; the cosine schedule follows it)
TRUNK_SET=${TRUNK_STEPS:+--set train.steps=$TRUNK_STEPS}
# TEACHER: a teacher model folder instead of the snapshot, e.g. workflows/models/state/he-teacher-v06, the
# finished run's step-12,000 weight average, committed (a fresh checkout's runs/ holds no snapshots)
TM=${TEACHER:-$R/he-teacher-v06/snapshots/$(printf 'step%06d-ema' "$STEP")}
[ -f "$TM/config.json" ] || { echo "$TM: no such teacher snapshot (workflows/models/make-he-types-v06.sh)" >&2; exit 1; }
# TRUNK: a trunk already trained (e.g. a snapshot of step 1's run, chosen by its curve) instead of step 1
if [ -n "${TRUNK:-}" ]; then
    SM=$TRUNK
else
    echo "$(date -u +%FT%TZ) trunk from v0.5, taught by $TM"
    $PY -m wsi_nuc.cli distill configs/he-student-v06-v05net.yaml --out "$R/he-student-v06-v05net" \
        --set train.threads="$T" --set teacher="$TM" $TRUNK_SET >> "$R/he-student-v06-v05net.log" 2>&1
    SM=$R/he-student-v06-v05net/model
fi
[ -f "$SM/config.json" ] || { echo "$SM: the trunk has not run to its last step" >&2; exit 1; }
echo "$(date -u +%FT%TZ) type branch on $SM"
$PY -m wsi_nuc.cli distill configs/he-types-v06-v05net.yaml --out "$R/he-types-v06-v05net" \
    --set train.threads="$T" --set teacher="$SM" --set distill.init_student_from="$SM" \
    --set distill.type_teacher="$TM" >> "$R/he-types-v06-v05net.log" 2>&1
TY=$R/he-types-v06-v05net/model
[ -f "$TY/config.json" ] || { echo "$TY: the type branch has not run to its last step" >&2; exit 1; }
B=$R/he-types-v06-v05net-build
if [ ! -e "$B" ]; then
    echo "$(date -u +%FT%TZ) build"
    workflows/models/build-he-types-v06.sh "$TY" "$B" >> "$R/he-types-v06-v05net-build.log" 2>&1
fi
echo "$(date -u +%FT%TZ) built $B: val sets with v0.5 in $B/val-sets.json"
