"""Types in regions checked by eye: issue 26's bars on a run's nuclei table.

    python benchmarks/type_regions.py OUT/CMU-1-Small-Region/nuclei.csv \
        [--regions benchmarks/regions/cmu-1-small-region.json] [--json FILE]

The regions file holds level-0 polygons grouped as ``epithelium`` and ``connective`` (each nucleus counts
in a region when its centroid lies inside). Per region and per group it counts the written ``type`` (an
empty type is "untyped") and the model's own ``type_model``, and checks the bars: in an epithelium at
least half the nuclei "epithelial" and at most 15 % another type (untyped counts in neither); in
connective tissue at most 10 % "epithelial".
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from shapely import contains_xy
from shapely.geometry import Polygon

HERE = Path(__file__).resolve().parent
DEFAULT_REGIONS = HERE / "regions" / "cmu-1-small-region.json"


def read_nuclei(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    xy = np.array([[float(r["centroid_x_px"]), float(r["centroid_y_px"])] for r in rows]).reshape(-1, 2)
    return xy, [r.get("type", "") for r in rows], [r.get("type_model", r.get("type", "")) for r in rows]


def count(types: list[str]) -> dict:
    out = {"n": len(types)}
    for t in types:
        key = t or "untyped"
        out[key] = out.get(key, 0) + 1
    return out


def bars(group: str, c: dict) -> dict:
    n = max(c["n"], 1)
    epi = c.get("epithelial", 0) / n
    if group == "epithelium":
        other = sum(v for k, v in c.items() if k not in ("n", "epithelial", "untyped")) / n
        return {"epithelial": round(epi, 3), "other_type": round(other, 3),
                "pass": bool(epi >= 0.5 and other <= 0.15)}
    return {"epithelial": round(epi, 3), "pass": bool(epi <= 0.10)}


def score(nuclei: Path, regions: dict) -> dict:
    xy, given, model = read_nuclei(nuclei)
    out = {"nuclei": str(nuclei), "regions": {}, "groups": {}}
    for group, polys in regions["groups"].items():
        g_given, g_model = [], []
        for name, poly in polys.items():
            inside = np.nonzero(contains_xy(Polygon(poly), xy[:, 0], xy[:, 1]))[0]
            gv, md = [given[i] for i in inside], [model[i] for i in inside]
            g_given += gv
            g_model += md
            out["regions"][name] = {"group": group, "given": count(gv), "model": count(md)}
        cg, cm = count(g_given), count(g_model)
        out["groups"][group] = {"given": cg, "model": cm, "bars_given": bars(group, cg),
                                "bars_model": bars(group, cm)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nuclei", type=Path, help="nuclei.csv of a wsi-nuc run")
    ap.add_argument("--regions", type=Path, default=DEFAULT_REGIONS)
    ap.add_argument("--json", type=Path, help="write the counts here")
    a = ap.parse_args(argv)
    res = score(a.nuclei, json.loads(a.regions.read_text()))
    for name, r in res["regions"].items():
        print(f"{name:24s} {r['group']:11s} given {r['given']}\n{'':36s} model {r['model']}")
    for group, g in res["groups"].items():
        print(f"{group}: given {g['bars_given']}  model {g['bars_model']}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
