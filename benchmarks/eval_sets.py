"""Score models on every val set here, each reported on its own (never select on one alone).

    python benchmarks/eval_sets.py --models he-student-int8 runs/he-teacher-v03/model \
        --out benchmarks/results/val-sets.json

Sets: MoNuSeg 2018 val (5 exact tiles, 40x), CoNSeP val (80 crops of 5 tiles, 40x, colorectal, another
hospital), DSB 2018 H&E-like val (11 images, another source, scale unknown: estimated as `wsi-nuc eval`
does), NuInsSeg val (four whole organs: human bladder, kidney, lung and mouse heart; scale estimated at
0.18 µm/px). Same code as `wsi-nuc eval`. ``--postprocess FILE.json`` overrides every model's post-processing
(e.g. to score training snapshots with the shipped settings).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_autoscale import subset
from wsi_nuc.evaluate import evaluate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ("aji", "pq", "f1", "dice")


def val_sets(tmp: Path) -> dict[str, tuple[Path, str | None]]:
    dsb = tmp / "dsb-he-val"
    subset(SHARED / "dsb2018-stage1-train", "val", "colour_brightfield", dsb)
    return {"monuseg_val": (SHARED / "monuseg2018-train", "val"),
            "consep_val": (SHARED / "consep-train", "val"),
            "dsb_he_val": (dsb, None),
            "nuinsseg_val": (SHARED / "nuinsseg-train", "val")}


def score(model: str, sets: dict, params: dict | None, threads: int, tta: int = 1) -> dict:
    import torch

    torch.set_num_threads(threads)
    row = {"model": model, **({"tta": tta} if tta > 1 else {})}
    for name, (root, split) in sets.items():
        t0 = time.perf_counter()
        agg = evaluate(root, model, split, "cpu", params=params, tta=tta)["aggregate"]
        row[name] = {k: round(float(agg[k]), 4) for k in KEYS if k in agg}
        for k in agg:
            if k.startswith(("f_d", "f_c_")):
                row[name][k] = round(float(agg[k]), 4)
        row[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(model, name, row[name], flush=True)
    row["mean_aji"] = round(sum(row[n]["aji"] for n in sets) / len(sets), 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--postprocess", help="JSON file of post-processing settings for every model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--tta", type=int, nargs="+", default=[1], choices=(1, 4, 8),
                    help="score each model at each of these test-time augmentations")
    a = ap.parse_args()
    params = json.loads(Path(a.postprocess).read_text()) if a.postprocess else None
    with tempfile.TemporaryDirectory() as tmp:
        sets = val_sets(Path(tmp))
        rows = [score(m, sets, params, a.threads, t) for m in a.models for t in a.tta]
    import torch

    res = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": a.threads,
           "postprocess_override": params, "rows": rows}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
