"""Training steps per second of one config under several loops and step settings, interleaved in one run.

    git archive dcb0609 | tar -x -C /tmp/base-train          # the loop before the speed settings
    python benchmarks/bench_train_speed.py --baseline-src /tmp/base-train --steps 25 --rounds 2 \
        --out benchmarks/results/train-speed.json

Each variant is a whole ``wsi-nuc train CONFIG --set train.steps=N`` process of its source tree (fresh
output folder, no validation until the end). Its rate is taken from ``log.jsonl``'s time stamps between
step 10 and step N, so loading the data and the first steps (allocator warm-up) are left out. Variants of
this tree: ``defaults`` (what ``auto`` picks here), ``fp32-nchw-inline`` (the old loop's settings),
``channels-last-inline``, ``channels-last-prefetch``, ``nchw-prefetch``, and ``bf16`` where the CPU has
native bfloat16. The CPU capability is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_outputs import _DRIVER  # noqa: E402 - imports the given tree's wsi_nuc, not the installed one


def variants(baseline: str | None) -> list[tuple[str, str, list[str]]]:
    from wsi_nuc.train.speed import cpu_has_native_bf16

    v = [("defaults", str(ROOT), []),
         ("fp32-nchw-inline", str(ROOT), ["train.precision=fp32", "train.channels_last=false", "train.prefetch=0"]),
         ("channels-last-inline", str(ROOT), ["train.precision=fp32", "train.prefetch=0", "train.channels_last=true"]),
         ("channels-last-prefetch", str(ROOT), ["train.precision=fp32", "train.prefetch=1", "train.channels_last=true"]),
         ("nchw-prefetch", str(ROOT), ["train.precision=fp32", "train.prefetch=1", "train.channels_last=false"])]
    if cpu_has_native_bf16():
        v.append(("bf16-channels-last-inline", str(ROOT), ["train.precision=bf16", "train.prefetch=0",
                                                           "train.channels_last=true"]))
    if baseline:
        v.insert(0, ("baseline", baseline, []))
    return v


def one(src: str, config: str, steps: int, sets: list[str], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-c", _DRIVER, src, "train", config, "--out", tmp,
                "--set", f"train.steps={steps}", "--set", f"train.val_every={10 * steps}",
                "--set", f"train.snapshot_every={10 * steps}", "--set", f"train.threads={threads}"]
        for s in sets:
            args += ["--set", s]
        env = dict(os.environ, PYTHONPATH=src)
        t0 = time.perf_counter()
        p = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode:
            raise SystemExit(f"{src}: exit {p.returncode}: {p.stderr[-2000:]}")
        used = [ln[13:] for ln in p.stderr.splitlines() if ln.startswith("wsi_nuc from")]
        wall = time.perf_counter() - t0
        log = [json.loads(x) for x in (Path(tmp) / "log.jsonl").read_text().splitlines()]
        t = {r["step"]: r["time"] for r in log if "time" in r}
        a, b = 10, max(t)
        return {"steps_per_s": round((b - a) / (t[b] - t[a]), 4), "s_per_step": round((t[b] - t[a]) / (b - a), 3),
                "process_wall_s": round(wall, 1), "package": used[0] if used else None}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/he-teacher.yaml")
    ap.add_argument("--baseline-src", help="a source tree of the old loop (e.g. dcb0609)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="variant names to run")
    ap.add_argument("--out")
    a = ap.parse_args()
    vs = [v for v in variants(a.baseline_src) if not a.only or v[0] in a.only]
    res = {"config": a.config, "steps": a.steps, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu_native_bf16": vs and __import__("wsi_nuc.train.speed", fromlist=["x"]).cpu_has_native_bf16(),
           "torch": torch.__version__, "rounds": {}}
    for r in range(a.rounds):
        for name, src, sets in vs:
            row = one(src, a.config, a.steps, sets, a.threads)
            res["rounds"].setdefault(name, []).append(row)
            print(r, name, row, flush=True)
    best = {n: max(x["steps_per_s"] for x in rows) for n, rows in res["rounds"].items()}
    res["best_steps_per_s"] = best
    if "baseline" in best:
        res["speedup_vs_baseline"] = {n: round(v / best["baseline"], 3) for n, v in best.items()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
