"""Per-tile post-processing, stage by stage, in ms per tile: this checkout against another commit.

    python benchmarks/bench_postprocess.py [--slide S] [--tiles 8] [--repeat 5] [--ref-commit main] [--json F]

Real tiles: the tissue tiles of the slide (default ``../shared/slides/CMU-1-Small-Region.svs``) at the
default model's scale, 512² cores with the 64-px halo (640² read windows), as ``wsi-nuc run`` cuts them;
the head maps come from the default model once per tile (network time printed for scale, not compared).
Each stage then runs on the same inputs:

- ``read``: ``read_region`` of the tile's read window;
- ``recolour``: Reinhard stain normalisation to the model's target (``stainnorm.normalise``);
- ``lts``: the calibrated fg probability from the raw logit (``refine.calibrated_fg``, the LTS head);
- ``activations``: ``Predictor`` activations after the network (LTS + sigmoid/tanh), as ``maps()`` does;
- ``watershed``: head maps -> instance labels (``instances.labels_from_maps``);
- ``ownership``: ids off the read-window edge, centroids, inside the core + margin;
- ``outlines``: traced outlines in level-0 px (``instances.polygons_level0``);
- ``clean``: ``outlines.clean_polygons``;
- ``morphometry``: ``morphometry.measure_nuclei`` with the outlines;
- ``owned_nuclei``: the whole of ``segment.owned_nuclei`` (ownership + outlines + clean + morphometry);
- ``post_total``: everything after the network: recolour + activations + watershed + owned_nuclei.

With ``--ref-commit REF`` the package of that commit is extracted (``git archive``) and imported as
``wsi_nuc_ref``; every stage of every tile is run by both, alternating which goes first, ``--repeat``
times, so load on a shared machine falls on both alike. Reported: per stage the mean over tiles of the
per-tile median (ms per 640² tile), ref and new, their ratio, and whether the outputs are identical (or
the largest difference). Times are the calling thread's CPU time by default (``--clock cpu``; torch runs on
the calling thread at 1 thread), which a loaded machine inflates far less than elapsed time. The torch
threads (default 1: one LocalCluster worker's share on 2 cores), ``torch.backends.cpu.get_cpu_capability()``
and the load average are printed with the table.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # numpy's BLAS on the calling thread, like torch at 1 thread
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SLIDE = ROOT.parent / "shared/slides/CMU-1-Small-Region.svs"
STAGES = ("read", "recolour", "lts", "activations", "watershed", "ownership", "outlines", "clean",
          "morphometry", "owned_nuclei", "post_total")


def load_ref(commit: str) -> object:
    """The ``wsi_nuc`` package of ``commit``, imported as ``wsi_nuc_ref`` (its imports are relative)."""
    dest = Path(tempfile.mkdtemp(prefix="wsi_nuc_ref-"))
    blob = subprocess.run(["git", "archive", commit, "wsi_nuc"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        tf.extractall(dest, filter="data")
    (dest / "wsi_nuc").rename(dest / "wsi_nuc_ref")
    sys.path.insert(0, str(dest))
    return importlib.import_module("wsi_nuc_ref")


class Version:
    """One package's stage functions (this checkout's ``wsi_nuc`` or the reference's)."""

    @classmethod
    def plain(cls, pkg_name: str) -> "Version":
        v = cls.__new__(cls)
        v.name, v.tiling = pkg_name, importlib.import_module(f"{pkg_name}.tiling")
        return v

    def __init__(self, pkg_name: str, model: str | None):
        imp = lambda m: importlib.import_module(f"{pkg_name}.{m}")  # noqa: E731
        self.name = pkg_name
        self.tiling = imp("tiling")
        self.slide, self.stainnorm, self.refine = imp("slide"), imp("stainnorm"), imp("refine")
        self.instances, self.segment, self.outlines = imp("instances"), imp("segment"), imp("outlines")
        self.morphometry, self.predict, self.io = imp("morphometry"), imp("predict"), imp("model.io")
        mdir = self.io.resolve_model_dir(model, "cpu")
        self.cfg = self.io.read_model_config(mdir)
        self.lts = self.refine.load_lts(mdir, dict(self.cfg, path=str(mdir)))
        self.target = self.stainnorm.LabStats.from_dict(self.cfg.get("stain_norm"))
        self.params = self.instances.InstanceParams.from_dict(self.cfg.get("postprocess"))


