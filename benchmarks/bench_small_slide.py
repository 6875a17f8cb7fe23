"""Wall time of `wsi-nuc run` on a small slide, before and after, interleaved, with a breakdown.

    python benchmarks/bench_small_slide.py [--slide S] [--runs 3] [--ref-commit main] [--modes auto local]

Each run is a fresh `wsi-nuc run SLIDE --out TMP` process (as a user runs it; stderr not a terminal, so the
progress comes as plain lines). Variants, run round-robin so that load on a shared machine falls on all alike:
``ref`` (the package of ``--ref-commit``, extracted with ``git archive``, on ``PYTHONPATH``) and this
checkout with each ``--scheduler`` of ``--modes``. Reported per variant: the median wall time (outside
the process: interpreter start, imports, everything), CPU seconds (user + sys, worker processes included),
and the median of each stage of ``summary.json``'s ``seconds``; ``before tiles`` is the time from the start of
segmenting (or loading the model) to the first finished tile, read from the progress lines; ``start`` is
the time outside the run's own clock (interpreter start, imports, exit); ``s_per_tile`` the steady-state
seconds per tile after the first finished tile (progress lines).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SLIDE = ROOT.parent / "shared/slides/CMU-1-Small-Region.svs"
LINE = re.compile(r"\[\s*([\d.]+) s\] [^:]+: (.*)")


def extract(commit: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="wsi_nuc_ref-"))
    blob = subprocess.run(["git", "archive", commit, "wsi_nuc"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        tf.extractall(dest, filter="data")
    return dest


def run_once(slide: str, src: Path, extra: list[str]) -> dict:
    """One `wsi-nuc run` of the package at ``src`` (a folder holding ``wsi_nuc``)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", "import sys; from wsi_nuc.cli import main; sys.exit(main())",
               "run", slide, "--out", out, *extra]
        env = dict(os.environ, PYTHONPATH=str(src))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=src, env=env)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"{cmd} failed:\n{p.stderr[-3000:]}")
        summary = json.loads(next(Path(out).glob("*/summary.json")).read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [(float(m.group(1)), m.group(2)) for m in map(LINE.match, p.stderr.splitlines()) if m]
    seg = next((t for t, msg in lines if msg.startswith(("loading the model", "segmenting 0/"))), None)
    done = [(t, int(m.group(1))) for t, msg in lines if (m := re.match(r"segmenting ([1-9]\d*)/", msg))]
    first = done[0][0] if done else None
    # steady state: seconds per tile from the first finished tiles to the last
    per_tile = (done[-1][0] - done[0][0]) / (done[-1][1] - done[0][1]) if len(done) > 1 and done[-1][1] > done[0][1] \
        else None
    sec = summary["seconds"]
    return {"wall": wall, "cpu": cpu, "stages": sec, "start": wall - sec["total"],
            "before_tiles": first - seg if first is not None and seg is not None else None, "s_per_tile": per_tile,
            "nuclei": summary["nucleus_count"], "tiles": summary["tiles"]["count"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ref-commit", help="also run the package of this commit (e.g. main)")
    ap.add_argument("--modes", nargs="+", default=["auto", "local"], help="--scheduler values for this checkout")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    variants = []
    if a.ref_commit:
        variants.append((f"ref {a.ref_commit}", extract(a.ref_commit), []))
    variants += [(f"new --scheduler {m}", ROOT, ["--scheduler", m]) for m in a.modes]
    res = {name: [] for name, _, _ in variants}
    for r in range(a.runs):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, src, extra in order:
            out = run_once(a.slide, src, extra)
            res[name].append(out)
            print(f"run {r + 1} {name}: wall {out['wall']:.1f} s, CPU {out['cpu']:.1f} s, {out['nuclei']} nuclei, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    import torch

    print(f"\n{Path(a.slide).name}, {a.runs} runs each (medians), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    stages = []
    for runs in res.values():
        for o in runs:
            stages += [k for k in o["stages"] if k not in stages]
    cols = ["wall", "cpu", "start"] + [s for s in stages if s != "total"] + ["before_tiles", "s_per_tile"]
    print(f"{'':<26}" + "".join(f"{c[:13]:>14}" for c in cols))
    table = {}
    for name, runs in res.items():
        row = {}
        for c in cols:
            vals = [o[c] if c in o else o["stages"].get(c) for o in runs]
            vals = [v for v in vals if v is not None]
            row[c] = round(statistics.median(vals), 2) if vals else None
        table[name] = row
        print(f"{name:<26}" + "".join(f"{row[c]:>14.2f}" if row[c] is not None else f"{'-':>14}" for c in cols))
    if a.json:
        Path(a.json).write_text(json.dumps({"slide": Path(a.slide).name, "runs": res, "medians": table}, indent=2))


if __name__ == "__main__":
    main()
