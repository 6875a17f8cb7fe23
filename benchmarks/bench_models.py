"""Accuracy and speed of the shipped models, measured in one run on this machine.

    python benchmarks/bench_models.py --models he-teacher he-student he-student+refine he-student-int8 \
        --out benchmarks/results/models.json

``NAME+refine`` is model NAME with the Kornia refinement of the ambiguous pixels switched on (its
``refine`` settings at their defaults, from a temporary copy of the model folder).

For each model: val a-AJI / PQ / F1 (MoNuSeg val, same code as `wsi-nuc eval`), a-AJI / PQ / F1 on the 11
H&E-like DSB 2018 val images (another source, unknown scale: a check of generalisation), params, GMAC per Mpx,
network-only ms per 256x256 tile (batch 8) and Mpx/s on 1024x1024 windows, with torch using --threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_autoscale import subset
from wsi_nuc.evaluate import evaluate
from wsi_nuc.model.net import UNet, count_params, macs_per_pixel
from wsi_nuc.predict import get_predictor
from wsi_nuc.stainnorm import lab_stats


def time_maps(pred, shape, reps=3) -> float:
    x = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    # as in `run`: stain statistics once per slide, so a tile pays only for its recolouring
    stain = lab_stats(x[0]) if pred.stain_target is not None else None
    pred.maps(x, stain)  # warm-up
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        pred.maps(x, stain)
        t.append(time.perf_counter() - t0)
    return min(t)


def with_refine(name: str, tmp: Path) -> str:
    """A copy of model folder ``name`` with ``refine.enabled`` on; returns its path."""
    import shutil

    from wsi_nuc.model.io import resolve_model_dir

    src = resolve_model_dir(name, "cpu")
    dst = tmp / f"{src.name}+refine"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["refine"] = {**(cfg.get("refine") or {}), "enabled": True}
    cfg["name"] = dst.name
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(dst)


def bench(name: str, data: str, threads: int, params_override: dict | None = None,
          foreign: str | None = None) -> dict:
    torch.set_num_threads(threads)
    label = name
    if name.endswith("+refine"):
        import tempfile

        name = with_refine(name[:-len("+refine")], Path(tempfile.mkdtemp()))
    pred = get_predictor(name, "cpu")
    arch = pred.config.get("arch", {})
    if arch.get("kind") == "mobileunet":     # NetConfig would describe a U-Net that is not this network
        from wsi_nuc.model.mobilenet import MobileUNet, MobileUNetConfig, macs_per_pixel as mobile_macs

        mcfg = MobileUNetConfig.from_dict(arch)
        net_params, macs = count_params(pred.net) or count_params(MobileUNet(mcfg)), mobile_macs(mcfg)
    else:
        from wsi_nuc.model.net import NetConfig

        cfg = NetConfig.from_dict(arch)
        net_params, macs = count_params(pred.net) or count_params(UNet(cfg)), macs_per_pixel(cfg)
    t256 = time_maps(pred, (8, 256, 256, 3)) / 8
    t1024 = time_maps(pred, (1, 1024, 1024, 3))
    res = evaluate(data, name, "val", "cpu", params=params_override)["aggregate"]
    other = evaluate(foreign, name, None, "cpu", params=params_override)["aggregate"] if foreign else {}
    return {
        "model": label, "aji": res["aji"], "pq": res["pq"], "f1": res["f1"], "aji_pooled": res["aji_pooled"],
        **({"foreign_aji": other["aji"], "foreign_pq": other["pq"], "foreign_f1": other["f1"]} if other else {}),
        "params": net_params,
        "gmac_per_mpx": macs / 1e3,
        "ms_per_256_tile": t256 * 1e3, "mpx_per_s": 1024 * 1024 / t1024 / 1e6, "threads": threads,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["he-teacher"])
    ap.add_argument("--data", default="../shared/data/monuseg2018-train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--foreign", default="../shared/data/dsb2018-stage1-train",
                    help="also score the H&E-like (colour_brightfield) val images of this DSB folder: another "
                         "source, scale unknown (estimated as by `wsi-nuc eval`); '' to skip")
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        foreign = None
        if a.foreign:
            foreign = Path(tmp) / "dsb-he-val"
            subset(Path(a.foreign), "val", "colour_brightfield", foreign)
        rows = [bench(m, a.data, a.threads, foreign=foreign) for m in a.models]
    print("| model | val a-AJI | PQ | F1 | DSB H&E a-AJI | PQ | params | GMAC/Mpx | ms / 256² tile | Mpx/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['aji']:.3f} | {r['pq']:.3f} | {r['f1']:.3f} | {r.get('foreign_aji', float('nan')):.3f} | "
              f"{r.get('foreign_pq', float('nan')):.3f} | {r['params'] / 1e6:.2f} M | "
              f"{r['gmac_per_mpx']:.1f} | {r['ms_per_256_tile']:.0f} | {r['mpx_per_s']:.2f} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                           "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