def plan(slide: Path, model: str | None, n_tiles: int):
    """(reader, tile indices, grid builder, f, work_mpp, level0_mpp, slide stain stats) of the slide's tissue
    tiles (``n_tiles`` spread evenly over them; 0: all). ``grid(v)`` makes the tiles with version ``v``'s own
    tiling module (the Tile class changed between versions; the boxes are the same)."""
    from wsi_nuc.model.io import read_model_config, resolve_model_dir
    from wsi_nuc.slide import open_slide
    from wsi_nuc.stainnorm import slide_stats
    from wsi_nuc.tissue import detect_tissue
    from wsi_nuc.validate import tile_align

    mcfg = read_model_config(resolve_model_dir(model, "cpu"))
    reader = open_slide(slide)
    info = reader.info
    work_mpp = float(mcfg["mpp"])
    f = work_mpp / info.mpp
    H, W = max(1, math.ceil(info.height / f)), max(1, math.ceil(info.width / f))
    tissue = detect_tissue(reader)
    frac = getattr(tissue, "fraction_in_box", None)
    if frac is None:                     # the issue-13 layout: fraction_in(Box in level-0 px)
        from wsi_nuc.tiling import Box

        frac = lambda x0, y0, x1, y1: tissue.fraction_in(Box(y0, x0, y1, x1))  # noqa: E731

    def grid(v: "Version") -> list:
        import inspect

        # the ownership margin (8 px, run's default) moved from owned_nuclei into the grid in the issue-13 layout
        margin = {"margin": 8} if "margin" in inspect.signature(v.tiling.make_grid).parameters else {}
        return list(v.tiling.make_grid(H, W, 512, 64, align=tile_align(mcfg), **margin,
                                       keep=lambda c: frac(c.x0 * f, c.y0 * f, c.x1 * f, c.y1 * f) > 0))

    n = len(grid(Version.plain("wsi_nuc")))
    idx = list(range(n))
    if n_tiles and n_tiles < n:
        idx = [int(i) for i in np.linspace(0, n - 1, n_tiles).round().astype(int)]
    stain = slide_stats(reader, tissue, f, H, W)
    return reader, idx, grid, f, work_mpp, float(info.mpp), stain


def ownership(v: Version, labels, tile, margin=8):
    if hasattr(tile, "owned"):           # the issue-13 layout: Tile.owned (margin in the grid)
        return tile.owned(labels).ids
    ids = np.unique(labels)
    ids = ids[ids > 0]
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    ids = np.setdiff1d(ids, edge, assume_unique=True)
    cyx = v.instances.centroids(labels, ids)
    gy, gx = cyx[:, 0] + tile.read.y0, cyx[:, 1] + tile.read.x0
    own = tile.core.expand(margin)
    keep = (gy >= own.y0) & (gy < own.y1) & (gx >= own.x0) & (gx < own.x1)
    return ids[keep]


def owned(v: Version, tile, labels, image, conf, f, work_mpp, level0_mpp):
    """``segment.owned_nuclei`` of either signature (f, mpps, margin; or a tiling.Scale)."""
    import inspect

    if "scale" in inspect.signature(v.segment.owned_nuclei).parameters:
        return v.segment.owned_nuclei(tile, labels, image, conf, v.tiling.Scale(level0_mpp, work_mpp))
    return v.segment.owned_nuclei(tile, labels, image, conf, f, work_mpp, level0_mpp, 8)


def activations(v: Version, raw, x):
    """What ``Predictor.maps`` does after the network (the default model: 6 maps, no types, no refine)."""
    import torch

    out = raw.float().contiguous()
    act = torch.empty_like(out)
    act[:, 0] = v.refine.calibrated_fg(out[:, 0], v.lts, x)
    act[:, [1, 2, 5]] = torch.sigmoid(out[:, [1, 2, 5]])
    act[:, 3:5] = torch.tanh(out[:, 3:5])
    return act[:, :6].numpy()


