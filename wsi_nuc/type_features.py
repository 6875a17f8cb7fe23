"""Per-nucleus features for the type head's out-of-distribution check (:mod:`wsi_nuc.type_trust`).

Cheap, scale-aware descriptors of a nucleus and of the tissue right around it. They are measured on
the image as read (at tile time, beside the other measurements) and their colours are then mapped
with the slide's Reinhard normalisation (:func:`normalised`, an affine map per CIELAB channel, so the
mean of a region maps exactly): the check sees the colours the network saw, and a slide's stain, already
mapped onto the training set's, does not count twice.

========================  =========================================================================
``log_area``              log of the area in µm²
``elongation``            ½ log(λ1 / λ2) of the pixel covariance (0: round; 0.7: axes 2:1)
``ring_L/a/b``            mean CIELAB of a ring 1-4 µm outside it (cytoplasm, stroma or lumen),
                          over every other pixel of every other row (a quarter: a mean needs no more)
``density``               other nuclei within 20 µm of its centroid
========================  =========================================================================

About 20-40 ms a 640² tile of dense tissue on one core (most of it the ring's colour).

A type is a claim about a nucleus *and* its tissue; the ring and the density carry the tissue (a
keratinocyte of a squamous epithelium sits in purple cytoplasm among evenly spaced big pale nuclei,
which CoNSeP's spindle-shaped stromal cells never do). Plain numpy/scipy over the label image.
"""
from __future__ import annotations

import numpy as np

FEATURES = ("log_area", "elongation", "ring_L", "ring_a", "ring_b", "density")
RING_UM = (1.0, 4.0)
DENSITY_UM = 20.0


def nucleus_features(labels: np.ndarray, rgb: np.ndarray, ids, mpp: float) -> np.ndarray:
    """(N, len(FEATURES)) float64 features of the nuclei ``ids`` of ``labels`` (NaN rows for absent ids).

    ``rgb``: the uint8 image on the grid of ``labels`` (as read; see :func:`normalised`); ``mpp``: that
    grid's µm/px.

    >>> lab = np.zeros((40, 40), int); lab[10:14, 10:20] = 1; lab[25:31, 25:31] = 2
    >>> f = nucleus_features(lab, np.full((40, 40, 3), 200, np.uint8), [1, 2], 0.5)
    >>> f.shape, bool(f[0, 1] > f[1, 1]), f[:, -1].tolist()
    ((2, 6), True, [1.0, 1.0])
    """
    from scipy.spatial import cKDTree

    from .type_map import _label_index

    labels = np.asarray(labels)
    ids = np.asarray(ids, np.int64).ravel()
    n = len(ids)
    out = np.full((n, len(FEATURES)), np.nan)
    if n == 0:
        return out
    idx, m = _label_index(labels, ids)
    idx = idx.reshape(labels.shape)
    flat = idx.ravel()
    inside = flat > 0
    li = flat[inside]
    cnt = np.bincount(li, minlength=m).astype(np.float64)
    w = labels.shape[1]
    px = np.flatnonzero(inside)
    y, x = (px // w).astype(np.float64), (px % w).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        my, mx = np.bincount(li, y, m) / cnt, np.bincount(li, x, m) / cnt
        dy, dx = y - my[li], x - mx[li]
        syy = np.bincount(li, dy * dy, m) / cnt + 1 / 12
        sxx = np.bincount(li, dx * dx, m) / cnt + 1 / 12
        sxy = np.bincount(li, dx * dy, m) / cnt
        tr, det = syy + sxx, syy * sxx - sxy ** 2
        disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0))
        elong = 0.5 * np.log((tr / 2 + disc) / np.maximum(tr / 2 - disc, 1e-6))
    ringlab = _ring_lab(idx, rgb, mpp, m)
    present = cnt > 0
    cy, cx = my * mpp, mx * mpp
    pts = np.stack([cy, cx], 1)[1:][present[1:]]
    dens = np.full(m - 1, np.nan)
    if len(pts):
        dens[present[1:]] = cKDTree(pts).query_ball_point(pts, DENSITY_UM, return_length=True) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        area = np.log(cnt * mpp * mpp)
    out = np.column_stack([area, elong, ringlab, np.r_[np.nan, dens]])[1:]
    out[~present[1:]] = np.nan
    return out


