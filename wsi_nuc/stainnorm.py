"""Reinhard stain normalisation: match an image's CIELAB mean and spread to the model's training set.

Reinhard et al. (IEEE CG&A 2001) transfer colour by matching per-channel mean and standard deviation in
a decorrelated colour space; here CIELAB (D65, as ``skimage.color``). The statistics are taken over the
image's non-background pixels (mean RGB below :data:`BACKGROUND_RGB`; all pixels when under 5 % are left)
so glass does not drag them. ``wsi-nuc run`` takes them once per slide from the tissue of its thumbnail,
``wsi-nuc eval`` per image, training per training image; the model's ``config.json`` stores the target
(the pooled statistics of its training images) under ``stain_norm``.

Plain numpy, with a float32 path (:func:`normalise`) used on the workers; ``skimage.color`` agrees with
it to within 1e-3 (a test checks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND_RGB = 220.0
MIN_TISSUE_FRACTION = 0.05
# H&E tissue is strongly coloured (CIELAB chroma of its mean 13-45 on MoNuSeg and CoNSeP, a*/b* spreads
# of 2-12): below these it is greyscale or not H&E, and Reinhard's spread ratio would amplify noise.
MIN_CHROMA = 5.0
MIN_AB_SPREAD = 1.0
_M_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], np.float32)
_M_RGB_FROM_XYZ = np.linalg.inv(_M_XYZ_FROM_RGB).astype(np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)  # D65, 2° observer
_DELTA = 6.0 / 29.0
_U8 = np.arange(256, dtype=np.float64) / 255.0
_LINEAR_U8 = np.where(_U8 > 0.04045, ((_U8 + 0.055) / 1.055) ** 2.4, _U8 / 12.92).astype(np.float32)
# for the fast path of normalise(): linear RGB -> X/Xn, Y/Yn, Z/Zn; f(t) on [0, 1]; linear -> sRGB uint8
_M_XYZ_WHITE = (_M_XYZ_FROM_RGB / _WHITE[:, None]).astype(np.float32)
_N = 1 << 16
_T = np.linspace(0.0, 1.0, _N)
_F_TABLE = np.where(_T > _DELTA ** 3, np.cbrt(_T), _T / (3 * _DELTA ** 2) + 4.0 / 29.0).astype(np.float32)
_SRGB_U8 = np.round(255.0 * np.where(_T > 0.0031308, 1.055 * _T ** (1 / 2.4) - 0.055, 12.92 * _T)).astype(np.uint8)
del _T


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and standard deviation of L*, a*, b*."""

    mean: tuple
    std: tuple

    def to_dict(self) -> dict:
        return {"method": "reinhard-lab", "mean": [round(float(v), 4) for v in self.mean],
                "std": [round(float(v), 4) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "LabStats | None":
        if not d:
            return None
        if d.get("method", "reinhard-lab") != "reinhard-lab":
            raise ValueError(f"unknown stain normalisation method {d.get('method')!r}")
        unknown = set(d) - {"method", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown stain normalisation keys {sorted(unknown)} (known: method, mean, std)")
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8, or float in 0..1) -> CIELAB float32, same last axis."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        lin = _LINEAR_U8[rgb]  # the sRGB transfer curve as a 256-entry table
    else:
        x = rgb.astype(np.float32)
        lin = np.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = lin @ _M_XYZ_FROM_RGB.T / _WHITE
    f = np.where(xyz > _DELTA ** 3, np.cbrt(xyz), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], -1).astype(np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB -> sRGB float32 in 0..1 (clipped)."""
    lab = np.asarray(lab, np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], -1)
    xyz = np.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0)) * _WHITE
    lin = np.clip(xyz @ _M_RGB_FROM_XYZ.T, 0.0, None)
    rgb = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def stain_pixels(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) pixels to take statistics over: inside ``mask`` if given, and not background."""
    px = np.asarray(rgb).reshape(-1, 3)
    if mask is not None:
        px = px[np.asarray(mask, bool).reshape(-1)]
    keep = px.astype(np.float32).mean(1) < BACKGROUND_RGB
    return px[keep] if len(keep) and keep.mean() >= MIN_TISSUE_FRACTION else px


def lab_stats(images, masks=None) -> LabStats:
    """Pooled L*a*b* statistics of the non-background pixels of one image (H, W, 3) or a list of them."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images, masks = [images], [masks]
    masks = masks if masks is not None else [None] * len(images)
    px = np.concatenate([stain_pixels(im, m) for im, m in zip(images, masks)])
    if not len(px):
        raise ValueError("no pixels to take stain statistics from")
    lab = rgb_to_lab(px.astype(np.uint8) if px.dtype == np.uint8 else px)
    return LabStats(tuple(lab.mean(0).tolist()), tuple(lab.std(0).tolist()))


def normalise(rgb: np.ndarray, source: LabStats, target: LabStats) -> np.ndarray:
    """``rgb`` (..., 3) uint8 recoloured so that ``source`` statistics become ``target``'s; uint8.

    Per pixel this is sRGB -> CIELAB -> (L*a*b* - source mean) * target std / source std + target mean
    -> sRGB, computed with tables: L*a*b* is affine in the cube-root terms f(X/Xn), f(Y/Yn), f(Z/Zn), so
    the Reinhard step is one 3x3 affine map there, and the transfer curves are 2^16-entry tables. It
    agrees with the direct formulas (:func:`normalise_exact`) to within 1 grey level.

    An image is done in strips of :data:`_STRIP_PX` pixels (whole rows of its last two axes), in place, so
    the float32 temporaries stay in the CPU cache; every pixel gets the same operations in the same order
    as on the whole image at once, so the result does not depend on the strip size.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        return normalise_exact(rgb, source, target)
    # C order for both: the strips below are reshaped views of them. An array of another layout (a
    # channels-first batch permuted to channels-last) reshapes to a copy, and its result went to the copy
    # while ``out`` stayed uninitialised memory.
    rgb = np.ascontiguousarray(rgb)
    a, c = _f_affine(source, target)
    out = np.empty(rgb.shape, np.uint8)
    if rgb.ndim < 3 or rgb.size == 0:
        _normalise_block(rgb, a.T, c, out)
        return out
    rows = rgb.reshape(-1, *rgb.shape[-2:])       # (rows, W, 3): matmul works row by row either way
    dst = out.reshape(rows.shape)
    step = max(1, _STRIP_PX // max(1, rows.shape[1]))
    for r in range(0, len(rows), step):
        _normalise_block(rows[r:r + step], a.T, c, dst[r:r + step])
    return out


_STRIP_PX = 1 << 13
_M_RGB_WHITE = (_M_RGB_FROM_XYZ * _WHITE).astype(np.float32)
_K_LOW = np.float32(3 * _DELTA ** 2)


def _normalise_block(rgb: np.ndarray, a_t: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:
    """:func:`normalise` of one block into ``out``: sRGB -> cube-root space (tables), the Reinhard affine
    map there, back to sRGB (tables). The arithmetic of the original whole-image formulas, op for op."""
    xyz = np.take(_LINEAR_U8, rgb) @ _M_XYZ_WHITE.T
    xyz *= _N - 1
    xyz += 0.5
    np.minimum(xyz, _N - 1, out=xyz)
    f = np.take(_F_TABLE, xyz.astype(np.int32)) @ a_t
    f += c
    low = f <= _DELTA                              # f(t) is linear below delta (near black): rare in tissue
    xyz = f * f
    xyz *= f
    if low.any():
        xyz[low] = _K_LOW * (f[low] - np.float32(4.0 / 29.0))
    lin = xyz @ _M_RGB_WHITE.T
    np.clip(lin, 0.0, 1.0, out=lin)
    lin *= _N - 1
    lin += 0.5
    np.take(_SRGB_U8, lin.astype(np.int32), out=out)


def normalise_exact(rgb: np.ndarray, source: LabStats, target: LabStats) -> np.ndarray:
    """:func:`normalise` by the direct formulas (uint8 or float 0..1 input; uint8 out)."""
    lab = rgb_to_lab(rgb)
    scale = np.asarray(target.std, np.float32) / np.maximum(np.asarray(source.std, np.float32), 1e-3)
    lab = (lab - np.asarray(source.mean, np.float32)) * scale + np.asarray(target.mean, np.float32)
    return np.round(lab_to_rgb(lab) * 255.0).astype(np.uint8)


def _f_affine(source: LabStats, target: LabStats) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with f' = A f + c the Reinhard step in cube-root space (L*a*b* = P f + q)."""
    p = np.array([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
    q = np.array([-16.0, 0.0, 0.0])
    sc = np.diag(np.asarray(target.std, float) / np.maximum(np.asarray(source.std, float), 1e-3))
    p_inv = np.linalg.inv(p)
    a = p_inv @ sc @ p
    c = p_inv @ (sc @ (q - np.asarray(source.mean, float)) + np.asarray(target.mean, float) - q)
    return a.astype(np.float32), c.astype(np.float32)


def normalise_to(rgb: np.ndarray, target: LabStats | dict | None) -> np.ndarray:
    """``rgb`` normalised from its own statistics to ``target`` (unchanged when ``target`` is None)."""
    if isinstance(target, dict):
        target = LabStats.from_dict(target)
    return rgb if target is None else normalise(rgb, lab_stats(rgb), target)


def check_colour(stats: LabStats | None, path) -> None:
    """InputError (exit 2) for a slide whose tissue statistics are not those of colour H&E: greyscale
    (no chroma) or nearly uniform colour (a stain normalisation would divide by a spread of ~0)."""
    from .errors import InputError

    if stats is None:
        return
    chroma = float(np.hypot(stats.mean[1], stats.mean[2]))
    sa, sb = float(stats.std[1]), float(stats.std[2])
    if chroma < MIN_CHROMA and max(sa, sb) < MIN_CHROMA:
        raise InputError(f"{path}: looks greyscale (no colour in its tissue: CIELAB chroma {chroma:.2f}); the "
                         f"H&E models need a colour H&E slide")
    if min(sa, sb) < MIN_AB_SPREAD:
        raise InputError(f"{path}: does not look like H&E (almost no colour variation in its tissue: CIELAB "
                         f"a*/b* spread {sa:.2f}/{sb:.2f}); the H&E models need a colour H&E slide")


def slide_stats(reader, tissue, f: float, height: int, width: int, n: int = 24,
                size: int = 256) -> LabStats | None:
    """A slide's statistics at the working scale, pooled over up to ``n`` patches of ``size``² working
    px, spread evenly over the boxes of a fixed ``size`` lattice that are mostly tissue (else over those
    with any tissue, for slivers; ``tissue``: a :class:`~wsi_nuc.tissue.TissueMask`; ``f`` level-0 px per working px; ``height`` x ``width`` the
    slide in working px). Deterministic, and independent of the tile settings. None without tissue."""
    from .slide import read_region

    lattice = [(x, y) for y in range(0, max(height - size, 0) + 1, size)
               for x in range(0, max(width - size, 0) + 1, size)]
    frac = [tissue.fraction_in_box(x * f, y * f, (x + size) * f, (y + size) * f) for x, y in lattice]
    boxes = [b for b, t in zip(lattice, frac) if t > 0.5] or [b for b, t in zip(lattice, frac) if t > 0]
    if not boxes:
        return None
    picks = [boxes[i] for i in np.unique(np.linspace(0, len(boxes) - 1, min(n, len(boxes))).round().astype(int))]
    w, h = min(size, width), min(size, height)
    return lab_stats([read_region(reader, x * f, y * f, w * f, h * f, w, h) for x, y in picks])
