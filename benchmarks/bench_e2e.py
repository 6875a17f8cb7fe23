"""End-to-end `wsi-nuc run` timings of several models on one slide, in one benchmark run.

    python benchmarks/bench_e2e.py SLIDE --models default he-teacher [--rounds N] [--json FILE]

Each model runs the full pipeline (LocalCluster, default settings) through benchmarks/peak_rss.py, so
the wall time includes cluster start-up, tissue detection, stitching and writing. Mpx/s is tissue area at
the working resolution (0.5 µm/px) per wall-clock second. ``--rounds N`` runs the models N times,
interleaved (model order alternating), and prints each model's median wall time.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(slide: str, model: str, out: Path, extra: list[str]) -> dict:
    """One `wsi-nuc run`; ``model`` may carry its own flags after ``::`` (``default::--no-types``)."""
    spec = model
    model, _, flags = model.partition("::")
    cmd = [sys.executable, str(HERE / "peak_rss.py"), "--", "wsi-nuc", "run", slide, "--out", str(out), "--quiet",
           *extra, *flags.split()]
    if model != "default":
        cmd += ["--model", model]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{model}: failed\n{p.stderr}")
    m = re.search(r"wall ([\d.]+) s\s+peak RSS \(process tree\) ([\d.]+) GiB\s+largest process ([\d.]+) GiB", p.stderr)
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    mpx = summary["tissue_area_mm2"] / (summary["working_mpp"] ** 2) if summary["tissue_area_mm2"] else 0.0
    wall = float(m.group(1))
    return {"model": spec, "resolved": summary["model"]["name"], "wall_s": wall,
            "peak_rss_gib": float(m.group(2)), "largest_process_gib": float(m.group(3)),
            "nuclei": summary["nucleus_count"], "tissue_mm2": summary["tissue_area_mm2"],
            "tissue_mpx_per_s": mpx / wall, "stages_s": summary["seconds"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("--models", nargs="+", default=["default", "he-teacher"])
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `wsi-nuc run` flags")
    a = ap.parse_args()
    import statistics

    import torch

    rows = []
    for k in range(a.rounds):
        for m in (a.models if k % 2 == 0 else a.models[::-1]):
            with tempfile.TemporaryDirectory() as d:
                r = run_one(a.slide, m, Path(d), a.extra)
            r["round"] = k
            rows.append(r)
            print(f"{m:<18} ({r['resolved']}) wall {r['wall_s']:.1f} s  {r['tissue_mpx_per_s']:.2f} Mpx/s tissue  "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB  nuclei {r['nuclei']}", flush=True)
    med = {m: statistics.median(r["wall_s"] for r in rows if r["model"] == m) for m in a.models}
    print("median wall: " + ", ".join(f"{m} {v:.2f} s" for m, v in med.items()) +
          f"  (CPU capability {torch.backends.cpu.get_cpu_capability()})")
    rows = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "rounds": a.rounds,
            "median_wall_s": med, "runs": rows}
    if "he-teacher" in med:
        for m, v in med.items():
            print(f"speed-up of {m} over he-teacher: {med['he-teacher'] / v:.2f}x")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
