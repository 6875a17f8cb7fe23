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

Moments and means are computed for all nuclei at once with ``np.bincount``; only the perimeter and the
convex hull are computed per nucleus, on the nucleus' bounding-box crop (``ndi.find_objects``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import perimeter as _sk_perimeter
from skimage.morphology import convex_hull_image

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
    n = len(ids)
    out = empty_columns(n)
    if n == 0:
        return out
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != labels.shape or rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb shape {rgb.shape} does not match labels {labels.shape} (need (H, W, 3))")
    f = float(mpp_work) / float(level0_mpp)
    ox, oy = float(origin_xy[0]), float(origin_xy[1])

    comp, idx, nbins = _compact(labels, ids)
    flat = comp.ravel()
    h, w = labels.shape

    # ---- moments, all nuclei at once, over the labelled pixels only ------------------------------
    nz = np.flatnonzero(flat)
    fl = flat[nz]
    rows = (nz // w).astype(np.float64)
    cols = (nz % w).astype(np.float64)
    cnt = np.bincount(fl, minlength=nbins).astype(np.float64)
    sr = np.bincount(fl, rows, nbins)
    sc = np.bincount(fl, cols, nbins)
    srr = np.bincount(fl, rows * rows, nbins)
    scc = np.bincount(fl, cols * cols, nbins)
    src = np.bincount(fl, rows * cols, nbins)
    del rows, cols

    c = cnt[idx]
    present = (idx > 0) & (c > 0)
    cs = np.where(present, c, 1.0)
    mr = sr[idx] / cs
    mc = sc[idx] / cs
    var_r = np.maximum(srr[idx] / cs - mr * mr, 0.0)
    var_c = np.maximum(scc[idx] / cs - mc * mc, 0.0)
    cov = src[idx] / cs - mr * mc

    x_px = ox + (mc + 0.5) * f
    y_px = oy + (mr + 0.5) * f
    out["centroid_x_px"] = np.where(present, x_px, np.nan)
    out["centroid_y_px"] = np.where(present, y_px, np.nan)
    out["centroid_x_um"] = out["centroid_x_px"] * level0_mpp
    out["centroid_y_um"] = out["centroid_y_px"] * level0_mpp

    area_px = np.where(present, c, 0.0)
    out["area_um2"] = area_px * mpp_work ** 2
    out["equivalent_diameter_um"] = np.where(present, np.sqrt(4.0 * area_px / np.pi) * mpp_work, np.nan)

    # regionprops inertia tensor [[var_c, -cov], [-cov, var_r]] (skimage's definition)
    a, b, d = var_c, -cov, var_r
    half_tr = 0.5 * (a + d)
    disc = np.sqrt(np.maximum(0.25 * (a - d) ** 2 + b * b, 0.0))
    l1 = np.maximum(half_tr + disc, 0.0)
    l2 = np.maximum(half_tr - disc, 0.0)
    out["major_axis_um"] = np.where(present, 4.0 * np.sqrt(l1) * mpp_work, np.nan)
    out["minor_axis_um"] = np.where(present, 4.0 * np.sqrt(l2) * mpp_work, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
    out["eccentricity"] = np.where(present, ecc, np.nan)
    # skimage: if a == c: -pi/4 if b < 0 else pi/4, else 0.5 * atan2(-2 b, c - a)
    theta = np.where(a - d == 0, np.where(b < 0, -np.pi / 4, np.pi / 4), 0.5 * np.arctan2(-2.0 * b, d - a))
    out["orientation_deg"] = np.where(present, np.degrees(theta), np.nan)

    # ---- intensity means ------------------------------------------------------------------------
    rgb3 = rgb[..., :3]
    pix = rgb3.reshape(-1, 3)[nz]
    for k, name in enumerate(("mean_r", "mean_g", "mean_b")):
        s = np.bincount(fl, pix[:, k].astype(np.float64), nbins)
        out[name] = np.where(present, s[idx] / cs, np.nan)
    scale = 255.0 if rgb3.dtype == np.uint8 or float(rgb3.max(initial=0)) > 1.0 else 1.0
    hod = haematoxylin_od(pix.astype(np.float32) / scale)
    s = np.bincount(fl, hod.astype(np.float64), nbins)
    out["mean_h_od"] = np.where(present, s[idx] / cs, np.nan)
    if confidence is not None:
        conf = np.asarray(confidence, dtype=np.float64)
        if conf.shape != labels.shape:
            raise ValueError(f"confidence shape {conf.shape} does not match labels {labels.shape}")
        s = np.bincount(fl, conf.ravel()[nz], nbins)
        out["confidence"] = np.where(present, s[idx] / cs, np.nan)

    if outlines is not None:
        return _outline_shape(out, outlines, present, level0_mpp)

    # ---- per-nucleus: perimeter and convex hull on the bounding-box crop ------------------------
    slices = ndi.find_objects(comp, max_label=nbins - 1)
    perim = np.full(n, np.nan)
    solid = np.full(n, np.nan)
    for i in np.flatnonzero(present):
        k = idx[i]
        sl = slices[k - 1]
        m = comp[sl] == k
        # pad by one so that boundary pixels of the crop count as boundary
        mp = np.pad(m, 1)
        perim[i] = _sk_perimeter(mp, neighborhood=4)
        if m.all():
            solid[i] = 1.0
        else:
            hull = convex_hull_image(mp, offset_coordinates=True)
            solid[i] = area_px[i] / max(int(hull.sum()), 1)
    out["perimeter_um"] = perim * mpp_work
    with np.errstate(divide="ignore", invalid="ignore"):
        circ = 4.0 * np.pi * area_px / np.where(perim > 0, perim, np.nan) ** 2
    out["circularity"] = np.where(present, np.clip(np.nan_to_num(circ, nan=1.0), 0.0, 1.0), np.nan)
    out["solidity"] = solid
    return out


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
