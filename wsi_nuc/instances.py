"""Head maps -> instance labels (marker-controlled watershed) -> polygons in level-0 coordinates."""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class InstanceParams:
    """Post-processing settings; the defaults live in each model's ``config.json``."""

    fg_threshold: float = 0.5       # foreground probability
    marker: str = "dist"            # "dist" | "centre" | "boundary"
    marker_threshold: float = 0.5   # on the marker score
    boundary_weight: float = 1.0    # marker score = dist - boundary_weight * boundary - hv_weight * hv edge
    hv_weight: float = 0.0          # HoVer-Net cue: Sobel edges of the centre-offset maps ("dist")
    min_marker_px: int = 3
    min_area_px: int = 8            # at the working resolution
    min_confidence: float = 0.0     # drop instances whose mean (calibrated) fg probability is lower
    energy: str = "dist"            # watershed relief: "dist" (-distance) or "boundary"

    @classmethod
    def from_dict(cls, d: dict | None) -> "InstanceParams":
        """From a config dict (``postprocess`` in a model's config.json); an unknown key is an InputError."""
        from .errors import known_fields

        return cls(**known_fields(cls, d, "postprocess"))

    def to_dict(self) -> dict:
        return asdict(self)


def markers_from_maps(maps: np.ndarray, mask: np.ndarray, p: InstanceParams) -> np.ndarray:
    """Seed labels inside ``mask`` from the head maps (C, H, W)."""
    fg, bd, dist, ctr = maps[0], maps[1], maps[2], maps[5]
    if p.marker == "centre":
        seeds = (ctr > p.marker_threshold) & mask
    elif p.marker == "boundary":
        seeds = ndi.binary_erosion((fg > p.fg_threshold) & (bd < p.marker_threshold)) & mask
    else:
        score = dist - p.boundary_weight * bd
        if p.hv_weight:
            score = score - p.hv_weight * hv_edges(maps[3], maps[4])
        seeds = (score > p.marker_threshold) & mask
    markers, _ = ndi.label(seeds)
    return remove_small(markers, p.min_marker_px)


def remove_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Zero the labels with fewer than ``min_px`` pixels (in place; returns ``labels``)."""
    if min_px > 1:
        flat, nz = _labelled(labels)
        if len(nz):
            lab = flat[nz]
            small = np.bincount(lab) < min_px
            small[0] = False
            if small.any():
                flat[nz[small[lab]]] = 0
    return labels


def _labelled(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``labels`` flattened, a view that writes through, the flat indices of its non-zero pixels).

    Nuclei cover a fraction of a tile: per-label sums over these pixels only (in array order, as over the
    whole array) give the same numbers for less work."""
    if not labels.flags.c_contiguous:
        raise ValueError("labels must be C-contiguous")
    flat = labels.reshape(-1)
    return flat, np.flatnonzero(flat)


def hv_edges(hv_x: np.ndarray, hv_y: np.ndarray) -> np.ndarray:
    """HoVer-Net separation cue: the offsets to the centre jump between touching nuclei, so the Sobel
    derivative of hv_x along x (and hv_y along y), scaled to 0..1, is high on their shared border."""
    gx = ndi.sobel(hv_x, axis=1)
    gy = ndi.sobel(hv_y, axis=0)
    e = np.maximum(_unit(-gx), _unit(-gy))  # offsets fall (negative slope) across a border
    return e


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def labels_from_maps(maps: np.ndarray, params: InstanceParams | None = None) -> np.ndarray:
    """Instance labels (H, W) int32 from head maps (6, H, W) by marker-controlled watershed.

    Foreground components that received no marker become one instance each, so nothing the model
    calls nucleus is dropped for want of a seed.

    Parameters
    ----------
    maps : (6, H, W) float, the channels of :data:`wsi_nuc.predict.MAP_CHANNELS` (fg, boundary, dist,
        hv_x, hv_y, centre); a type head's channels after them are ignored.
    params : the post-processing settings (None: the defaults).

    Returns
    -------
    labels : (H, W) int32, 0 background; ids are not consecutive (small instances are removed).

    Examples
    --------
    Two touching nuclei, one foreground blob with two distance peaks:

    >>> yy, xx = np.mgrid[:20, :30]
    >>> d = np.minimum(np.hypot(yy - 10, xx - 9), np.hypot(yy - 10, xx - 19))
    >>> fg, dist, zero = (d < 6).astype(np.float32), np.clip(1 - d / 6, 0, 1).astype(np.float32), np.zeros((20, 30))
    >>> labels = labels_from_maps(np.stack([fg, zero, dist, zero, zero, zero]))
    >>> len(np.unique(labels[labels > 0])), bool((labels[10, 9] != labels[10, 19]))
    (2, True)
    """
    p = params or InstanceParams()
    fg, bd, dist = maps[0], maps[1], maps[2]
    mask = fg > p.fg_threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    markers = markers_from_maps(maps, mask, p)
    relief = bd if p.energy == "boundary" else -dist
    labels = _watershed(relief, markers, mask) if markers.max() else np.zeros(mask.shape, np.int32)
    free = mask & (labels == 0)
    if free.any():
        orphan, n_orphan = ndi.label(free)
        labels = np.where(orphan > 0, orphan + labels.max(), labels)
    labels = remove_small(labels.astype(np.int32, copy=False), p.min_area_px)
    if p.min_confidence > 0:
        labels = remove_unsure(labels, fg, p.min_confidence)
    return labels