def prepare(new: Version, reader, tiles, f, stain):
    """Per tile: the image, the network input and raw output, the maps; network ms."""
    import torch

    from wsi_nuc.predict import get_predictor

    pred = get_predictor(None, "cpu")
    norm = pred.config.get("norm", {"mean": 0.5, "std": 0.25})
    data, net_ms = [], []
    for t in tiles:
        im = new.slide.read_region(reader, t.read.x0 * f, t.read.y0 * f, t.read.w * f, t.read.h * f, t.read.w, t.read.h)
        rec = new.stainnorm.normalise(im, stain, new.target)
        with torch.inference_mode():
            x = torch.from_numpy(np.array(rec[None], copy=True)).permute(0, 3, 1, 2).float()
            x = x.div_(255.0).sub_(norm["mean"]).div_(norm["std"])
            t0 = time.thread_time()
            raw = pred.net(x)
            net_ms.append(1e3 * (time.thread_time() - t0))
            maps = pred.maps(im[None], stain)[0]
        data.append(dict(tile=t, image=im, x=x, raw=raw.float().contiguous(), maps=maps))
    return data, statistics.median(net_ms)


def stage_calls(v: Version, d: dict, reader, f, work_mpp, level0_mpp, stain):
    """{stage: zero-argument callable} for one tile and one version."""
    import torch

    t = d["tile"]
    origin = (t.read.x0 * f, t.read.y0 * f)
    labels = d["labels"]
    ids = d["ids"]
    polys = d["polys"]

    def post_total():
        v.stainnorm.normalise(d["image"], stain, v.target)
        with torch.inference_mode():
            maps = activations(v, d["raw"], d["x"])[0]
        lab = v.segment.segment_maps(maps, v.params)
        return owned(v, t, lab, d["image"], maps[0], f, work_mpp, level0_mpp)

    def lts():
        with torch.inference_mode():
            return v.refine.calibrated_fg(d["raw"][:, 0], v.lts, d["x"]).numpy()

    def act():
        with torch.inference_mode():
            return activations(v, d["raw"], d["x"])

    return {
        "read": lambda: v.slide.read_region(reader, t.read.x0 * f, t.read.y0 * f, t.read.w * f, t.read.h * f,
                                            t.read.w, t.read.h),
        "recolour": lambda: v.stainnorm.normalise(d["image"], stain, v.target),
        "lts": lts,
        "activations": act,
        "watershed": lambda: v.instances.labels_from_maps(d["maps"], v.params),
        "ownership": lambda: ownership(v, labels, t),
        "outlines": lambda: v.instances.polygons_level0(labels, ids, f, origin),
        "clean": lambda: v.outlines.clean_polygons(d["raw_polys"]),
        "morphometry": lambda: v.morphometry.measure_nuclei(labels, d["image"], ids, work_mpp, level0_mpp, origin,
                                                            confidence=d["maps"][0], outlines=polys),
        "owned_nuclei": lambda: owned(v, t, labels, d["image"], d["maps"][0], f, work_mpp, level0_mpp),
        "post_total": post_total,
    }


