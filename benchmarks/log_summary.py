"""Summarise a training/distillation run's log.jsonl as the training-log.md shipped beside a model.

    python benchmarks/log_summary.py /work/runs/he-student --name he-student --every 100 \
        --note "resumed at step 500 with train.steps=1800" > wsi_nuc/models/he-student/training-log.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--name", required=True)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    log = Path(a.run) / "log.jsonl"
    train, val = {}, []
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "val_loss" in r:
            val.append(r)
        elif "ema" in r:
            train[int(r["step"])] = r  # a resumed run rewrites steps: keep the latest record
    last = train[max(train)]
    print(f"# {a.name} training log summary ({log.name} of the run folder)\n")
    print("| step | loss (EMA) | lr |\n|---|---|---|")
    for s in sorted(train):
        if s % a.every == 0 or s == max(train):
            print(f"| {s} | {train[s]['ema']:.3f} | {train[s]['lr']:.2e} |")
    print("\nVal records: " + "; ".join(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in r.items()}) for r in val[-6:]))
    print(f"\nCPU time: {last['cpu_s'] / 3600:.2f} CPU-hours over {max(train)} steps. {a.note}".rstrip())


if __name__ == "__main__":
    main()
