"""A region of interest that limits a run: a QuPath annotation export or a binary mask image.

``--roi FILE`` takes either

- GeoJSON (``.geojson`` / ``.json``, as QuPath's File → Export objects writes it): a FeatureCollection,
  a bare array of Features, a Feature or a bare geometry; its annotations make the region, ``Ignore*``-classed
  annotations are subtracted, detections, cells and tiles are skipped, ``roi_class`` picks annotations by
  class (:mod:`wsi_nuc.roi_qupath`). Polygons and MultiPolygons count (holes are respected, overlapping
  shapes are merged), other geometry types are ignored. Coordinates are level-0 pixels.
- a mask image (PNG, TIFF, JPEG, ...): non-zero pixels are the region; it may be at any downsample of
  level 0 (a 1:16 mask of a 40000 × 30000 slide is 2500 × 1875), found from the sizes, which must have the
  slide's aspect ratio.

Only tiles whose core meets the region are processed; a nucleus is kept when its centroid lies inside
(on the boundary counts as inside). Anything wrong with the file is an ``InputError`` (exit 2, one line
naming the file).

>>> from types import SimpleNamespace as S
>>> import json, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "roi.geojson")
>>> _ = open(p, "w").write(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [100, 0], [100, 50], [0, 50], [0, 0]]]}))
>>> r = load_roi(p, S(width=1000, height=800))
>>> from wsi_nuc.tiling import Box
>>> r.area_px, r.contains([10, 150], [10, 10]).tolist(), r.meets(Box(y0=40, x0=90, y1=200, x1=200))
(5000.0, [True, False], True)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

_IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class Roi:
    """The region: a shapely geometry in level-0 pixels (GeoJSON) or a mask (image)."""

    path: str
    geometry: object = None           # shapely (Multi)Polygon, level-0 px
    mask: np.ndarray | None = None    # bool (h, w); pixel (r, c) covers level-0 [c sx, (c+1) sx) x ...
    scale: tuple[float, float] = (1.0, 1.0)   # level-0 px per mask px (x, y)
    parts: dict | None = None         # GeoJSON: polygons used, Ignore* polygons subtracted, objects skipped
    roi_class: str | None = None      # GeoJSON: the annotation class asked for (--roi-class)

    @property
    def area_px(self) -> float:
        """Area in level-0 px²."""
        if self.geometry is not None:
            return float(self.geometry.area)
        return float(np.count_nonzero(self.mask)) * self.scale[0] * self.scale[1]

    def area_mm2(self, mpp: float) -> float:
        return self.area_px * (float(mpp) / 1000.0) ** 2

    def contains(self, x, y) -> np.ndarray:
        """Whether level-0 points (x, y) lie in the region (boundary included)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if self.geometry is not None:
            import shapely

            return shapely.intersects_xy(self.geometry, x, y)
        c = np.floor(x / self.scale[0]).astype(np.int64)
        r = np.floor(y / self.scale[1]).astype(np.int64)
        h, w = self.mask.shape
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w) & np.isfinite(x) & np.isfinite(y)
        out = np.zeros(x.shape, bool)
        out[ok] = self.mask[r[ok], c[ok]]
        return out

    def meets(self, box) -> bool:
        """Whether the region meets the level-0 box (a :class:`wsi_nuc.tiling.Box`)."""
        x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
        if self.geometry is not None:
            import shapely

            return bool(shapely.intersects(self.geometry, shapely.box(x0, y0, x1, y1)))
        sx, sy = self.scale
        c0, c1 = int(np.floor(x0 / sx)), int(np.ceil(x1 / sx))
        r0, r1 = int(np.floor(y0 / sy)), int(np.ceil(y1 / sy))
        h, w = self.mask.shape
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        return c1 > c0 and r1 > r0 and bool(self.mask[r0:r1, c0:c1].any())

    def fraction_of(self, mask: np.ndarray, scale: float) -> np.ndarray:
        """Which pixels of another mask (pixel = ``scale`` level-0 px, e.g. the tissue mask) have their
        centre in the region."""
        h, w = mask.shape
        yy, xx = np.mgrid[0:h, 0:w]
        return self.contains((xx.ravel() + 0.5) * scale, (yy.ravel() + 0.5) * scale).reshape(h, w)


