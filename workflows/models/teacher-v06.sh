#!/usr/bin/env bash
# The v0.6 teacher's long run across machines: its checkpoint travels in git as one safetensors file
# (wsi_nuc/train/carry.py), because runs/ does not.
#   workflows/models/teacher-v06.sh start    restore the carried state if RUNS has no checkpoint, then train
#                                            in the background (THREADS, default 2; PID in RUNS/TRAIN.pid,
#                                            log in RUNS/he-teacher-v06.log); the same command resumes
#   workflows/models/teacher-v06.sh stop     SIGTERM: the run finishes its step, writes its checkpoint, exits
#   workflows/models/teacher-v06.sh carry    stop, then export the checkpoint over the carried file (commit it)
# RUNS defaults to runs/. The run finished at step 12,000: its carried checkpoint was replaced by its final
# weights, the model folder workflows/models/state/he-teacher-v06, and `start` says so instead of training.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RUNS:-runs}
PY=${PYTHON:-.venv/bin/python}
STATE=workflows/models/state/he-teacher-v06.safetensors
FINAL=workflows/models/state/he-teacher-v06    # the finished run's weights (step 12,000, weight average)
RUN=$R/he-teacher-v06
PID=$R/TRAIN.pid
running() { [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; }
stop() {
    if running; then
        kill -TERM "$(cat "$PID")"
        while running; do sleep 1; done
        tail -n 1 "$R/he-teacher-v06.log"
    fi
}
case "${1:-}" in
start)
    if running; then echo "already training: PID $(cat "$PID")" >&2; exit 1; fi
    if [ ! -f "$RUN/checkpoint.pt" ] && [ ! -f "$STATE" ] && [ -f "$FINAL/config.json" ]; then
        echo "the run is finished (12,000 steps): its weights are the model folder $FINAL" >&2; exit 0
    fi
    mkdir -p "$R"
    if [ ! -f "$RUN/checkpoint.pt" ] && [ -f "$STATE" ]; then
        $PY -m wsi_nuc.train.carry restore "$STATE" "$RUN"
    fi
    nohup bash -c 'echo $$ > "$0"; exec "$1" -m wsi_nuc.cli train configs/he-teacher-v06.yaml --out "$2" \
        --set train.threads="$3"' "$PID" "$PY" "$RUN" "${THREADS:-2}" >> "$R/he-teacher-v06.log" 2>&1 &
    sleep 1; echo "training: PID $(cat "$PID"), log $R/he-teacher-v06.log";;
stop) stop;;
carry)
    stop
    $PY -m wsi_nuc.train.carry export "$RUN" "$STATE"
    echo "now: git add $STATE && git commit";;
*) echo "usage: $0 start|stop|carry" >&2; exit 2;;
esac
