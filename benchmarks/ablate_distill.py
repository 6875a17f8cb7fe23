"""Distillation ablation: short student runs from scratch, one term switched off per run, scored on val.

    python benchmarks/ablate_distill.py configs/he-student.yaml --steps 200 --runs /work/runs/ablate \
        --json benchmarks/results/distill-ablation.json

Every run uses the same seed, teacher, data and schedule (``train.steps`` = ``--steps``); only the named
``distill.*`` weights change. Each finished run is scored on the MoNuSeg val split with the shipped
he-student's post-processing settings, so the differences come from the training signal alone. A run
folder that already holds a model is scored without retraining (the script resumes).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "full": {},
    "no-supervised": {"distill.supervised": 0},
    "no-kl": {"distill.kd_fg": 0, "distill.kd_boundary": 0, "distill.kd_centre": 0},
    "no-regression-kd": {"distill.kd_dist": 0, "distill.kd_hv": 0},
    "no-feature-matching": {"distill.feat": 0},
    "no-rare-weighting": {"distill.rare_weight": 0},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", required=True, help="folder for the run folders")
    ap.add_argument("--dataset", default="../shared/data/monuseg2018-train")
    ap.add_argument("--only", nargs="*", help="variant names (default all)")
    ap.add_argument("--json")
    a = ap.parse_args()

    from wsi_nuc.evaluate import evaluate
    from wsi_nuc.model.io import SHIPPED, read_model_config

    params = read_model_config(SHIPPED / "he-student").get("postprocess") or {}
    rows = []
    for name, sets in VARIANTS.items():
        if a.only and name not in a.only:
            continue
        run = Path(a.runs) / name
        model = run / "model"
        if not (model / "config.json").is_file():
            cmd = [sys.executable, "-m", "wsi_nuc.cli", "distill", a.config, "--out", str(run),
                   "--set", f"train.steps={a.steps}", "--set", "train.val_every=100000",
                   "--set", "train.snapshot_every=100000"]
            for k, v in sets.items():
                cmd += ["--set", f"{k}={v}"]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        r = evaluate(a.dataset, model=str(model), split="val", params=params)["aggregate"]
        cpu_h = read_model_config(model).get("training", {}).get("cpu_hours")
        row = {"variant": name, "off": sets, "steps": a.steps, "cpu_hours": cpu_h,
               "aji": round(r["aji"], 4), "pq": round(r["pq"], 4), "f1": round(r["f1"], 4)}
        rows.append(row)
        print(f"{name:<22} a-AJI {row['aji']:.4f}  PQ {row['pq']:.4f}  F1 {row['f1']:.4f}", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
