"""Nucleus outlines (level-0 polygons) rasterised into working-pixel label blocks: the OME-Zarr writer's
level 0 (:mod:`.ome_zarr`), one block at a time.

A working pixel (r, c) covers level-0 [c f, (c + 1) f) x [r f, (r + 1) f); it gets a nucleus when its centre
lies inside the nucleus polygon (or on its outline: the pixels of ``skimage.draw.polygon``, found for all
polygons of a block at once). Level-0 vertices map to working pixel-centre coordinates with
``x_work = x_level0 / f - 0.5`` (and y alike), so a polygon traced around a pixel mask (contour through the
midpoints between inside and outside pixel centres, level-0 = (c + 0.5) f) rasterises back to exactly that
mask.

Overlaps: where polygons overlap, the smaller polygon (by area) wins; equal areas go to the lower id. The
rule depends only on the set of polygons covering a pixel, so it is the same in every block and independent
of the query order. Blocks no polygon touches are never written (fill value 0).

>>> sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)          # level-0, f = 2: 2 x 2 working px
>>> rasterise([(7, sq)], Box(0, 0, 3, 3), 2.0)
array([[7, 7, 0],
       [7, 7, 0],
       [0, 0, 0]], dtype=uint32)
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..outlines import pack_polygons
from ..tiling import Box


def polygon_areas(coords: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shoelace area of every polygon packed back to back: polygon i is ``coords[offsets[i]:offsets[i+1]]``
    ((K, 2) x, y). Vectorised; polygons with fewer than 3 vertices have area 0."""
    offsets = np.asarray(offsets, dtype=np.intp)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)[:offsets[-1]]
    starts, lens = offsets[:-1], np.diff(offsets)
    areas = np.zeros(len(lens))
    used = lens > 0
    if not used.any():
        return areas
    x, y = coords[:, 0], coords[:, 1]
    nxt = np.arange(1, len(x) + 1)
    nxt[offsets[1:][used] - 1] = starts[used]                # each ring wraps to its first vertex
    cross = x * y[nxt] - y * x[nxt]
    areas[used] = 0.5 * np.abs(np.add.reduceat(cross, starts[used]))
    areas[lens < 3] = 0.0
    return areas


