"""Score a training run's snapshots on every val set, adding the ones not yet scored to a JSON file.

    python benchmarks/score_snapshots.py runs/he-teacher-v06 \
        --out benchmarks/results/he-teacher-v06-snapshots.json [--threads 1] [--reference he-types]

Each snapshot (``RUN/snapshots/stepNNNNNN``, the weight average's ``stepNNNNNN-ema`` when the run keeps one
(``train.ema``), and ``RUN/model``) is scored with ``wsi-nuc eval``'s code on
MoNuSeg val, CoNSeP val, DSB H&E val and NuInsSeg val (:mod:`eval_sets`), with its stored post-processing
or, with ``--postprocess FILE``, one fixed setting for every snapshot and reference (a curve that the
post-processing does not bend);
the file keeps one row per step and weights (``"weights": "raw"`` or ``"ema"``) with the samples seen and the run's CPU-hours at that step (from
``log.jsonl``), so a plateau is a measured curve. ``--reference`` models are scored once beside them.
Safe to run while the run trains (it reads only finished snapshot folders).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_sets import score, val_sets  # noqa: E402


def cpu_hours_at(run: Path) -> dict[int, float]:
    out = {}
    log = run / "log.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        r = json.loads(line)
        if "cpu_s" in r:
            out[int(r["step"])] = round(r["cpu_s"] / 3600, 3)
    return out


def snapshots(run: Path) -> list[tuple[int, str, Path]]:
    """(step, "raw" or "ema", folder) of every finished snapshot and the final model."""
    found = [(int(p.name[4:].split("-")[0]), "ema" if p.name.endswith("-ema") else "raw", p)
             for p in sorted((run / "snapshots").glob("step*"))
             if (p / "model.safetensors").exists() and (p / "config.json").exists()]
    final = run / "model"
    if (final / "config.json").exists():
        cfg = json.loads((final / "config.json").read_text())
        found.append((int(cfg.get("training", {}).get("steps", 0)), "ema" if cfg.get("ema") else "raw", final))
    return found


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", nargs="*", default=[])
    ap.add_argument("--batch", type=int, default=8, help="samples per step, for the samples column")
    ap.add_argument("--postprocess", help="JSON file of post-processing settings for every snapshot (a curve "
                    "on one fixed setting; default: each snapshot's stored settings)")
    ap.add_argument("--steps", type=int, nargs="*", help="score only these steps (default: every snapshot)")
    ap.add_argument("--weights", choices=("raw", "ema", "both"), default="both",
                    help="which snapshots of a run with a weight average to score (default both)")
    a = ap.parse_args()
    run, out = Path(a.run), Path(a.out)
    params = json.loads(Path(a.postprocess).read_text()) if a.postprocess else None
    res = json.loads(out.read_text()) if out.exists() else {"run": str(run), "rows": [], "reference": []}
    if res.get("postprocess_override") != params and res["rows"]:
        raise SystemExit(f"{out}: scored with postprocess {res.get('postprocess_override')}, not {params}")
    res["postprocess_override"] = params
    res["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    done = {(r["step"], r.get("weights", "raw")) for r in res["rows"]}
    done_ref = {r["model"] for r in res["reference"]}
    hours = cpu_hours_at(run)
    with tempfile.TemporaryDirectory() as tmp:
        sets = val_sets(Path(tmp))
        for step, weights, path in snapshots(run):
            if (step, weights) in done or a.weights not in ("both", weights) or (a.steps and step not in a.steps):
                continue
            row = score(str(path), sets, params, a.threads)
            row.update(step=step, weights=weights, samples=step * a.batch,
                       cpu_hours=hours.get(step, hours.get(max((s for s in hours if s <= step), default=0))))
            res["rows"].append(row)
            res["rows"].sort(key=lambda r: (r["step"], r.get("weights", "raw")))
            out.write_text(json.dumps(res, indent=1) + "\n")
        for m in a.reference:
            if m not in done_ref:
                res["reference"].append(score(m, sets, params, a.threads))
                out.write_text(json.dumps(res, indent=1) + "\n")
    names = [k for k in res["rows"][0] if k.endswith("_val")] if res["rows"] else []
    print("step  weights  samples  cpu-h  " + "  ".join(names) + "  mean a-AJI")
    for r in res["rows"] + res["reference"]:
        print(r.get("step", r["model"]), r.get("weights", "raw" if "step" in r else ""), r.get("samples", ""),
              r.get("cpu_hours", ""),
              *[r[n]["aji"] for n in names], r["mean_aji"])


if __name__ == "__main__":
    main()
