"""What qc.png shows of a slide's nuclei: centroids, areas, and four zoom windows sampled across the
range of nucleus density (not only the densest place, which is the best case).

Zooms: tiles with survivors are ranked by their number of nuclei; the tiles at the 25th, 50th, 75th
and 100th percentile of that ranking give one window each (128 µm square at the working resolution,
centred on the median centroid of the tile's nuclei), so the page shows a sparse, two typical and the
densest region. Outlines are coloured by type when nuclei have types, else by confidence.
"""
from __future__ import annotations

import numpy as np

from .. import types as T

QUANTILES = (0.25, 0.5, 0.75, 1.0)
ZOOM_WORK_PX = 256       # window edge in working pixels (128 µm at 0.5 µm/px)


def pick_zooms(counts, quantiles=QUANTILES) -> list[tuple[int, float]]:
    """Indices of the tiles at the given quantiles of the ranking by count (tiles with at least one
    nucleus; each tile once), with the quantile each tile really is (its rank / number of tiles).

    >>> pick_zooms([0, 5, 1, 9, 3, 7])
    [(4, 0.4), (1, 0.6), (5, 0.8), (3, 1.0)]
    >>> pick_zooms([0, 4])
    [(1, 1.0)]
    """
    counts = np.asarray(counts)
    cand = np.flatnonzero(counts > 0)
    if not len(cand):
        return []
    order = cand[np.argsort(counts[cand], kind="stable")]
    out, seen = [], set()
    for q in quantiles:
        pos = min(len(order) - 1, max(0, int(np.ceil(q * len(order))) - 1))
        i = int(order[pos])
        if i not in seen:
            seen.add(i)
            out.append((i, round((pos + 1) / len(order), 3)))
    return out


def qc_inputs(reader, final, level0_mpp: float, f: float, typed: bool) -> dict:
    """Keyword arguments of ``write_qc_png`` beyond the thumbnail: centroids, areas, zooms, legend."""
    from ..slide import read_region

    fin = list(final)
    cents = [np.stack([tn.columns["centroid_x_px"][idx], tn.columns["centroid_y_px"][idx]], 1)
             for tn, idx, _ in fin]
    cents = np.concatenate(cents) if cents else np.zeros((0, 2))
    areas = np.concatenate([tn.columns["area_um2"][idx] for tn, idx, _ in fin]) if fin else np.zeros(0)
    side = ZOOM_WORK_PX * f                                   # level-0 px
    zooms = []
    for ti, q in pick_zooms([len(idx) for _, idx, _ in fin]):
        tn, idx, _ = fin[ti]
        cx, cy = tn.columns["centroid_x_px"][idx], tn.columns["centroid_y_px"][idx]
        x0, y0 = float(np.median(cx)) - side / 2, float(np.median(cy)) - side / 2
        crop = read_region(reader, x0, y0, side, side, ZOOM_WORK_PX, ZOOM_WORK_PX)
        # every survivor of the tile and its neighbours whose centroid falls in the window
        polys, colors = [], []
        for tn2, idx2, _ in fin:
            c = tn2.core
            if (c.x1 * f < x0 - side or c.x0 * f > x0 + 2 * side
                    or c.y1 * f < y0 - side or c.y0 * f > y0 + 2 * side):
                continue
            x, y = tn2.columns["centroid_x_px"][idx2], tn2.columns["centroid_y_px"][idx2]
            inside = (x >= x0) & (x < x0 + side) & (y >= y0) & (y < y0 + side)
            sel = idx2[inside]
            if typed and "type" in tn2.columns:
                col = np.array([T.type_color(c) for c in T.codes(tn2.columns["type"][sel]).tolist()],
                               np.uint8).reshape(-1, 3)
            else:
                from .qc import confidence_color

                col = confidence_color(tn2.columns["confidence"][sel]).reshape(-1, 3)
            for i, rgb in zip(sel.tolist(), col):
                polys.append((tn2.polygon(i) - (x0, y0)) / f)     # crop pixels (working resolution)
                colors.append(rgb)
        dens = ""
        if level0_mpp:
            core_mm2 = tn.core.h * tn.core.w * (f * level0_mpp / 1000.0) ** 2
            dens = f", {len(idx) / core_mm2:,.0f}/mm²"
        caption = f"{'densest' if q >= 1 else f'q{int(round(q * 100))}'} tile{dens}"
        zooms.append((crop, polys, colors, (x0, y0, side, side), caption))
    legend = None
    n = len(cents)
    sub = f"{n:,} nuclei"
    if typed:
        counts = {name: 0 for name in T.NAMES}
        untyped = 0
        for tn, idx, _ in fin:
            if "type" in tn.columns:
                for code, m in enumerate(np.bincount(T.codes(tn.columns["type"][idx]), minlength=5)[:5]):
                    if code:
                        counts[T.TYPES[code][0]] += int(m)
                    else:
                        untyped += int(m)
        legend = [(f"{name} ({counts[name]:,})", rgb) for name, rgb in T.TYPES.values()]
        legend.append((f"untyped ({untyped:,})", T.NUCLEUS_COLOR))   # no confident type (wsi_nuc.type_trust)
    sub += "  |  tissue outline (green), nucleus density (right), zoom windows (blue, numbered)"
    return {"centroids_level0_xy": cents, "zooms": zooms, "areas_um2": areas, "legend": legend,
            "subtitle": sub}