def _ring_lab(idx: np.ndarray, rgb: np.ndarray, mpp: float, m: int) -> np.ndarray:
    """(m, 3) mean CIELAB of the ring 1-4 µm around each nucleus (``idx``: 1 + position, 0 background; a
    ring pixel goes to the highest id within reach), over every other row and column (a quarter of it)."""
    from scipy import ndimage as ndi

    r0, r1 = (max(1, int(round(r / mpp))) for r in RING_UM)
    idx32 = idx.astype(np.int32)
    far = ndi.maximum_filter(idx32, size=2 * r1 + 1)[::2, ::2]
    near = ndi.maximum_filter(idx32, size=2 * r0 + 1)[::2, ::2]
    ring = (idx32[::2, ::2] == 0) & (far > 0) & ((near == 0) | (near != far))
    lab = _lab_u8(np.asarray(rgb)[::2, ::2][ring])
    rl = far[ring]
    rc = np.bincount(rl, minlength=m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([np.bincount(rl, lab[:, c], m) / rc for c in range(3)], 1)


COLOUR = slice(2, 5)   # ring_L, ring_a, ring_b


def _lab_u8(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (float32, (N, 3)) of uint8 RGB pixels (N, 3) by the tables of :mod:`wsi_nuc.stainnorm`'s fast
    path (within 0.05 of :func:`~wsi_nuc.stainnorm.rgb_to_lab`), several times faster on a tile.

    >>> from wsi_nuc.stainnorm import rgb_to_lab
    >>> px = np.random.default_rng(0).integers(0, 256, (1000, 3)).astype(np.uint8)
    >>> bool(np.abs(_lab_u8(px) - rgb_to_lab(px)).max() < 0.05)
    True
    """
    from .stainnorm import _F_TABLE, _LINEAR_U8, _M_XYZ_WHITE, _N

    rgb = np.asarray(rgb, np.uint8)
    r, g, b = (_LINEAR_U8[rgb[:, c]] for c in range(3))
    m = _M_XYZ_WHITE * np.float32(_N - 1)      # element-wise, not a (N, 3) @ (3, 3) product: 10x faster
    fx, fy, fz = (_F_TABLE[np.clip(m[i, 0] * r + m[i, 1] * g + m[i, 2] * b + 0.5, 0, _N - 1).astype(np.int32)]
                  for i in range(3))
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], 1).astype(np.float32)


def normalised(features: np.ndarray, source, target) -> np.ndarray:
    """The features with their colour columns mapped as Reinhard normalisation maps pixels (CIELAB mean
    ``source`` -> ``target``, :class:`wsi_nuc.stainnorm.LabStats`); unchanged without both.

    >>> from wsi_nuc.stainnorm import LabStats
    >>> f = np.zeros((1, len(FEATURES))); f[0, COLOUR] = [60, 20, 0]
    >>> s, t = LabStats((50, 10, -10), (10, 5, 5)), LabStats((60, 20, -20), (20, 10, 10))
    >>> normalised(f, s, t)[0, COLOUR].tolist()
    [80.0, 40.0, 0.0]
    """
    f = np.array(features, np.float64, copy=True)
    if source is None or target is None or f.size == 0:
        return f
    mu_s, sd_s = np.asarray(source.mean, float), np.maximum(np.asarray(source.std, float), 1e-3)
    mu_t, sd_t = np.asarray(target.mean, float), np.asarray(target.std, float)
    f[:, COLOUR] = (f[:, COLOUR] - mu_s) * (sd_t / sd_s) + mu_t
    return f
