"""Per-nucleus measurements, returned as columns (one numpy array per measurement).

Conventions (all documented in the CSV/GeoJSON output):

- Coordinates: a working pixel (r, c) covers level-0 x in [c f, (c + 1) f), y in [r f, (r + 1) f) with
  ``f = mpp_work / level0_mpp``. The centroid is the mean of the pixel centres, so
  ``centroid_x_px = origin_x + (mean(c) + 0.5) * f`` (level-0 pixels) and ``centroid_x_um = centroid_x_px *
  level0_mpp``; same for y.
- ``area_um2``: pixel count * mpp_work**2.
- ``perimeter_um``: :func:`skimage.measure.perimeter` with ``neighborhood=4`` (the estimator that
  ``regionprops(...).perimeter`` uses; it weights straight and diagonal boundary runs), times mpp_work.
- ``circularity``: 4 pi area / perimeter**2, clipped to at most 1 (the pixel perimeter estimate can make
  tiny objects exceed 1).
- ``major_axis_um``, ``minor_axis_um``, ``eccentricity``: of the ellipse with the same second central
  moments as the nucleus, exactly as ``regionprops`` defines them (axis length = 4 sqrt(eigenvalue)).
- ``orientation_deg``: identical to ``degrees(regionprops(...).orientation)``: the angle between the image
  row axis (downwards, axis 0) and the major axis, in [-90, 90] degrees, counter-clockwise. A nucleus
  elongated along x reads +-90, one elongated along y reads 0.
- ``solidity``: pixel count / convex-hull pixel count (``regionprops`` ``solidity``, the hull of the pixel
  squares rasterised back to the grid).
- ``mean_r/g/b`` (0..255) and ``mean_h_od`` (haematoxylin optical density, Ruifrok & Johnston colour
  deconvolution) over the nucleus pixels; ``confidence`` the mean of the confidence map over the nucleus
  (NaN when no map is given).

Everything is computed for all nuclei of a tile at once: moments and means with ``np.bincount`` over the
labelled pixels (:class:`NucleusPixels`); perimeter, circularity and solidity from the outlines with
vectorised shapely (the pipeline's path), or without outlines from the pixels (:func:`_perimeters`,
:func:`_hull_pixel_counts`: the numbers skimage gives nucleus by nucleus, for the whole tile in a few
array passes).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .stain import haematoxylin_od

COLUMNS = [
    "nucleus_id",
    "centroid_x_px", "centroid_y_px", "centroid_x_um", "centroid_y_um",
    "area_um2", "perimeter_um", "equivalent_diameter_um", "major_axis_um", "minor_axis_um",
    "eccentricity", "solidity", "circularity", "orientation_deg",
    "mean_r", "mean_g", "mean_b", "mean_h_od", "confidence",
]

# Labels larger than this are remapped to 1..n before bincount/find_objects (keeps memory bounded when
# a tile carries large global ids).
_MAX_DIRECT_LABEL = 1 << 22


def empty_columns(n: int = 0) -> dict[str, np.ndarray]:
    """All measurement columns (everything in COLUMNS but ``nucleus_id``) filled with NaN."""
    return {k: np.full(n, np.nan, np.float64) for k in COLUMNS if k != "nucleus_id"}


def _compact(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (labels with small non-negative ints, the compact index of each id (0 = absent), n_bins)."""
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got {lab.dtype}")
    lo = int(lab.min(initial=0))
    hi = int(lab.max(initial=0))
    if lo >= 0 and hi <= _MAX_DIRECT_LABEL:
        idx = np.where((ids > 0) & (ids <= hi), ids, 0).astype(np.intp)
        return lab.astype(np.intp, copy=False), idx, hi + 1
    vals = np.unique(lab)
    vals = vals[vals > 0]
    comp = np.searchsorted(vals, lab).astype(np.intp) + 1
    comp[lab <= 0] = 0
    if len(vals) == 0:
        return comp, np.zeros(len(ids), np.intp), 1
    pos = np.minimum(np.searchsorted(vals, ids), len(vals) - 1)
    idx = np.where((vals[pos] == ids) & (ids > 0), pos + 1, 0).astype(np.intp)
    return comp, idx, len(vals) + 1


