"""Images of unknown scale: `wsi-nuc eval --scale auto` (estimated from the nuclei) vs `--scale native`.

    python benchmarks/bench_autoscale.py --models he-student-int8 he-teacher \
        --out benchmarks/results/autoscale-dsb-he.json

The H&E-like (``colour_brightfield``) images of DSB 2018 have no known scale and come from another source
than MoNuSeg: their nuclei range from 120 to 1,500 px in median area. They are linked into a temporary
dataset folder with ``mpp`` null and scored with the same code as ``wsi-nuc eval``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from wsi_nuc.dataset import list_stems, read_index
from wsi_nuc.evaluate import evaluate

KEYS = ("aji", "pq", "f1", "dice", "map_dsb")


def subset(root: Path, split: str, modality: str, dest: Path) -> int:
    """Link the images of ``modality`` in ``split`` into ``dest`` (shared layout, no mpp, no split)."""
    meta = read_index(root)
    stems = [s for s in list_stems(root, split) if meta["images"][s].get("modality") == modality]
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True)
    for s in stems:
        (dest / "images" / f"{s}.png").symlink_to((root / "images" / f"{s}.png").resolve())
        (dest / "labels" / f"{s}.tif").symlink_to((root / "labels" / f"{s}.tif").resolve())
    (dest / "dataset.json").write_text(json.dumps({"name": f"{meta['name']}-{modality}-{split}", "mpp": None}))
    return len(stems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/data/dsb2018-stage1-train")
    ap.add_argument("--modality", default="colour_brightfield")
    ap.add_argument("--splits", nargs="+", default=["val", "train"])
    ap.add_argument("--models", nargs="+", default=["he-student-int8"])
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in a.splits:
            ds = Path(tmp) / split
            n = subset(Path(a.dataset), split, a.modality, ds)
            for model in a.models:
                for scale in ("native", "auto"):
                    r = evaluate(ds, model, device="cpu", auto_scale=scale == "auto")
                    mpps = sorted(i["mpp"] for i in r["images"] if i["mpp"])
                    row = {"split": split, "images": n, "model": model, "scale": scale,
                           **{k: round(r["aggregate"][k], 4) for k in KEYS},
                           "mpp_range": [round(mpps[0], 3), round(mpps[-1], 3)] if mpps else None}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"dataset": a.dataset, "modality": a.modality, "rows": rows},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
