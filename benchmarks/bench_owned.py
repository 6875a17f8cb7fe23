"""Milliseconds per tile of the tile kernel's ownership step, on real CMU-1-Small-Region tiles.

    python benchmarks/bench_owned.py [--tiles 8] [--repeat 3] [--cache /tmp/owned-tiles.npz]

Reads the first ``--tiles`` tissue tiles (512 core + 64 halo: 640² read windows at 0.5 µm/px), predicts
their head maps and watershed labels once (cached in ``--cache``), then times, per tile (best of
``--repeat``): the whole of ``segment.owned_nuclei`` and its parts (which nuclei the tile owns;
outline tracing; polygon cleaning; measurements; types). ``ownership_before`` is the ownership step
as it was before issue 13 (``ndi.center_of_mass``), ``ownership`` the one of ``Tile.owned`` (bincount), checked
to give the same ids and centroids. Prints one JSON line with the CPU capability
and the load average, which matter on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared/slides/CMU-1-Small-Region.svs"


def _tiles(n: int, cache: Path):
    from wsi_nuc.tiling import make_grid

    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        return z["meta"].item(), list(z["images"]), list(z["maps"]), list(z["labels"])
    from wsi_nuc.instances import InstanceParams, labels_from_maps
    from wsi_nuc.predict import get_predictor
    from wsi_nuc.slide import open_slide, read_region
    from wsi_nuc.stainnorm import slide_stats
    from wsi_nuc.tissue import detect_tissue

    pred = get_predictor(None, "cpu", 1)
    params = InstanceParams.from_dict(pred.config.get("postprocess") or {})
    with open_slide(SLIDE) as r:
        f = pred.mpp / r.info.mpp
        H, W = int(np.ceil(r.info.height / f)), int(np.ceil(r.info.width / f))
        tissue = detect_tissue(r)
        grid = make_grid(H, W, 512, 64, keep=lambda c: tissue.fraction_in_box(c.x0 * f, c.y0 * f, c.x1 * f,
                                                                              c.y1 * f) > 0)
        stain = slide_stats(r, tissue, f, H, W) if pred.config.get("stain_norm") else None
        tiles = list(grid)[:n]
        images = [read_region(r, t.read.x0 * f, t.read.y0 * f, t.read.w * f, t.read.h * f, t.read.w, t.read.h)
                  for t in tiles]
        meta = {"f": f, "mpp0": r.info.mpp, "work": pred.mpp, "types": list(pred.types),
                "tiles": [(t.row, t.col, (t.core.y0, t.core.x0, t.core.y1, t.core.x1),
                           (t.read.y0, t.read.x0, t.read.y1, t.read.x1)) for t in tiles]}
    maps = [pred.maps(im[None], stain)[0] for im in images]
    labels = [labels_from_maps(m, params) for m in maps]
    np.savez(cache, meta=np.array(meta, dtype=object), images=np.stack(images), maps=np.stack(maps),
             labels=np.stack(labels))
    return meta, images, maps, labels


def _ownership_before(tile, labels, margin: int = 8):
    """The ownership step as it was in ``segment.owned_nuclei`` before issue 13 (for the comparison)."""
    from wsi_nuc.instances import centroids

    ids = np.unique(labels)
    ids = ids[ids > 0]
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    ids = np.setdiff1d(ids, edge, assume_unique=True)
    cyx = centroids(labels, ids)
    gy, gx = cyx[:, 0] + tile.read.y0, cyx[:, 1] + tile.read.x0
    own = tile.core.expand(int(margin)) if margin else tile.core
    keep = (gy >= own.y0) & (gy < own.y1) & (gx >= own.x0) & (gx < own.x1)
    return ids[keep], gy[keep], gx[keep]


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    import torch

    from wsi_nuc import segment
    from wsi_nuc.instances import polygons_level0
    from wsi_nuc.morphometry import measure_nuclei
    from wsi_nuc.outlines import clean_polygons
    from wsi_nuc.tiling import Box, Tile
    from wsi_nuc.type_map import type_prob_map

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/owned-tiles.npz"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    meta, images, maps, labels = _tiles(a.tiles, a.cache)
    f, mpp0, work, types = meta["f"], meta["mpp0"], meta["work"], tuple(meta["types"])
    import inspect

    new = "margin" in inspect.signature(Tile).parameters      # after issue 13: the tile carries its margin
    tiles = [Tile(r, c, Box(*core), Box(*read), *([8] if new else [])) for r, c, core, read in meta["tiles"]]
    if new:
        from wsi_nuc.tiling import Scale

        args = (Scale(mpp0, work),)
    else:
        args = (f, work, mpp0, 8)
    parts = {"owned_nuclei": [], "ownership_before": [], "ownership": [], "outlines": [], "clean": [], "measure": [], "types": []}
    counts = []
    for t, im, m, lab in zip(tiles, images, maps, labels):
        tp = type_prob_map(m) if types else None
        tn = segment.owned_nuclei(t, lab, im, m[0], *args, type_prob=tp, type_names=types)
        counts.append(tn.n)
        parts["owned_nuclei"].append(_best(lambda: segment.owned_nuclei(
            t, lab, im, m[0], *args, type_prob=tp, type_names=types), a.repeat))
        parts["ownership_before"].append(_best(lambda: _ownership_before(t, lab, 8), a.repeat))
        ids = _ownership_before(t, lab, 8)[0]
        if new:
            parts["ownership"].append(_best(lambda: t.owned(lab), a.repeat))
            got = t.owned(lab)
            assert np.array_equal(got.ids, ids) and np.array_equal(got.y, _ownership_before(t, lab, 8)[1])
        origin = (t.read.x0 * f, t.read.y0 * f)
        if True:
            parts["outlines"].append(_best(lambda: polygons_level0(lab, ids, f, origin), a.repeat))
            polys = polygons_level0(lab, ids, f, origin)
            parts["clean"].append(_best(lambda: clean_polygons(polys), a.repeat))
            cp = [p for p in clean_polygons(polys) if p is not None]
            parts["measure"].append(_best(lambda: measure_nuclei(lab, im, ids[:len(cp)], work, mpp0, origin,
                                                                 confidence=m[0], outlines=cp), a.repeat))
            if types:
                parts["types"].append(_best(lambda: segment.type_columns(lab, tp, ids, types), a.repeat))
    res = {k: round(float(np.mean(v)), 1) for k, v in parts.items() if v}
    res.update(tiles=len(tiles), nuclei_per_tile=round(float(np.mean(counts)), 1),
               cpu_capability=torch.backends.cpu.get_cpu_capability(), loadavg=os.getloadavg(),
               cpus=os.cpu_count())
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
