"""Nucleus outlines: packed back to back, and cleaned one at a time (:func:`clean_polygon`) or many at once
(:func:`clean_polygons`, its vectorised fast path). Kernels of the tile task: no writer is imported here.

A tile owns hundreds of nuclei; cleaning their rings one shapely call at a time cost more than the
watershed. :func:`clean_polygons` builds every ring in one array call, keeps those that are already valid
after rounding (nearly all: marching-squares contours of one mask are simple), and sends only the rest
through the scalar repair path. The output is the same ring, vertex for vertex, as ``clean_polygon``
gives for each input (tested).
"""
from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient


def pack_polygons(polys: list) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 2) float64, offsets (n + 1,) int64): outline i is ``coords[offsets[i]:offsets[i + 1]]``."""
    lens = [len(p) for p in polys]
    offsets = np.zeros(len(polys) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    coords = np.concatenate(polys).astype(np.float64) if polys else np.zeros((0, 2))
    return coords, offsets


def clean_polygons(rings: list, decimals: int = 2) -> list:
    """``[clean_polygon(r) for r in rings]``, computed in bulk (None stays None)."""
    out: list = [None] * len(rings)
    todo = []
    arrays = []
    for i, r in enumerate(rings):
        if r is None:
            continue
        a = np.asarray(r, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or len(a) < 3 or not np.isfinite(a).all():
            out[i] = clean_polygon(a) if a.ndim == 2 and a.shape[-1] == 2 else None
            continue
        todo.append(i)
        arrays.append(np.round(a, decimals))
    if not todo:
        return out
    lens = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
    index = np.repeat(np.arange(len(arrays)), lens)
    geoms = shapely.polygons(shapely.linearrings(np.concatenate(arrays), indices=index))
    fast = shapely.is_valid(geoms) & (shapely.area(geoms) > 0)
    simple = shapely.simplify(geoms[fast], 0)  # drops collinear / repeated vertices only
    good = (shapely.get_type_id(simple) == 3) & ~shapely.is_empty(simple)
    oriented = shapely.orient_polygons(simple[good], exterior_cw=False)
    xy, which = shapely.get_coordinates(shapely.get_exterior_ring(oriented), return_index=True)
    counts = np.bincount(which, minlength=len(oriented))
    starts = np.concatenate([[0], np.cumsum(counts)])
    fast_idx = np.flatnonzero(fast)[good]
    done = set()
    for k, j in enumerate(fast_idx):
        if counts[k] >= 4:
            out[todo[j]] = xy[starts[k]:starts[k + 1]]
            done.add(j)
    for j, i in enumerate(todo):
        if j not in done:
            out[i] = clean_polygon(rings[i], decimals)
    return out


def _largest_polygon(geom) -> Polygon | None:
    """The largest-area Polygon in ``geom`` (any geometry type), holes dropped; None if there is none."""
    if geom is None or geom.is_empty:
        return None
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    polys = []
    for g in parts:
        polys.extend(shapely.get_parts(g) if g.geom_type == "MultiPolygon" else [g])
    if not polys:
        return None
    best = max(polys, key=lambda p: p.area)
    if best.area <= 0:
        return None
    return Polygon(best.exterior)


def clean_polygon(xy: np.ndarray, decimals: int = 2) -> np.ndarray | None:
    """Make one valid, simple polygon ring from vertices ``xy`` (K, 2); None if nothing is left.

    Fast path: if the ring rounded to ``decimals`` is already a valid polygon it is returned with
    collinear vertices removed and counter-clockwise orientation. Otherwise: drop non-finite vertices;
    ``shapely.make_valid`` (bow-ties, spikes, repeated
    points); keep the largest polygon part and its exterior only (holes dropped); snap to a grid of
    ``10**-decimals`` with ``shapely.set_precision`` (validity-preserving); orient counter-clockwise
    (RFC 7946); round; re-validate the rounded ring. Returns a closed (M, 2) float64 ring (first vertex
    repeated at the end), M >= 4.
    """
    a = np.asarray(xy, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"polygon vertices must be (K, 2), got {a.shape}")
    a = a[np.isfinite(a).all(axis=1)]
    if len(a) < 3:
        return None
    grid = 10.0 ** (-decimals)
    # fast path (the usual case): the rounded ring is already valid; dropping collinear vertices and
    # re-orienting keep it valid and do not create new coordinates
    fast = Polygon(np.round(a, decimals))
    if fast.is_valid and fast.area > 0 and not fast.interiors:
        fast = fast.simplify(0)
        if fast.geom_type == "Polygon" and not fast.is_empty:
            ring = np.asarray(orient(fast, sign=1.0).exterior.coords, dtype=np.float64)
            if len(ring) >= 4:
                return ring
    geom = Polygon(a)
    for _ in range(3):
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        poly = _largest_polygon(geom)
        if poly is None:
            return None
        poly = poly.simplify(0)  # removes collinear / repeated vertices only (lossless)
        snapped = _largest_polygon(shapely.set_precision(poly, grid))
        if snapped is None:
            return None
        snapped = orient(snapped, sign=1.0)
        ring = np.round(np.asarray(snapped.exterior.coords, dtype=np.float64), decimals)
        check = Polygon(ring)
        if len(ring) >= 4 and check.is_valid and check.area > 0:
            return ring
        geom = check  # rounding broke it: repair the rounded ring and try again
    return None
