#!/usr/bin/env bash
# he-types v0.6 from a distilled MobileNetV2 U-Net folder (configs/he-types-v06-slim.yaml): the steps after
# training, in order, each one a project command.
#   1. LTS calibration of the foreground on the four val sets (fp32 network), then the watershed settings
#      swept on the same sets (benchmarks/tune_postprocess.py) and the best written into config.json;
#   2. type weights fitted on CoNSeP val (benchmarks/tune_types.py), written into config.json;
#   3. ONNX files, the INT8 one calibrated by ONNX Runtime and made the CPU default ("quantized":
#      "onnx-int8"), with 1. and 2. baked in;
#   4. type trust (calibrated type probabilities, thresholds, tissue check) on CoNSeP val;
#   5. the val sets with v0.5 beside it, in one run.
# Usage: workflows/models/build-he-types-v06.sh DISTILLED_MODEL_DIR OUT_DIR   (OUT_DIR must not exist)
# The build is made in OUT_DIR.partial and renamed to OUT_DIR when every step has passed, so a folder
# OUT_DIR is always a whole build; a stopped build is started again from the beginning.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${1:?distilled model folder}; Q=${2:?output folder (new)}
D=../shared/data
PY=${PYTHON:-.venv/bin/python}
if [ -e "$Q" ]; then echo "$Q: exists; give a new folder" >&2; exit 2; fi
OUT=$Q; Q=$OUT.partial
rm -rf "$Q"                        # this script's own unfinished build
cp -r "$M" "$Q"
$PY -m wsi_nuc.cli calibrate "$Q" --dataset $D/monuseg2018-train --dataset $D/consep-train \
    --dataset $D/dsb2018-stage1-train:colour_brightfield --dataset $D/nuinsseg-train
TP=$(mktemp -d)/tune-postprocess.json
# confidence floors up to 0.6: the 0.7 the sweep chose for the first build dropped a third of the nuclei of
# CMU-1-Small-Region (docs/training.md)
$PY benchmarks/tune_postprocess.py --model "$Q" --threads 2 --floors ${FLOORS:-0.5 0.6} --json "$TP" | tail -1
$PY - "$Q" "$TP" <<'PY'
import json, sys
q, tp = sys.argv[1], sys.argv[2]
best = json.load(open(tp))["results"][-1]["params"]     # sorted by the objective, best last
cfg = json.load(open(f"{q}/config.json"))
cfg["postprocess"] = {**(cfg.get("postprocess") or {}), **best}
json.dump(cfg, open(f"{q}/config.json", "w"), indent=2)
print("postprocess", cfg["postprocess"])
PY
TT=$(mktemp -d)/tune-types.json
$PY benchmarks/tune_types.py --model "$Q" --json "$TT"
$PY - "$Q" "$TT" <<'PY'
import json, sys
q, tt = sys.argv[1], sys.argv[2]
best = json.load(open(tt))["best"]
cfg = json.load(open(f"{q}/config.json"))
cfg["type_weights"] = best["weights"] if isinstance(best, dict) and "weights" in best else best
json.dump(cfg, open(f"{q}/config.json", "w"), indent=2)
print("type_weights", cfg["type_weights"])
PY
$PY -m wsi_nuc.train.onnx_export "$Q" --dataset $D/monuseg2018-train --int8-default
$PY -m wsi_nuc.train.calibrate_types --model "$Q" --dataset $D/consep-train --write \
    --report "$Q/types-calibration"
$PY benchmarks/eval_sets.py --models "$Q" he-types-int8 --threads 2 --out "$Q/val-sets.json"
mv "$Q" "$OUT"
echo "built $OUT"