def _span_rows(lo: np.ndarray, hi: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Expand integer row ranges [lo, hi] (clipped to [0, h)) into (range index, row) pairs."""
    lo, hi = np.maximum(lo, 0), np.minimum(hi, h - 1)
    n = np.maximum(hi - lo + 1, 0)
    which = np.repeat(np.arange(len(n)), n)
    rows = lo[which] + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return which, rows


def _crossings(x, y, prev, poly, h, right: bool):
    """Where each polygon edge (vertex i, vertex prev[i]) crosses the integer rows, as thresholds ``t``
    on the column: for ``right`` the edge counts for pixel c iff c < t (skimage's right-ray crossing,
    rows with exactly one end point above), else iff c > t (left ray, one end point below).

    Returns (polygon, row, t). Where the intercept lies within 1e-6 of a pixel centre the decision is
    taken with skimage's own floating-point expression, so the result equals ``skimage.draw.polygon``.
    """
    xi, yi, xj, yj = x, y, x[prev], y[prev]
    lo, hi = np.minimum(yi, yj), np.maximum(yi, yj)
    if right:   # rows r with lo <= r < hi
        e, r = _span_rows(np.ceil(lo).astype(np.int64), np.ceil(hi).astype(np.int64) - 1, h)
    else:       # rows r with lo < r <= hi
        e, r = _span_rows(np.floor(lo).astype(np.int64) + 1, np.floor(hi).astype(np.int64), h)
    xi, yi, xj, yj, rf = xi[e], yi[e], xj[e], yj[e], r.astype(np.float64)
    t = xi + (xj - xi) * (rf - yi) / (yj - yi)
    c = np.rint(t)
    near = np.abs(t - c) < 1e-6
    if near.any():
        c, yr = c[near], rf[near]
        x0, y0, x1, y1 = xi[near] - c, yi[near] - yr, xj[near] - c, yj[near] - yr
        s = (x0 * y1 - x1 * y0) / (y1 - y0)   # skimage's point_in_polygon test for pixel (yr, c)
        t[near] = np.where(s > 0, c + 0.5, c - 0.5) if right else np.where(s < 0, c - 0.5, c + 0.5)
    return poly[e], r, t


def _fill_spans(poly, rows, t, w):
    """Pixel spans of the odd-crossing-count runs: per (polygon, row), sorted thresholds pair up as
    (t0, t1), (t2, t3), ... and the pixels strictly between each pair are inside."""
    order = np.lexsort((t, poly * (rows.max(initial=0) + 1) + rows))
    poly, rows, t = poly[order], rows[order], t[order]
    lo = np.maximum(np.floor(t[0::2]).astype(np.int64) + 1, 0)
    hi = np.minimum(np.ceil(t[1::2]).astype(np.int64) - 1, w - 1)
    return poly[0::2], rows[0::2], lo, hi


def _polygon_pixels(x, y, offsets, shape):
    """(polygon index, flat pixel index) of every pixel whose centre lies inside or on a polygon, for
    polygons packed back to back in working-pixel coordinates (x = column, y = row) relative to the box.

    Same pixels as ``skimage.draw.polygon(y, x, shape)`` polygon by polygon (points on edges and,
    within 1e-12, on vertices count as inside), found row span by row span for all polygons at once.
    """
    h, w = shape
    starts, lens = offsets[:-1], np.diff(offsets)
    poly = np.repeat(np.arange(len(lens)), lens)
    prev = np.arange(-1, len(x) - 1)
    prev[starts] = offsets[1:] - 1                        # vertex 0 pairs with the last vertex
    spans = [_fill_spans(*_crossings(x, y, prev, poly, h, right), w) for right in (True, False)]
    p, r, lo, hi = (np.concatenate(a) for a in zip(*spans))
    n = np.maximum(hi - lo + 1, 0)
    first = r * w + lo
    flat = np.repeat(first - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
    owner = np.repeat(p, n)
    # vertices within 1e-12 of a pixel centre
    cx, cy = np.rint(x), np.rint(y)
    v = ((np.abs(x - cx) < 1e-12) & (np.abs(y - cy) < 1e-12) & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h))
    flat = np.concatenate([flat, cy[v].astype(np.int64) * w + cx[v].astype(np.int64)])
    owner = np.concatenate([owner, poly[v]])
    return owner, flat


def rasterise(pairs: Iterable[tuple[int, np.ndarray]], box: Box, f: float, dtype=np.uint32) -> np.ndarray:
    """Rasterise level-0 polygons ``(nucleus_id, (K, 2) xy)`` into the working-pixel ``box``.

    A pixel takes the id of the smallest polygon containing its centre (ties: lowest id). Polygons with
    fewer than 3 vertices, non-finite vertices or id 0 are skipped. All polygons of the box are
    rasterised together (vectorised), with the pixels of ``skimage.draw.polygon``.
    """
    y0, x0, h, w = box.y0, box.x0, box.h, box.w
    ids, polys = [], []
    for nid, xy in pairs:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if len(xy) >= 3 and nid != 0:
            ids.append(int(nid))
            polys.append(xy)
    coords, offsets = pack_polygons(polys)
    if not np.isfinite(coords).all():
        good = [k for k, p in enumerate(polys) if np.isfinite(p).all()]
        ids, polys = [ids[k] for k in good], [polys[k] for k in good]
        coords, offsets = pack_polygons(polys)
    if not ids or h <= 0 or w <= 0:
        return np.zeros((h, w), dtype=dtype)
    ids = np.asarray(ids, dtype=np.int64)
    areas = polygon_areas(coords, offsets)
    # paint rank: large first and, among equal areas, high ids first; the highest rank (small / low id)
    # covering a pixel wins
    rank = np.empty(len(ids), np.int64)
    rank[np.lexsort((-ids, -areas))] = np.arange(1, len(ids) + 1)
    owner, flat = _polygon_pixels(coords[:, 0] / f - 0.5 - x0, coords[:, 1] / f - 0.5 - y0, offsets, (h, w))
    best = np.zeros(h * w, np.int64)
    np.maximum.at(best, flat, rank[owner])
    by_rank = np.zeros(len(ids) + 1, dtype=dtype)
    by_rank[rank] = ids
    return by_rank[best].reshape(h, w)


def rasterise_blocks(arr, query, f: float, chunk: int) -> int:
    """Fill the (H, W) array ``arr`` block by block (``chunk`` px) with the outlines ``query(box)`` yields for
    each working-pixel :class:`~wsi_nuc.tiling.Box` (at least those touching it: ``FinalIndex.query``);
    returns the largest id written (0 when none). Blocks without outlines stay 0."""
    h, w = arr.shape
    max_id = 0
    for y0 in range(0, h, chunk):
        y1 = min(y0 + chunk, h)
        for x0 in range(0, w, chunk):
            x1 = min(x0 + chunk, w)
            box = Box(y0, x0, y1, x1)
            pairs = list(query(box))
            if not pairs:
                continue
            buf = rasterise(pairs, box, f)
            m = int(buf.max(initial=0))
            if m:
                max_id = max(max_id, m)
                arr[y0:y1, x0:x1] = buf
    return max_id
