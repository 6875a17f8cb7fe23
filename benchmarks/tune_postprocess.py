"""Sweep the watershed post-processing settings of a model on the union of the val sets (maps cached).

    python benchmarks/tune_postprocess.py --model runs/he-teacher-v03/model --json results/tune.json

Every setting is scored with the same code as `wsi-nuc eval` on MoNuSeg val, CoNSeP val, DSB H&E val and NuInsSeg val
(see eval_sets.py); the network runs once per image and scale (its maps are cached), only the watershed
is repeated. The objective is the mean over the sets of (a-AJI + PQ) / 2, so no set decides alone.
Prints one line per setting, best last. Tune on val sparingly: the hidden sets differ.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np

from eval_sets import val_sets
from wsi_nuc.evaluate import evaluate
from wsi_nuc.predict import get_predictor


def cache_maps(pred) -> None:
    """Memoise ``pred.maps`` by the bytes of its input (the sweep re-segments the same images)."""
    plain = pred.maps
    memo: dict = {}

    def maps(images, stain=None, tta=1):
        key = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest() + str(images.shape) + str(tta)
        if key not in memo:
            memo[key] = plain(images, stain, tta=tta)
        return memo[key]

    pred.maps = maps


def grid(hv_weights=(0.0,), floors=(0.5, 0.6, 0.7)) -> list[dict]:
    out = []
    for fg, mt, bw, hv, conf in itertools.product((0.4, 0.5), (0.2, 0.3, 0.4), (0.25, 0.5, 1.0), hv_weights,
                                                  floors):
        out.append(dict(marker="dist", fg_threshold=fg, marker_threshold=mt, boundary_weight=bw,
                        hv_weight=hv, min_confidence=conf))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--hv-weights", type=float, nargs="+", default=[0.0],
                    help="HoVer-Net centre-offset edge weights to try (models with those maps)")
    ap.add_argument("--floors", type=float, nargs="+", default=[0.5, 0.6, 0.7],
                    help="confidence floors (min_confidence) to try")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    pred = get_predictor(a.model, "cpu")
    cache_maps(pred)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = val_sets(Path(tmp))
        for g in grid(tuple(a.hv_weights), tuple(a.floors)):
            row = {"params": g}
            for name, (root, split) in sets.items():
                agg = evaluate(root, a.model, split, "cpu", params=g)["aggregate"]
                row[name] = {"aji": round(agg["aji"], 4), "pq": round(agg["pq"], 4)}
            row["objective"] = round(float(np.mean([(row[n]["aji"] + row[n]["pq"]) / 2 for n in sets])), 4)
            results.append(row)
            print(json.dumps(row), flush=True)
    results.sort(key=lambda r: r["objective"])
    print("best:", json.dumps(results[-1]))
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
