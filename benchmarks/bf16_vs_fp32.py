"""Accuracy per step of bfloat16 autocast against fp32: the same config, seeds and steps, val loss after.

    python benchmarks/bf16_vs_fp32.py --steps 100 --seeds 0 1 --out benchmarks/results/bf16-vs-fp32.json

A reduced he-teacher (base 16, crop 128, batch 4: bfloat16 is emulated, 8x slower, on a CPU without
AVX512-BF16, and its numbers are the same there) trained ``--steps`` steps per (precision, seed); the val
loss per source at the end (always computed in fp32) is compared. Within noise means the bf16-fp32
difference is no larger than the seed-to-seed spread of fp32.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(precision: str, seed: int, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"model.base": 16, "train.crop": 128, "train.batch": 4, "train.steps": steps,
                "train.val_every": steps, "train.snapshot_every": 10 * steps, "train.threads": threads,
                "train.precision": precision, "train.seed": seed, "train.warmup": max(1, steps // 10)}
        args = [sys.executable, "-m", "wsi_nuc.cli", "train", "configs/he-teacher.yaml", "--out", tmp]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
        log = [json.loads(x) for x in (Path(tmp) / "log.jsonl").read_text().splitlines()]
        val = [r for r in log if "val_loss" in r][-1]
        return {"precision": precision, "seed": seed, "val_loss": round(val["val_loss"], 4),
                "train_ema": round([r for r in log if "ema" in r][-1]["ema"], 4)}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    for seed in a.seeds:
        for prec in ("fp32", "bf16"):
            rows.append(run(prec, seed, a.steps, a.threads))
            print(rows[-1], flush=True)
    fp = [r["val_loss"] for r in rows if r["precision"] == "fp32"]
    bf = [r["val_loss"] for r in rows if r["precision"] == "bf16"]
    res = {"steps": a.steps, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows,
           "fp32_seed_spread": round(max(fp) - min(fp), 4),
           "bf16_minus_fp32_per_seed": [round(b - f, 4) for b, f in zip(bf, fp)]}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