def same(a, b) -> tuple[bool, float]:
    """(identical, largest absolute difference of the numbers in it)."""
    if isinstance(a, dict):
        rs = [same(a[k], b.get(k)) for k in a] + [(set(a) == set(b), 0.0)]
        return all(r[0] for r in rs), max(r[1] for r in rs)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return False, float("inf")
        rs = [same(x, y) for x, y in zip(a, b)] or [(True, 0.0)]
        return all(r[0] for r in rs), max(r[1] for r in rs)
    if hasattr(a, "columns") and hasattr(a, "coords"):      # TileNuclei
        return same([a.coords, a.offsets, a.depth, a.columns], [b.coords, b.offsets, b.depth, b.columns])
    if a is None or b is None:
        return a is b, 0.0 if a is b else float("inf")
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, float("inf")
    if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
        eq = np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        diff = np.abs(a.astype(float) - b.astype(float))
        diff = float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else 0.0
        return eq, diff
    return bool(np.array_equal(a, b)), 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--model", default=None, help="model name or folder (default: the default model)")
    ap.add_argument("--tiles", type=int, default=8, help="tissue tiles spread over the slide (0: all)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a worker's share on 2 cores)")
    ap.add_argument("--ref-commit", help="compare with the package of this commit (e.g. main)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this thread's CPU time per call (steadier on a loaded machine; torch runs on the "
                         "calling thread at 1 thread), wall: elapsed time")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter

    import torch

    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT))
    versions = []
    if a.ref_commit:
        load_ref(a.ref_commit)
        versions.append(Version("wsi_nuc_ref", a.model))
    new = Version("wsi_nuc", a.model)
    versions.append(new)
    reader, idx, grid, f, work_mpp, level0_mpp, stain = plan(Path(a.slide), a.model, a.tiles)
    tiles_of = {v.name: [t for i, t in enumerate(grid(v)) if i in set(idx)] for v in versions}
    data, net_ms = prepare(new, reader, tiles_of[new.name], f, stain)
    v0 = versions[0]
    for k, d in enumerate(data):   # the reference's labels, ids and outlines: the inputs all versions share
        t = tiles_of[v0.name][k]
        d["labels"] = v0.segment.segment_maps(d["maps"], v0.params)
        d["ids"] = ownership(v0, d["labels"], t)
        d["raw_polys"] = v0.instances.polygons_level0(d["labels"], d["ids"], f, (t.read.x0 * f, t.read.y0 * f))
        polys = v0.outlines.clean_polygons(d["raw_polys"])
        ok = [p is not None for p in polys]
        d["ids"] = d["ids"][np.asarray(ok, bool)] if len(ok) else d["ids"]
        d["raw_polys"] = [p for p, k in zip(d["raw_polys"], ok) if k]
        d["polys"] = [p for p in polys if p is not None]
    calls = [[stage_calls(v, dict(d, tile=tiles_of[v.name][k]), reader, f, work_mpp, level0_mpp, stain)
              for v in versions] for k, d in enumerate(data)]
    times = {s: [[[] for _ in data] for _ in versions] for s in a.stages}
    diffs = {s: (True, 0.0) for s in a.stages}
    for r in range(a.repeat):
        for ti in range(len(data)):
            for s in a.stages:
                order = list(range(len(versions)))
                if (r + ti) % 2:
                    order.reverse()
                res = {}
                for vi in order:
                    fn = calls[ti][vi][s]
                    t0 = clock()
                    res[vi] = fn()
                    times[s][vi][ti].append(1e3 * (clock() - t0))
                if r == 0 and len(versions) == 2:
                    eq, dmax = same(res[0], res[1])
                    diffs[s] = (diffs[s][0] and eq, max(diffs[s][1], dmax))
    rows = []
    names = [("ref " + a.ref_commit) if v.name == "wsi_nuc_ref" else "new" for v in versions]
    cap = torch.backends.cpu.get_cpu_capability()
    load = os.getloadavg()
    print(f"{len(data)} tiles of {Path(a.slide).name} (640² read windows), {a.repeat} repeats, torch threads "
          f"{a.threads}, {a.clock} time, CPU capability {cap}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"network (not compared): {net_ms:.1f} ms/tile median (CPU time)")
    head = f"{'stage':<14}" + "".join(f"{n:>16}" for n in names)
    if len(versions) == 2:
        head += f"{'ratio':>8}  outputs"
    print(head + "   (ms per tile: mean over tiles of the per-tile median)")
    for s in a.stages:
        ms = [float(np.mean([statistics.median(x) for x in times[s][vi]])) for vi in range(len(versions))]
        row = {"stage": s, **{n: round(m, 2) for n, m in zip(names, ms)}}
        line = f"{s:<14}" + "".join(f"{m:>16.2f}" for m in ms)
        if len(versions) == 2:
            eq, dmax = diffs[s]
            row.update(ratio=round(ms[0] / ms[1], 2) if ms[1] else None, identical=eq, max_abs_diff=dmax)
            line += f"{ms[0] / ms[1]:>7.2f}x  " + ("identical" if eq else f"differ (max abs {dmax:.3g})")
        rows.append(row)
        print(line, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"slide": Path(a.slide).name, "tiles": len(data), "repeat": a.repeat,
                                            "threads": a.threads, "clock": a.clock, "cpu_capability": cap,
                                            "loadavg": load,
                                            "network_ms": net_ms, "stages": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
