"""One-glance quality-control image (Pillow only).

Layout::

    +-------------------------+-------------------------+
    | thumbnail               | thumbnail + nucleus     |
    | + tissue outline (green)| density heatmap + legend|
    +------------+------------+------------+------------+
    | zoom 1     | zoom 2     | zoom 3     | zoom 4     |   (crops with nucleus outlines, if given)
    +------------+------------+------------+------------+

The density is nuclei per mm² (when ``level0_mpp`` is known, else per 10^6 level-0 px²): centroids
binned on the thumbnail grid, Gaussian-smoothed (sigma 50 µm, at least 1 % of the thumbnail), coloured
with a small built-in colormap from 0 to the 99th percentile, drawn semi-transparently over the thumbnail.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from .atomic import atomic_file

PANEL = 512          # longest side of each of the two top panels, in pixels
ZOOM = 256           # side of each zoom tile
MARGIN = 8
SMOOTH_UM = 50.0     # density smoothing (Gaussian sigma) when the pixel size is known
BG = (255, 255, 255)
TEXT = (20, 20, 20)
OUTLINE_TISSUE = (0, 170, 0)
OUTLINE_NUCLEUS = (255, 230, 0)

# "inferno"-like anchors, 0..1 -> RGB
_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colormap(v: np.ndarray) -> np.ndarray:
    """Map values in 0..1 to uint8 RGB (piecewise-linear through the anchors)."""
    v = np.clip(np.nan_to_num(np.asarray(v, np.float64)), 0.0, 1.0) * (len(_CMAP) - 1)
    i = np.minimum(np.floor(v).astype(int), len(_CMAP) - 2)
    t = (v - i)[..., None]
    return np.round(_CMAP[i] * (1 - t) + _CMAP[i + 1] * t).astype(np.uint8)


def _font():
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _as_rgb_uint8(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return a


def _display_size(h: int, w: int, longest: int) -> tuple[int, int, float]:
    s = longest / max(h, w, 1)
    return max(1, round(w * s)), max(1, round(h * s)), s


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    edge = mask & ~ndi.binary_erosion(mask, border_value=0)
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1)
    return edge


def _draw_polygon_outline(draw: ImageDraw.ImageDraw, xy: np.ndarray, scale: float, color, width: int):
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy) < 2 or not np.isfinite(xy).all():
        return
    pts = [(float(x) * scale, float(y) * scale) for x, y in xy]
    if pts[0] != pts[-1]:
        pts.append(pts[0])
    draw.line(pts, fill=color, width=width)


def density_map(centroids_xy: np.ndarray, thumb_shape: tuple[int, int], thumb_scale: float,
                level0_mpp: float | None = None, sigma: float | None = None) -> tuple[np.ndarray, str]:
    """Smoothed nucleus density on the thumbnail grid and its unit string."""
    th, tw = thumb_shape
    counts = np.zeros((th, tw), np.float64)
    c = np.asarray(centroids_xy, np.float64).reshape(-1, 2)
    c = c[np.isfinite(c).all(axis=1)]
    if len(c):
        col = np.floor(c[:, 0] / thumb_scale).astype(np.int64)
        row = np.floor(c[:, 1] / thumb_scale).astype(np.int64)
        ok = (row >= 0) & (row < th) & (col >= 0) & (col < tw)
        np.add.at(counts, (row[ok], col[ok]), 1.0)
    if sigma is None:
        # ~50 µm when the scale is known, never finer than 1 % of the thumbnail nor 1 px
        sigma = max(1.0, max(th, tw) / 100.0)
        if level0_mpp:
            sigma = max(sigma, SMOOTH_UM / (thumb_scale * float(level0_mpp)))
    dens = ndi.gaussian_filter(counts, sigma, mode="constant")
    if level0_mpp:
        px_mm = thumb_scale * float(level0_mpp) / 1000.0  # thumbnail pixel side in mm
        return dens / (px_mm * px_mm), "nuclei/mm^2"
    return dens / (thumb_scale * thumb_scale) * 1e6, "nuclei/Mpx^2 (level-0)"


def write_qc_png(path: Path | str, thumb_rgb: np.ndarray, thumb_scale: float, tissue_mask_bool: np.ndarray,
                 centroids_level0_xy: np.ndarray,
                 zooms: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]] = (),
                 level0_mpp: float | None = None, title: str | None = None) -> None:
    """Write the QC PNG.

    thumb_rgb : (h, w, 3) thumbnail of the slide.
    thumb_scale : downsample of the thumbnail, level-0 pixels per thumbnail pixel (level-0 x =
        thumbnail x * thumb_scale).
    tissue_mask_bool : tissue mask of any size covering the same slide extent (resized to the thumbnail).
    centroids_level0_xy : (N, 2) nucleus centroids in level-0 pixels (N may be 0).
    zooms : up to 4 ``(rgb_crop, [polygon (K, 2) xy in crop pixel coordinates, ...])``.
    level0_mpp : µm per level-0 pixel, for a density in nuclei/mm² (optional).
    title : a line of text at the top (e.g. the slide name).
    """
    thumb = _as_rgb_uint8(thumb_rgb)
    th, tw = thumb.shape[:2]
    thumb_scale = float(thumb_scale) if thumb_scale and thumb_scale > 0 else 1.0
    font = _font()
    n_nuclei = int(np.asarray(centroids_level0_xy).reshape(-1, 2).shape[0])

    dw, dh, ds = _display_size(th, tw, PANEL)
    resample = Image.NEAREST if ds >= 2 else Image.BILINEAR
    base = Image.fromarray(thumb).resize((dw, dh), resample)

    # panel 1: tissue outline
    mask = np.asarray(tissue_mask_bool).astype(bool)
    if mask.ndim != 2 or mask.size == 0:
        mask = np.zeros((th, tw), bool)
    mask_disp = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((dw, dh), Image.NEAREST)) > 127
    left = np.asarray(base).copy()
    left[_outline(mask_disp, 2)] = OUTLINE_TISSUE
    left_img = Image.fromarray(left)

    # panel 2: density heatmap
    dens, unit = density_map(centroids_level0_xy, (th, tw), thumb_scale, level0_mpp)
    vmax = float(np.percentile(dens[dens > 0], 99)) if (dens > 0).any() else 0.0
    norm = dens / vmax if vmax > 0 else np.zeros_like(dens)
    heat = Image.fromarray(colormap(norm)).resize((dw, dh), resample)
    alpha_small = np.where(dens > 0, np.clip(0.25 + 0.5 * norm, 0, 0.75), 0.0)
    alpha = np.asarray(Image.fromarray((alpha_small * 255).astype(np.uint8)).resize((dw, dh), resample),
                       np.float64)[..., None] / 255.0
    right = np.round(np.asarray(base, np.float64) * (1 - alpha) + np.asarray(heat, np.float64) * alpha)
    right_img = Image.fromarray(right.astype(np.uint8))

    # canvas
    title_h = 22
    legend_h = 44
    zooms = list(zooms)[:4]
    zoom_row_h = (ZOOM + MARGIN) if zooms else 0
    width = max(2 * dw + 3 * MARGIN, (4 * (ZOOM + MARGIN) + MARGIN) if zooms else 0, 300)
    height = title_h + dh + legend_h + zoom_row_h + 2 * MARGIN
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    head = title or "wsi-nuc QC"
    draw.text((MARGIN, 4), f"{head}  |  {n_nuclei} nuclei  |  tissue outline (green), density (right)",
              fill=TEXT, font=font)
    y_top = title_h
    canvas.paste(left_img, (MARGIN, y_top))
    canvas.paste(right_img, (2 * MARGIN + dw, y_top))

    # legend: colour bar under the heatmap
    lx, ly = 2 * MARGIN + dw, y_top + dh + 6
    bar_w = max(60, min(dw, 256))
    bar = colormap(np.tile(np.linspace(0, 1, bar_w), (10, 1)))
    canvas.paste(Image.fromarray(bar), (lx, ly))
    draw.rectangle([lx - 1, ly - 1, lx + bar_w, ly + 10], outline=TEXT)
    draw.text((lx, ly + 13), "0", fill=TEXT, font=font)
    draw.text((lx + bar_w + 6, ly - 2), f"{vmax:,.0f} {unit}" if vmax >= 10 else f"{vmax:.3g} {unit}",
              fill=TEXT, font=font)
    draw.text((MARGIN, ly), f"thumbnail: {tw}x{th} px, 1 px = {thumb_scale:g} level-0 px",
              fill=TEXT, font=font)

    # zooms
    zy = y_top + dh + legend_h + MARGIN
    for k, (crop, polys) in enumerate(zooms):
        crop = _as_rgb_uint8(crop)
        ch, cw = crop.shape[:2]
        zw, zh, zs = _display_size(ch, cw, ZOOM)
        zimg = Image.fromarray(crop).resize((zw, zh), Image.NEAREST if zs >= 2 else Image.BILINEAR)
        zd = ImageDraw.Draw(zimg)
        lw = 2 if zs >= 1.5 else 1
        for p in polys or ():
            _draw_polygon_outline(zd, p, zs, OUTLINE_NUCLEUS, lw)
        zx = MARGIN + k * (ZOOM + MARGIN)
        canvas.paste(zimg, (zx, zy))
        draw.rectangle([zx - 1, zy - 1, zx + zw, zy + zh], outline=TEXT)

    path = Path(path)
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
