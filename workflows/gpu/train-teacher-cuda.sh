#!/usr/bin/env bash
# Train the long teacher run on a GPU for a fixed time, from (and back into) its CPU checkpoint.
#
#   bash workflows/gpu/train-teacher-cuda.sh [MINUTES] [RUN_DIR] [CONFIG]
#
# Resumes RUN_DIR/checkpoint.pt (the CPU run's, or a fresh start), trains on CUDA with bfloat16 autocast and
# one batch worker per spare core for MINUTES (default 10), then writes the checkpoint and a snapshot: the CPU
# run resumes from the same checkpoint (`wsi-nuc train CONFIG --out RUN_DIR`), or `distill` reads the
# snapshot. The schedule is the config's (steps, cosine), so GPU steps count as CPU steps would.
# DEVICE=cpu runs the same thing on the CPU (how it is tested: tests/test_train_speed.py).
# Where $OUT is set (the device machine), the checkpoint, the newest snapshot and the log are copied there.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:-10}
RUN=${2:-runs/he-teacher-v06}
CONFIG=${3:-configs/he-teacher-v06.yaml}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
shift $(( $# < 3 ? $# : 3 )) || true
mkdir -p "$RUN"
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
fi
PYTHONUNBUFFERED=1 "$PY" -m wsi_nuc.cli train "$CONFIG" --out "$RUN" \
  --set train.device="$DEVICE" --set train.max_minutes="$MINUTES" "$@" 2>&1 | tee -a "$RUN/gpu.log"
if [ -n "${OUT:-}" ]; then
  cp "$RUN/checkpoint.pt" "$RUN/log.jsonl" "$RUN/gpu.log" "$OUT/"
  snap=$(ls -d "$RUN"/snapshots/step* 2>/dev/null | sort | tail -n 1)
  [ -n "$snap" ] && mkdir -p "$OUT/snapshot" && cp "$snap"/* "$OUT/snapshot/"
fi
echo "checkpoint: $RUN/checkpoint.pt"
