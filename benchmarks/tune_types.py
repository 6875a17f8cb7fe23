"""Fit a typed model's ``type_weights`` (logit adjustment of its type softmax) on CoNSeP val.

    python benchmarks/tune_types.py --model runs/he-student-v03b-int8 --json benchmarks/results/tune-types.json

The network runs once per image (maps cached, the model's own ``type_weights`` ignored); each candidate
re-weights the type probabilities (:func:`wsi_nuc.predict.reweight_types`) and is scored with the same
code as ``wsi-nuc eval``. The objective is the mean of the four F_c (HoVer-Net's per-type F1), so a rare
type counts as much as a common one; coordinate ascent over one weight at a time on a log grid, two
rounds. Instances do not depend on the weights, so F_d and a-AJI stay put (checked and printed). Fitting
on val selects on val: report the hidden CoNSeP test figure when there is one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from eval_sets import SHARED
from tune_postprocess import cache_maps
from wsi_nuc.evaluate import evaluate
from wsi_nuc.predict import get_predictor, reweight_types

STEPS = (0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    pred = get_predictor(a.model, "cpu")
    names = list(pred.types)
    if not names:
        raise SystemExit(f"{a.model}: the model has no type head")
    pred.config = {**pred.config, "type_weights": None}
    cache_maps(pred)
    cached = pred.maps
    root = SHARED / "consep-train"

    def score(w) -> dict:
        pred.maps = lambda images, stain=None, tta=1: reweight_types(cached(images, stain, tta), w)
        agg = evaluate(root, a.model, "val", "cpu")["aggregate"]   # get_predictor returns `pred` (cached)
        fc = [agg.get(f"f_c_{n.replace('-', '_')}") or 0.0 for n in names]
        return {"weights": [round(x, 3) for x in w], "f_c_mean": round(float(np.mean(fc)), 4),
                **{f"f_c_{n.replace('-', '_')}": round(v, 4) for n, v in zip(names, fc)},
                "f_d": round(agg["f_d"], 4), "aji": round(agg["aji"], 4)}

    w = [1.0] * len(names)
    rows = [score(w)]
    best = rows[0]
    print(json.dumps(best), flush=True)
    for _ in range(a.rounds):
        for k in range(len(names)):
            base = list(best["weights"])
            for m in STEPS:
                if m == 1.0:
                    continue
                cand = list(base)
                cand[k] = base[k] * m
                r = score(cand)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if r["f_c_mean"] > best["f_c_mean"]:
                    best = r
    print("best:", json.dumps(best))
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "types": names, "start": rows[0], "best": best,
                                            "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