def _watershed(relief: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.watershed(relief, markers, mask=mask)`` (4-connected, no compactness, no
    watershed line) for int32 ``markers`` that are 0 outside ``mask``: the same flooding (skimage's own
    kernel), its inputs laid out (padded float64 relief, int8 mask, int32 output) in one pass each instead of
    skimage's checks, casts, pads and copies. Falls back to skimage's function where its internals differ."""
    try:
        from skimage.morphology._util import _offsets_to_raveled_neighbors
        from skimage.segmentation import _watershed_cy
    except ImportError:
        from skimage.segmentation import watershed

        return watershed(relief, markers, mask=mask)
    h, w = relief.shape
    image = np.zeros((h + 2, w + 2), np.float64)
    image[1:-1, 1:-1] = relief
    inside = np.zeros((h + 2, w + 2), np.int8)
    inside[1:-1, 1:-1] = mask
    out = np.zeros((h + 2, w + 2), np.int32)
    out[1:-1, 1:-1] = markers
    neighbours = _offsets_to_raveled_neighbors(image.shape, ndi.generate_binary_structure(2, 1), center=(1, 1))
    strides = np.array(image.strides, dtype=np.intp) // image.itemsize
    _watershed_cy.watershed_raveled(image.ravel(), np.flatnonzero(out), neighbours, inside.ravel(), strides, 0,
                                    out.ravel(), False)
    return out[1:-1, 1:-1].copy()


def remove_unsure(labels: np.ndarray, prob: np.ndarray, min_mean: float) -> np.ndarray:
    """Zero the labels whose mean probability is below ``min_mean`` (in place; returns ``labels``).

    Weak, low-confidence blobs are mostly false positives (stroma, debris): on MoNuSeg val, dropping
    instances below 0.6 raised PQ by 0.026 and F1 by 0.033 without lowering a-AJI.
    """
    flat, nz = _labelled(labels)
    if not len(nz):
        return labels
    lab = flat[nz]
    n = int(lab.max())
    mean = np.bincount(lab, np.asarray(prob).reshape(-1)[nz], n + 1) / np.maximum(np.bincount(lab, minlength=n + 1), 1)
    unsure = mean < min_mean
    unsure[0] = False
    if unsure.any():
        flat[nz[unsure[lab]]] = 0
    return labels


def relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def centroids(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, 2) pixel-centre centroids (y, x) of ``ids`` (positive labels) in array coordinates; NaN for an
    id absent from ``labels``. The same numbers as ``ndi.center_of_mass`` (sums of whole pixel indices are
    exact in float64), from the labelled pixels only."""
    ids = np.asarray(ids)
    if len(ids) == 0:
        return np.zeros((0, 2))
    labels = np.ascontiguousarray(labels)
    flat, nz = _labelled(labels)
    lab = flat[nz]
    n = max(int(ids.max()), int(lab.max(initial=0))) + 1
    w = labels.shape[1]
    cnt = np.bincount(lab, minlength=n).astype(np.float64)[ids]
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.bincount(lab, (nz // w).astype(np.float64), n)[ids] / cnt
        x = np.bincount(lab, (nz % w).astype(np.float64), n)[ids] / cnt
    return np.stack([y, x], axis=1)


def mean_per_label(values: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if len(ids) == 0:
        return np.zeros(0)
    return np.asarray(ndi.mean(values, labels, ids), float)


def trace_polygon(mask: np.ndarray, padded: bool = False) -> np.ndarray | None:
    """Outline (K, 2) in (y, x) pixel-edge coordinates of the largest component of a binary mask.

    The marching-squares contour runs through the midpoints between inside and outside pixel centres,
    so sampling the polygon at pixel centres gives back the mask. ``padded``: the mask already has a
    background border of one pixel (coordinates are then relative to the first inner pixel).
    """
    from skimage.measure import find_contours

    if not padded:
        mask = np.pad(mask, 1)
    contours = find_contours(mask.astype(np.float32), 0.5)
    if not contours:
        return None
    c = max(contours, key=len) - 1.0  # undo the padding
    if len(c) < 4:
        return None
    return c[:-1] if (c[0] == c[-1]).all() else c


def polygons_level0(labels: np.ndarray, ids, f: float, origin_xy=(0.0, 0.0)) -> list:
    """One (K, 2) float array of (x, y) level-0 coordinates per id (None where tracing failed).

    A working pixel (r, c) covers level-0 [c f, (c + 1) f) in x; its centre is at (c + 0.5) f.
    """
    objs = ndi.find_objects(labels)
    out = []
    ox, oy = origin_xy
    h, w = labels.shape
    for i in ids:
        sl = objs[i - 1] if i - 1 < len(objs) else None
        if sl is None:
            out.append(None)
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if y0 > 0 and x0 > 0 and y1 < h and x1 < w:  # crop with a one-pixel border from the labels
            poly = trace_polygon(labels[y0 - 1:y1 + 1, x0 - 1:x1 + 1] == i, padded=True)
        else:
            poly = trace_polygon(labels[sl] == i)
        if poly is None:
            out.append(None)
            continue
        y = (poly[:, 0] + y0 + 0.5) * f + oy
        x = (poly[:, 1] + x0 + 0.5) * f + ox
        out.append(np.stack([x, y], axis=1))
    return out