def _load_geojson(path: Path, info, roi_class: str | None = None) -> Roi:
    """The region of a QuPath export (see :mod:`wsi_nuc.roi_qupath`: annotations in, ``Ignore*`` out)."""
    import shapely
    from shapely.geometry import shape

    from .roi_qupath import describe, select_region_parts

    from .json_in import read_json

    doc = read_json(path, "ROI GeoJSON")        # size, depth and finite numbers checked (one owner)
    parts = select_region_parts(doc, roi_class)
    if not parts.include and (not parts.exclude or roi_class is not None):
        raise InputError(_no_polygons(path, parts, roi_class))
    try:
        region = _union(parts.include, shape, shapely) if parts.include else shapely.box(0, 0, info.width, info.height)
        if parts.exclude:
            region = region.difference(_union(parts.exclude, shape, shapely))
    except Exception as e:
        raise InputError(f"{path}: ROI GeoJSON has a malformed polygon ({e})") from None
    if region.is_empty or region.area <= 0:
        raise InputError(f"{path}: ROI polygons have no area" + (" once the Ignore* annotations are subtracted"
                                                                 if parts.exclude else ""))
    x0, y0, x1, y1 = region.bounds
    region = region.intersection(shapely.box(0, 0, info.width, info.height))   # only the slide's part counts
    if region.is_empty or region.area <= 0:
        raise InputError(f"{path}: ROI lies outside the slide (bounds {x0:.0f},{y0:.0f}-{x1:.0f},{y1:.0f} "
                         f"level-0 px; slide {info.width}x{info.height})")
    return Roi(str(path), geometry=region, parts=describe(parts), roi_class=roi_class)


def _union(geoms: list, shape, shapely):
    parts = [shape(g) for g in geoms]
    parts = [shapely.make_valid(p) if not p.is_valid else p for p in parts]
    return shapely.union_all(parts)


def _no_polygons(path: Path, parts, roi_class: str | None) -> str:
    """Why a QuPath export gave no region, in one line."""
    skipped = ", ".join(f"{n} {k}" for k, n in sorted(parts.skipped.items()))
    if roi_class is not None:
        have = ", ".join(parts.classes) or "none"
        return f"{path}: ROI GeoJSON has no annotation of class {roi_class!r} (classes there: {have})"
    if skipped:
        return (f"{path}: ROI GeoJSON has no annotation polygon, only other objects ({skipped}); export the "
                f"annotations")
    return f"{path}: ROI GeoJSON has no Polygon or MultiPolygon"


def _load_mask(path: Path, info) -> Roi:
    from .image_in import read_image

    a = read_image(path, "ROI mask", mode="L", keep=("1", "L", "I", "I;16"))   # size checked before decoding
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1) if a.shape[-1] in (3, 4) else a[..., 0] if a.shape[-1] == 2 else a[0]
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{path}: ROI mask must be a 2-D image, got shape {a.shape}")
    mask = a > 0
    h, w = mask.shape
    need = min(MIN_MASK_PX, info.width, info.height)
    if min(h, w) < need:
        raise InputError(f"{path}: ROI mask is {w}x{h} px: too small to place a region on the slide "
                         f"({info.width}x{info.height}); it needs at least {need} px a side")
    if not _same_downsample(info.width, info.height, w, h):
        raise InputError(f"{path}: ROI mask is {w}x{h}, not the slide's aspect ratio "
                         f"({info.width}x{info.height}): it must be the whole slide at some downsample")
    if not mask.any():
        raise InputError(f"{path}: ROI mask is empty (no non-zero pixel)")
    return Roi(str(path), mask=mask, scale=(info.width / w, info.height / h))   # per axis: rounding differs


MIN_MASK_PX = 8     # a mask side below this cannot say where a region is


def _same_downsample(W: int, H: int, w: int, h: int) -> bool:
    """Whether a w x h mask is a W x H slide at one downsample d with each side rounded either way
    (|W/d - w| < 1 and |H/d - h| < 1 for some d), or its two scales are within 2 %."""
    sx, sy = W / w, H / h
    if abs(sx - sy) <= 0.02 * max(sx, sy):
        return True
    lo = max(W / (w + 1), H / (h + 1))
    hi = min(W / (w - 1) if w > 1 else float("inf"), H / (h - 1) if h > 1 else float("inf"))
    return lo < hi


def load_roi(path: str | Path, info, roi_class: str | None = None) -> Roi:
    """Read a region of interest for a slide (``info``: width and height of level 0); ``roi_class``: only
    the GeoJSON annotations of that class (``--roi-class``; a mask image has no classes).

    Raises ``InputError`` (one line naming the file) for a missing or unreadable file, JSON without
    polygons, a region outside the slide, an empty mask or a mask of another aspect ratio.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ROI file not found" if not path.exists() else f"{path}: ROI is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: ROI file is empty")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        if roi_class is not None:
            raise InputError(f"{path}: --roi-class {roi_class!r} needs a GeoJSON region; a mask image has no classes")
        return _load_mask(path, info)
    return _load_geojson(path, info, roi_class)
