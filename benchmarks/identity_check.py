"""Are the outputs of `wsi-nuc run` unchanged by a refactor?

    python benchmarks/identity_check.py --make-ref /tmp/ref     # once, on the code before the change
    python benchmarks/identity_check.py --ref /tmp/ref          # after each step; exit 1 on a difference

Runs `wsi-nuc run SLIDE --out DIR --quiet` (this checkout's code, this interpreter) on each slide and
compares with the reference run: GeoJSON features (geometry and properties, ids included, in order), the
CSV byte for byte, every zarr array (values, shape, dtype) and group/array attributes, qc.png's pixels, and
summary.json
without what is expected to differ between two runs (timings, software versions, paths).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDES = [ROOT.parent / "shared/slides/CMU-1-Small-Region.svs",
          ROOT.parent / "shared/slides/OS-1-detail.ome.tif"]
# summary.json keys that legitimately differ between two runs of the same code and data
VOLATILE = {"timings", "seconds", "versions", "output", "path", "wsi_nuc_version", "software"}
# summary.json keys a change adds on purpose: not a difference when the reference run predates them (listed
# in the report line instead)
ADDED = {"nuclei_cut_by_halo"}    # issue 13: nuclei cut by the halo are counted, not dropped silently


def run(slide: Path, out: Path) -> Path:
    cmd = [sys.executable, "-c", "import sys; from wsi_nuc.cli import main; sys.exit(main())",
           "run", str(slide), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"wsi-nuc run {slide.name} failed ({proc.returncode}):\n{proc.stderr}")
    return out / slide.name.split(".")[0]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _geojson_features(folder: Path) -> list:
    path = folder / "nuclei.geojson"
    return json.loads(path.read_text())["features"]


def _zarr_tree(folder: Path) -> dict:
    import zarr
    root = zarr.open_group(str(folder / "nuclei.ome.zarr"), mode="r")
    found = {"": root}
    for name, node in root.members(max_depth=None):
        found[name] = node
    return found


def compare(ref: Path, new: Path) -> list[str]:
    """Differences between two output folders of one slide, as lines (empty: identical)."""
    diffs = []
    names_ref = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    names_new = sorted(p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file())
    if names_ref != names_new:
        diffs.append(f"file lists differ: only ref {sorted(set(names_ref) - set(names_new))}, "
                     f"only new {sorted(set(names_new) - set(names_ref))}")
    fr, fn = _geojson_features(ref), _geojson_features(new)
    if len(fr) != len(fn):
        diffs.append(f"nuclei.geojson: {len(fr)} vs {len(fn)} features")
    else:
        bad = [i for i, (a, b) in enumerate(zip(fr, fn)) if a != b]
        if bad:
            diffs.append(f"nuclei.geojson: {len(bad)} of {len(fr)} features differ (first #{bad[0]})")
    if (ref / "nuclei.csv").read_bytes() != (new / "nuclei.csv").read_bytes():
        diffs.append("nuclei.csv: bytes differ")
    zr, zn = _zarr_tree(ref), _zarr_tree(new)
    if sorted(zr) != sorted(zn):
        diffs.append(f"nuclei.ome.zarr: node lists differ ({sorted(zr)} vs {sorted(zn)})")
    for name in sorted(set(zr) & set(zn)):
        a, b = zr[name], zn[name]
        if dict(a.attrs) != dict(b.attrs):
            diffs.append(f"nuclei.ome.zarr/{name}: attributes differ")
        if hasattr(a, "shape"):
            if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a[...], b[...]):
                diffs.append(f"nuclei.ome.zarr/{name}: array differs")
    from PIL import Image

    if not np.array_equal(np.asarray(Image.open(ref / "qc.png")), np.asarray(Image.open(new / "qc.png"))):
        diffs.append("qc.png: pixels differ")
    sr = _strip(json.loads((ref / "summary.json").read_text()))
    sn = _strip(json.loads((new / "summary.json").read_text()))
    sn = {k: v for k, v in sn.items() if k in sr or k not in ADDED}
    if sr != sn:
        keys = sorted(k for k in set(sr) | set(sn) if sr.get(k) != sn.get(k))
        diffs.append(f"summary.json differs in {keys}")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--make-ref", type=Path, help="write the reference run here")
    g.add_argument("--ref", type=Path, help="compare a fresh run with the reference run here")
    ap.add_argument("--keep", type=Path, help="write the fresh run here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.make_ref:
        for slide in SLIDES:
            folder = run(slide, args.make_ref)
            print(f"reference {slide.name}: {folder}")
        return 0
    out = args.keep or Path(tempfile.mkdtemp(prefix="identity-"))
    failed = 0
    for slide in SLIDES:
        folder = run(slide, out)
        ref = args.ref / folder.name
        diffs = compare(ref, folder)
        n = len(_geojson_features(folder))
        if diffs:
            failed += 1
            print(f"DIFFERENT {slide.name} ({n} nuclei):")
            for line in diffs:
                print(f"  {line}")
        else:
            added = {k: v for k, v in json.loads((folder / "summary.json").read_text()).items()
                     if k in ADDED and k not in json.loads((ref / "summary.json").read_text())}
            print(f"identical {slide.name}: {n} nuclei; GeoJSON features, CSV bytes, zarr arrays and "
                  f"attributes, qc.png pixels, summary.json (less timings/versions/paths)"
                  + (f"; summary.json adds {added}" if added else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
