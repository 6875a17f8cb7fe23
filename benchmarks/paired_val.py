"""How far apart two models really are on each val set: per-image differences, paired, with an interval.

    python benchmarks/paired_val.py --models runs/CANDIDATE he-types-int8 \
        --out benchmarks/results/paired-val-CANDIDATE.json

`benchmarks/eval_sets.py` gives each set's mean; a shipping rule of "above the default on every val set"
then turns on differences that a handful of images cannot resolve (MoNuSeg val is 5 tiles). Here both
models score the same images (same code as `wsi-nuc eval`), and per set the report gives the mean of the
per-image a-AJI differences (first model minus second: the mean-over-images a-AJI both report), how many
images each model wins, and a 95 % bootstrap interval that resamples whole groups of images that are not
independent: CoNSeP crops by their tile, NuInsSeg images by organ, MoNuSeg and DSB images singly.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from eval_sets import val_sets
from wsi_nuc.evaluate import evaluate

ROUNDS = 10000


def group_of(set_name: str, stem: str) -> str:
    """The unit the bootstrap resamples: a CoNSeP crop's tile (``train_10_003`` → ``train_10``), a NuInsSeg
    image's organ (``human_kidney_07`` → ``human_kidney``), else the image itself.

    >>> group_of("consep_val", "train_10_003"), group_of("nuinsseg_val", "human_kidney_07"), group_of("x", "a_1")
    ('train_10', 'human_kidney', 'a_1')
    """
    if set_name in ("consep_val", "nuinsseg_val"):
        return re.sub(r"_\d+$", "", stem)
    return stem


def per_image(model: str, root: Path, split: str | None, key: str = "aji") -> dict[str, float]:
    """``{stem: metric}`` of ``model`` on the images of ``root``'s ``split``."""
    res = evaluate(root, model, split, "cpu")
    return {im["image"]: float(im[key]) for im in res["images"]}


def paired(a: dict[str, float], b: dict[str, float], groups: dict[str, str], seed: int = 0) -> dict:
    """Mean of ``a − b`` over the images both scored, wins each way, and a 95 % interval from resampling
    the groups with replacement (:data:`ROUNDS` times)."""
    stems = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in stems])
    names = sorted({groups[s] for s in stems})
    idx = [np.array([i for i, s in enumerate(stems) if groups[s] == g]) for g in names]
    rng = np.random.default_rng(seed)
    boot = np.empty(ROUNDS)
    for r in range(ROUNDS):
        pick = np.concatenate([idx[j] for j in rng.integers(0, len(idx), len(idx))])
        boot[r] = d[pick].mean()
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"images": len(stems), "groups": len(names), "mean_diff": round(float(d.mean()), 4),
            "interval_95": [round(float(lo), 4), round(float(hi), 4)],
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
            "largest_image_diff": round(float(d[np.argmax(np.abs(d))]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs=2, required=True, metavar=("A", "B"), help="differences are A − B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report = {"models": args.models, "metric": "a-AJI per image (A − B)", "bootstrap_rounds": ROUNDS,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (root, split) in val_sets(Path(tmp)).items():
            a, b = (per_image(m, root, split) for m in args.models)
            groups = {s: group_of(name, s) for s in a}
            report["sets"][name] = {"mean_a": round(float(np.mean(list(a.values()))), 4),
                                    "mean_b": round(float(np.mean(list(b.values()))), 4), **paired(a, b, groups)}
            print(name, report["sets"][name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