def measure_nuclei(labels: np.ndarray, rgb: np.ndarray, ids, mpp_work: float, level0_mpp: float,
                   origin_xy=(0.0, 0.0), confidence: np.ndarray | None = None,
                   outlines: list | None = None) -> dict[str, np.ndarray]:
    """Measure the nuclei ``ids`` of a working-resolution label tile.

    Parameters
    ----------
    labels : int (H, W) instance labels (0 = background) at the working resolution.
    rgb : uint8 (H, W, 3) image on the same grid.
    ids : the label ids to measure; output rows follow this order. An id absent from ``labels`` gives a
        row of NaN with area 0.
    mpp_work, level0_mpp : µm per working pixel and per level-0 pixel; ``f = mpp_work / level0_mpp``.
    origin_xy : level-0 (x, y) of the top-left corner of ``labels[0, 0]``.
    confidence : optional float (H, W) map in 0..1, averaged over each nucleus.
    outlines : optional list of (K, 2) level-0 (x, y) outlines, one per id (the pipeline's polygons). When
        given, perimeter, circularity and solidity come from the outline (vectorised shapely: length,
        area, convex hull), which is several times faster than per-crop pixel measures and matches what
        QuPath computes from the same polygon; otherwise from the pixel mask (4-connected perimeter,
        convex_hull_image).

    Returns every column of :data:`COLUMNS` except ``nucleus_id``, each a float64 array of ``len(ids)``.
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    out = empty_columns(len(ids))
    if len(ids) == 0:
        return out
    labels, rgb = _checked(labels, rgb, confidence)
    px = NucleusPixels.of(labels, ids)
    out.update(_position(px, float(mpp_work) / float(level0_mpp), origin_xy, level0_mpp))
    out.update(_size(px, mpp_work))
    out.update(_ellipse(px, mpp_work))
    out.update(_colour(px, rgb))
    if confidence is not None:
        out["confidence"] = px.mean(np.asarray(confidence, dtype=np.float64))
    if outlines is not None:
        return _outline_shape(out, outlines, px.present, level0_mpp)
    out.update(_pixel_shape(px, mpp_work))
    return out


def _checked(labels, rgb, confidence) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` (2-D) and ``rgb`` (H, W, >= 3) as arrays; ValueError when the shapes do not match."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != labels.shape or rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb shape {rgb.shape} does not match labels {labels.shape} (need (H, W, 3))")
    if confidence is not None and np.shape(confidence) != labels.shape:
        raise ValueError(f"confidence shape {np.shape(confidence)} does not match labels {labels.shape}")
    return labels, rgb


@dataclass
class NucleusPixels:
    """The labelled pixels of a tile, for per-nucleus sums over all nuclei at once (``np.bincount``).

    ``comp``: the labels compacted to small ints (:func:`_compact`); ``idx``: each requested id's compact
    label (0 = absent); ``flat``: flat indices of the labelled pixels, ``lab`` their compact labels;
    ``count``: each requested id's pixel count; ``present``: the id has pixels.
    """

    comp: np.ndarray
    idx: np.ndarray
    nbins: int
    flat: np.ndarray
    lab: np.ndarray
    count: np.ndarray
    present: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, ids: np.ndarray) -> "NucleusPixels":
        comp, idx, nbins = _compact(labels, ids)
        flat = np.flatnonzero(comp.ravel())
        lab = comp.ravel()[flat]
        count = np.bincount(lab, minlength=nbins).astype(np.float64)[idx]
        return cls(comp, idx, nbins, flat, lab, count, (idx > 0) & (count > 0))

    @property
    def safe_count(self) -> np.ndarray:
        """The counts with 1 for absent ids (divisor)."""
        return np.where(self.present, self.count, 1.0)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per requested id: the sum of ``values`` (one per labelled pixel, in ``flat`` order)."""
        return np.bincount(self.lab, values, self.nbins)[self.idx]

    def mean(self, image: np.ndarray) -> np.ndarray:
        """Per requested id: the mean of ``image`` (same grid as the labels) over its pixels; NaN if absent."""
        return np.where(self.present, self.sums(image.ravel()[self.flat]) / self.safe_count, np.nan)

    @cached_property
    def moments(self) -> tuple[np.ndarray, ...]:
        """(mean row, mean column, row variance, column variance, covariance) of each requested id."""
        w = self.comp.shape[1]
        rows, cols = (self.flat // w).astype(np.float64), (self.flat % w).astype(np.float64)
        cs = self.safe_count
        mr = self.sums(rows) / cs
        mc = self.sums(cols) / cs
        var_r = np.maximum(self.sums(rows * rows) / cs - mr * mr, 0.0)
        var_c = np.maximum(self.sums(cols * cols) / cs - mc * mc, 0.0)
        cov = self.sums(rows * cols) / cs - mr * mc
        return mr, mc, var_r, var_c, cov


def _position(px: NucleusPixels, f: float, origin_xy, level0_mpp: float) -> dict[str, np.ndarray]:
    """Centroids in level-0 pixels and µm (mean pixel centre)."""
    mr, mc = px.moments[:2]
    x_px = float(origin_xy[0]) + (mc + 0.5) * f
    y_px = float(origin_xy[1]) + (mr + 0.5) * f
    out = {"centroid_x_px": np.where(px.present, x_px, np.nan), "centroid_y_px": np.where(px.present, y_px, np.nan)}
    out["centroid_x_um"] = out["centroid_x_px"] * level0_mpp
    out["centroid_y_um"] = out["centroid_y_px"] * level0_mpp
    return out


def _size(px: NucleusPixels, mpp_work: float) -> dict[str, np.ndarray]:
    """Area (pixel count) and equivalent diameter."""
    area_px = np.where(px.present, px.count, 0.0)
    return {"area_um2": area_px * mpp_work ** 2,
            "equivalent_diameter_um": np.where(px.present, np.sqrt(4.0 * area_px / np.pi) * mpp_work, np.nan)}


def _ellipse(px: NucleusPixels, mpp_work: float) -> dict[str, np.ndarray]:
    """Axes, eccentricity and orientation of the ellipse with the same second moments (``regionprops``)."""
    var_r, var_c, cov = px.moments[2:]
    # regionprops inertia tensor [[var_c, -cov], [-cov, var_r]] (skimage's definition)
    a, b, d = var_c, -cov, var_r
    half_tr = 0.5 * (a + d)
    disc = np.sqrt(np.maximum(0.25 * (a - d) ** 2 + b * b, 0.0))
    l1 = np.maximum(half_tr + disc, 0.0)
    l2 = np.maximum(half_tr - disc, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
    # skimage: if a == c: -pi/4 if b < 0 else pi/4, else 0.5 * atan2(-2 b, c - a)
    theta = np.where(a - d == 0, np.where(b < 0, -np.pi / 4, np.pi / 4), 0.5 * np.arctan2(-2.0 * b, d - a))
    ok = px.present
    return {"major_axis_um": np.where(ok, 4.0 * np.sqrt(l1) * mpp_work, np.nan),
            "minor_axis_um": np.where(ok, 4.0 * np.sqrt(l2) * mpp_work, np.nan),
            "eccentricity": np.where(ok, ecc, np.nan),
            "orientation_deg": np.where(ok, np.degrees(theta), np.nan)}


def _colour(px: NucleusPixels, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Mean R, G, B and mean haematoxylin optical density over each nucleus."""
    rgb3 = rgb[..., :3]
    pix = rgb3.reshape(-1, 3)[px.flat]
    cs = px.safe_count
    out = {name: np.where(px.present, px.sums(pix[:, k].astype(np.float64)) / cs, np.nan)
           for k, name in enumerate(("mean_r", "mean_g", "mean_b"))}
    hod = _haematoxylin(pix, rgb3)
    out["mean_h_od"] = np.where(px.present, px.sums(hod.astype(np.float64)) / cs, np.nan)
    return out


def _haematoxylin(pix: np.ndarray, rgb3: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density of pixels ``pix`` (N, 3) of the image ``rgb3`` (its dtype and range
    decide the scale: uint8 or values above 1 are 0..255)."""
    scale = 255.0 if rgb3.dtype == np.uint8 or float(rgb3.max(initial=0)) > 1.0 else 1.0
    return haematoxylin_od(pix.astype(np.float32) / scale)


def _pixel_shape(px: NucleusPixels, mpp_work: float) -> dict[str, np.ndarray]:
    """Perimeter, circularity and solidity from the pixel masks (the path without outlines), all nuclei at
    once, with the numbers of ``skimage.measure.perimeter(mask, neighborhood=4)`` and of
    ``convex_hull_image(mask, offset_coordinates=True)`` on each nucleus' own mask."""
    area_px = np.where(px.present, px.count, 0.0)
    perim = np.where(px.present, _perimeters(px), np.nan)
    hull = _hull_pixel_counts(px)
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = 4.0 * np.pi * area_px / np.where(perim > 0, perim, np.nan) ** 2
        solid = np.where(px.present, area_px / np.maximum(hull, 1), np.nan)
    return {"perimeter_um": perim * mpp_work,
            "circularity": np.where(px.present, np.clip(np.nan_to_num(circ, nan=1.0), 0.0, 1.0), np.nan),
            "solidity": solid}


# skimage.measure.perimeter: a boundary pixel's code is 1 + the 3x3 weights below of the boundary pixels
# around it; each code stands for a length.
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_NEIGHBOUR_CODES = ((-1, -1, 10), (-1, 0, 2), (-1, 1, 10), (0, -1, 2), (0, 1, 2), (1, -1, 10), (1, 0, 2), (1, 1, 10))


def _perimeters(px: NucleusPixels) -> np.ndarray:
    """4-connected perimeter (pixels) of each requested id, as ``skimage.measure.perimeter`` on its mask:
    boundary pixels (a 4-neighbour is not the same nucleus) coded by the boundary pixels of the same nucleus
    around them; the histogram of codes per nucleus dotted with the code lengths (NaN where absent)."""
    lab = np.pad(px.comp, 1)
    h, w = px.comp.shape
    inner = lab[1:-1, 1:-1]

    def same(dy: int, dx: int) -> np.ndarray:
        return lab[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == inner

    border = (inner > 0) & ~(same(-1, 0) & same(1, 0) & same(0, -1) & same(0, 1))
    bpad = np.pad(border, 1)
    code = border.astype(np.int64)
    for dy, dx, weight in _NEIGHBOUR_CODES:
        code += weight * (bpad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] & same(dy, dx))
    hist = np.bincount(inner[border].astype(np.int64) * 50 + code[border], minlength=px.nbins * 50)
    hist = hist.reshape(px.nbins, 50)
    # one dot product per nucleus, as skimage computes it (the same sum, bit for bit)
    return np.array([hist[k] @ _PERIMETER_WEIGHTS if k > 0 else np.nan for k in px.idx], np.float64)


def _hull_pixel_counts(px: NucleusPixels) -> np.ndarray:
    """Per requested id: the pixels whose centres lie in or on the convex hull of the midpoints of its pixel
    squares' edges (``convex_hull_image(mask, offset_coordinates=True)``, borders included); 0 if absent.

    The hulls come from shapely, all at once, in doubled coordinates (every vertex an integer); the pixels
    in a hull are counted row by row from its edges' half-planes in integer arithmetic, so points on an
    edge are decided exactly."""
    import shapely

    out = np.zeros(len(px.idx), np.int64)
    if not px.present.any():
        return out
    h, w = px.comp.shape
    # a hull is the hull of each row's first and last pixel: those, by nucleus then row (flat is row-major)
    key = px.lab.astype(np.int64) * h + px.flat // w
    order = np.argsort(key, kind="stable")
    key, flat = key[order], px.flat[order]
    first = np.r_[True, key[1:] != key[:-1]]
    last = np.r_[key[1:] != key[:-1], True]
    ends = flat[first | last]
    used, dense = np.unique(key[first | last] // h, return_inverse=True)   # the labels present, one hull each
    r2, c2 = 2 * (ends // w), 2 * (ends % w)
    dr = np.array([-1, 1, 0, 0])
    dc = np.array([0, 0, -1, 1])
    pts = np.stack([(c2[:, None] + dc).ravel(), (r2[:, None] + dr).ravel()], axis=1).astype(np.float64)
    # a line through the points (in any order) has their hull; lines are built without a point object each
    hulls = shapely.convex_hull(shapely.linestrings(pts, indices=np.repeat(dense, 4)))
    hulls = shapely.orient_polygons(hulls, exterior_cw=False)
    xy, which = shapely.get_coordinates(shapely.get_exterior_ring(hulls), return_index=True)
    counts = _grid_points_in_convex(xy.astype(np.int64), which, len(used))
    per_label = np.zeros(px.nbins, np.int64)
    per_label[used] = counts
    out[px.present] = per_label[px.idx[px.present]]
    return out


def _grid_points_in_convex(xy: np.ndarray, which: np.ndarray, n: int) -> np.ndarray:
    """Integer points (x, y) = (col, row) in or on each of ``n`` convex counter-clockwise rings given in
    doubled integer coordinates (``xy`` closed rings back to back, ``which`` the ring of each vertex)."""
    last = np.r_[which[1:] != which[:-1], True]
    keep = ~last                                   # edge i runs from vertex i to i + 1 within a ring
    x0, y0, ring = xy[:-1, 0][keep[:-1]], xy[:-1, 1][keep[:-1]], which[:-1][keep[:-1]]
    dx = xy[1:, 0][keep[:-1]] - x0
    dy = xy[1:, 1][keep[:-1]] - y0
    ymin = np.full(n, np.iinfo(np.int64).max)
    ymax = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(ymin, which, xy[:, 1])
    np.maximum.at(ymax, which, xy[:, 1])
    rlo, rhi = -((-ymin) // 2), ymax // 2          # rows whose doubled y lies within the ring
    nrows = np.maximum(rhi - rlo + 1, 0)
    row_ring = np.repeat(np.arange(n), nrows)
    row = np.repeat(rlo, nrows) + np.arange(nrows.sum()) - np.repeat(np.cumsum(nrows) - nrows, nrows)
    # every (row, edge of its ring) pair; inside-or-on: dy * (2 col - x0) <= dx * (2 row - y0)
    n_edges = np.bincount(ring, minlength=n)
    first_edge = np.cumsum(n_edges) - n_edges
    k = np.repeat(np.arange(len(row)), n_edges[row_ring])
    e = np.repeat(first_edge[row_ring], n_edges[row_ring]) + (np.arange(len(k)) - np.repeat(
        np.cumsum(n_edges[row_ring]) - n_edges[row_ring], n_edges[row_ring]))
    num = dx[e] * (2 * row[k] - y0[e]) + dy[e] * x0[e]
    d2 = 2 * dy[e]
    big = np.iinfo(np.int64).max // 4
    hi = np.full(len(row), big)
    lo = np.full(len(row), -big)
    up, down, flat = d2 > 0, d2 < 0, d2 == 0
    np.minimum.at(hi, k[up], num[up] // d2[up])
    np.maximum.at(lo, k[down], -((-num[down]) // d2[down]))
    blocked = np.zeros(len(row), bool)
    blocked[k[flat & (dx[e] * (2 * row[k] - y0[e]) < 0)]] = True
    per_row = np.where(blocked, 0, np.maximum(hi - lo + 1, 0))
    return np.bincount(row_ring, per_row, minlength=n).astype(np.int64)


def _outline_shape(out: dict, outlines: list, present: np.ndarray, level0_mpp: float) -> dict:
    """Perimeter (µm), circularity and solidity from level-0 outlines, all nuclei at once."""
    import shapely

    if len(outlines) != len(present):
        raise ValueError(f"{len(outlines)} outlines for {len(present)} ids")
    ok = np.array([o is not None and len(o) >= 3 for o in outlines], bool)
    perim = np.full(len(outlines), np.nan)
    area = np.full(len(outlines), np.nan)
    hull = np.full(len(outlines), np.nan)
    if ok.any():
        rings = [np.asarray(o, float) for o, k in zip(outlines, ok) if k]
        index = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
        geoms = shapely.polygons(shapely.linearrings(np.concatenate(rings), indices=index))
        perim[ok] = shapely.length(geoms) * level0_mpp
        area[ok] = shapely.area(geoms)
        hull[ok] = shapely.area(shapely.convex_hull(geoms))
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = 4.0 * np.pi * area * level0_mpp ** 2 / perim ** 2
        solid = area / hull
    out["perimeter_um"] = np.where(present, perim, np.nan)
    out["circularity"] = np.where(present, np.clip(np.nan_to_num(circ, nan=1.0), 0.0, 1.0), np.nan)
    out["solidity"] = np.where(present, np.clip(np.nan_to_num(solid, nan=1.0), 0.0, 1.0), np.nan)
    return out
