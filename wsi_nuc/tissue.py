"""Tissue mask at low resolution: where on the slide is there tissue rather than glass.

The slide is read at about ``target_mpp`` (8 um/px by default; finer for small slides so the
mask has at least ~512 px on its long side).  A pixel is tissue when it is coloured or dark
compared with the glass:

* HSV saturation above an Otsu threshold computed on the slide, bounded to 0.05-0.20, or
* optical density (summed over R, G, B, relative to the estimated glass colour) above 0.15;

and it is not near-black (scanner borders, dark debris: every channel < 40) nor green
(pen marks: green channel clearly above red and blue; H&E is never green).  The mask is then
closed (about 16 um), holes smaller than 0.1 mm² are filled, and objects smaller than
``min_area_um2`` are removed (capped at 1% of the slide so tiny images keep their tissue).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .slide import read_scaled_slide

_MIN_MASK_SIDE = 512  # aim for at least this many mask pixels on the long side
_SAT_BOUNDS = (0.05, 0.20)
_OD_THRESHOLD = 0.15
_DARK = 40
_CLOSE_UM = 16.0
_HOLE_UM2 = 100_000.0


@dataclass
class TissueMask:
    mask: np.ndarray  # bool (h, w); pixel (r, c) covers level-0 [c*scale, (c+1)*scale) x [r*scale, ...)
    scale: float  # level-0 pixels per mask pixel

    @property
    def fraction(self) -> float:
        """Fraction of mask pixels that are tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_mm2(self, mpp: float) -> float:
        px_mm = self.scale * float(mpp) / 1000.0
        return float(np.count_nonzero(self.mask)) * px_mm * px_mm

    def fraction_in(self, box) -> float:
        """Tissue fraction of the level-0 box (a :class:`wsi_nuc.tiling.Box`), area-weighted over mask pixels.

        Parts of the box outside the mask count as non-tissue; an empty box gives 0.
        """
        s = self.scale
        bx0, by0, bx1, by1 = box.x0 / s, box.y0 / s, box.x1 / s, box.y1 / s
        if not (bx1 > bx0 and by1 > by0):
            return 0.0
        h, w = self.mask.shape
        c0, c1 = max(0, math.floor(bx0)), min(w, math.ceil(bx1))
        r0, r1 = max(0, math.floor(by0)), min(h, math.ceil(by1))
        if c1 <= c0 or r1 <= r0:
            return 0.0
        cols = np.arange(c0, c1, dtype=np.float64)
        rows = np.arange(r0, r1, dtype=np.float64)
        wx = np.clip(np.minimum(cols + 1, bx1) - np.maximum(cols, bx0), 0, None)
        wy = np.clip(np.minimum(rows + 1, by1) - np.maximum(rows, by0), 0, None)
        sub = self.mask[r0:r1, c0:c1].astype(np.float64)
        tissue = float(wy @ sub @ wx)
        return min(1.0, max(0.0, tissue / ((bx1 - bx0) * (by1 - by0))))

    def fraction_in_box(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """:meth:`fraction_in` of the level-0 box [x0, x1) x [y0, y1) (x first: the stain statistics still call
        it so; everything else passes a ``Box``)."""
        from .tiling import Box

        return self.fraction_in(Box(y0, x0, y1, x1))


def full_mask(info) -> TissueMask:
    """Everything is tissue (``--no-tissue-detection``)."""
    scale = max(1.0, max(info.width, info.height) / 1024.0)
    w = max(1, math.ceil(info.width / scale - 1e-9))
    h = max(1, math.ceil(info.height / scale - 1e-9))
    return TissueMask(np.ones((h, w), bool), scale)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return 1.0
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel tissue decision on an RGB uint8 image (no morphology)."""
    f = rgb.astype(np.float32)
    mx = f.max(axis=2)
    mn = f.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0.0)
    dark = mx < _DARK
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    green = (g > r + 20) & (g > b + 10)
    usable = ~dark & ~green
    t = _otsu(sat[usable]) if usable.any() else 1.0
    t = min(max(t, _SAT_BOUNDS[0]), _SAT_BOUNDS[1])
    # glass colour: bright percentile of the slide, never darker than 200 (fully covered slides)
    if usable.any():
        bg = np.percentile(f[usable], 99, axis=0)
    else:
        bg = np.full(3, 255.0)
    bg = np.clip(bg, 200, 255)
    od = np.log((bg + 1) / (f + 1)).clip(min=0).sum(axis=2)  # natural log per channel, summed
    od = od / math.log(10)
    return (((sat > t) | (od > _OD_THRESHOLD)) & usable)


def detect_tissue(reader, target_mpp: float = 8.0, min_area_um2: float = 20000.0) -> TissueMask:
    """Tissue mask of the slide at about ``target_mpp`` um per mask pixel."""
    info = reader.info
    mpp = info.mpp
    if mpp is None:
        raise InputError(f"{info.path}: no microns-per-pixel in the slide metadata; pass --mpp X")
    scale = max(1.0, float(target_mpp) / mpp)
    scale = min(scale, max(1.0, max(info.width, info.height) / _MIN_MASK_SIDE))
    rgb = read_scaled_slide(reader, scale)
    mask = tissue_pixels(rgb)
    um_per_px = scale * mpp
    # closing with a disk of about _CLOSE_UM diameter
    rad = int(round(_CLOSE_UM / 2 / um_per_px))
    if rad >= 1 and mask.any():
        yy, xx = np.mgrid[-rad : rad + 1, -rad : rad + 1]
        disk = xx * xx + yy * yy <= rad * rad
        padded = np.pad(mask, rad + 1, mode="constant")
        padded = ndi.binary_closing(padded, structure=disk)
        mask = padded[rad + 1 : -(rad + 1), rad + 1 : -(rad + 1)]
    px_area = um_per_px * um_per_px
    # fill holes smaller than _HOLE_UM2
    if mask.any():
        holes, n = ndi.label(~mask)
        if n:
            sizes = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            small = sizes * px_area < _HOLE_UM2
            small[0] = False
            small[border] = False
            mask = mask | small[holes]
    # remove objects smaller than min_area_um2 (capped at 1% of the slide)
    if mask.any() and min_area_um2 > 0:
        min_px = min(min_area_um2 / px_area, 0.01 * mask.size)
        lab, n = ndi.label(mask)
        if n:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_px
            keep[0] = False
            mask = keep[lab]
    return TissueMask(mask.astype(bool), scale)


__all__ = ["TissueMask", "detect_tissue", "full_mask", "tissue_pixels"]
