"""One-glance quality-control image (Pillow only).

Layout::

    title: slide | model and version | wsi-nuc version;  subtitle: count and legend
    +-------------------------+-------------------------+
    | thumbnail               | thumbnail + nucleus     |
    | + tissue outline (green)| density heatmap + legend|
    | + numbered zoom boxes   | + numbered zoom boxes   |
    | + scale bar             |                         |
    +------------+------------+------------+------------+
    | zoom 1     | zoom 2     | zoom 3     | zoom 4     |   outlines coloured by confidence or type,
    +------------+------------+------------+------------+   scale bar, caption (density quantile)
    | nucleus-area histogram  | outline colour legend   |
    +-------------------------+-------------------------+

The density is nuclei per mm² (when ``level0_mpp`` is known, else per 10^6 level-0 px²): centroids
binned on the thumbnail grid, Gaussian-smoothed (sigma 50 µm, at least 1 % of the thumbnail), coloured
with a small built-in colormap from 0 to the 99th percentile, drawn semi-transparently over the thumbnail.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from .atomic import atomic_file
from .qc_histogram import histogram as _histogram
from .qc_text import qc_font, units_for

PANEL = 512          # longest side of each of the two top panels, in pixels
ZOOM = 256           # side of each zoom tile
MARGIN = 8
SMOOTH_UM = 50.0     # density smoothing (Gaussian sigma) when the pixel size is known
BG = (255, 255, 255)
TEXT = (20, 20, 20)
OUTLINE_TISSUE = (0, 170, 0)
OUTLINE_NUCLEUS = (255, 230, 0)
OUTLINE_REGION = (210, 0, 210)   # --roi: the analysed region, magenta

# "inferno"-like anchors, 0..1 -> RGB
_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def _ramp(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0) * (len(_CMAP) - 1)
    i = np.minimum(np.floor(v).astype(int), len(_CMAP) - 2)
    return np.round(_CMAP[i] * (1 - (v - i)[..., None]) + _CMAP[i + 1] * (v - i)[..., None]).astype(np.uint8)


_LUT = _ramp(np.linspace(0.0, 1.0, 4096))


def colormap(v: np.ndarray) -> np.ndarray:
    """Map values in 0..1 to uint8 RGB (piecewise-linear through the anchors; a 4096-step table)."""
    return _LUT[np.rint(np.clip(np.nan_to_num(np.asarray(v, np.float32)), 0.0, 1.0) * 4095).astype(np.intp)]


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
    dens = _smooth(counts, sigma)
    if level0_mpp:
        px_mm = thumb_scale * float(level0_mpp) / 1000.0  # thumbnail pixel side in mm
        return dens / (px_mm * px_mm), "nuclei/mm²"
    return dens / (thumb_scale * thumb_scale) * 1e6, "nuclei/Mpx² (level-0)"


def _smooth(counts: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (zero outside). A wide ``sigma`` is applied on blocks of ``sigma / 8`` px (averaged,
    then interpolated back linearly between block centres): the same picture for a 512-px panel, in tens of
    milliseconds rather than the 2-5 s that a 200-px sigma over a 2048² thumbnail (a small slide at full
    resolution) took."""
    k = int(sigma // 8)
    if k < 2:
        return ndi.gaussian_filter(counts, sigma, mode="constant")
    th, tw = counts.shape
    blocks = np.pad(counts, ((0, -th % k), (0, -tw % k)))
    blocks = blocks.reshape(blocks.shape[0] // k, k, blocks.shape[1] // k, k).mean(axis=(1, 3))
    small = ndi.gaussian_filter(blocks, sigma / k, mode="constant")
    return _linear(_linear(small, th, k, 0), tw, k, 1)


def _linear(a: np.ndarray, n: int, k: int, axis: int) -> np.ndarray:
    """``a`` sampled at the centres of blocks of ``k`` px along ``axis``, interpolated linearly to ``n`` px."""
    m = a.shape[axis]
    u = np.clip((np.arange(n) - (k - 1) / 2) / k, 0, m - 1)
    j0 = np.floor(u).astype(np.int64)
    t = u - j0
    j1 = np.minimum(j0 + 1, m - 1)
    shape = [1, 1]
    shape[axis] = n
    return np.take(a, j0, axis) * (1 - t).reshape(shape) + np.take(a, j1, axis) * t.reshape(shape)


def confidence_color(v) -> np.ndarray:
    """Outline colour of a confidence in 0.5..1 (red low, yellow, green high); uint8 (..., 3).

    >>> confidence_color([0.5, 1.0]).tolist()
    [[255, 60, 60], [0, 220, 120]]
    """
    t = np.clip((np.nan_to_num(np.asarray(v, np.float64), nan=0.5) - 0.5) / 0.5, 0, 1)[..., None]
    lo, mid, hi = np.array(_CONF_ANCHORS, np.float64)
    c = np.where(t < 0.5, lo + (mid - lo) * (t / 0.5), mid + (hi - mid) * ((t - 0.5) / 0.5))
    return np.round(c).astype(np.uint8)


_CONF_ANCHORS = ((255, 60, 60), (255, 230, 0), (0, 220, 120))


def _nice_length(target: float) -> float:
    """A round length (1, 2 or 5 times a power of ten) not above ``target``."""
    if target <= 0:
        return 0.0
    p = 10.0 ** np.floor(np.log10(target))
    return float(max(m * p for m in (1, 2, 5) if m * p <= target))


def _scale_bar(draw, x, y, px_per_um: float, max_px: float, font, color=TEXT, halo=True) -> None:
    """A µm (or mm) scale bar of a round length up to ``max_px`` pixels, its left end at (x, y)."""
    if not px_per_um or px_per_um <= 0:
        return
    um = _nice_length(max_px / px_per_um)
    if um <= 0:
        return
    L = um * px_per_um
    label = f"{um / 1000:g} mm" if um >= 1000 else units_for(f"{um:g} µm", font)
    if halo:
        draw.rectangle([x - 3, y - 16, x + max(L, 40) + 3, y + 5], fill=(255, 255, 255))
    draw.rectangle([x, y, x + L, y + 3], fill=color)
    draw.text((x, y - 15), label, fill=color, font=font)


def write_qc_png(path: Path | str, thumb_rgb: np.ndarray, thumb_scale: float, tissue_mask_bool: np.ndarray,
                 centroids_level0_xy: np.ndarray, zooms: Sequence[tuple] = (),
                 level0_mpp: float | None = None, title: str | None = None,
                 areas_um2: np.ndarray | None = None, legend: Sequence[tuple[str, tuple]] | None = None,
                 min_area_um2: float | None = None, subtitle: str | None = None,
                 region_mask: np.ndarray | None = None, footer: str | None = None) -> None:
    """Write the QC PNG.

    thumb_rgb : (h, w, 3) thumbnail of the slide.
    thumb_scale : level-0 pixels per thumbnail pixel (level-0 x = thumbnail x * thumb_scale).
    tissue_mask_bool : tissue mask of any size covering the same slide extent (resized to the thumbnail).
    centroids_level0_xy : (N, 2) nucleus centroids in level-0 pixels (N may be 0).
    zooms : up to 4 ``(rgb_crop, [polygon (K, 2) xy in crop pixel coordinates, ...])``, optionally
        followed by ``colors`` (one RGB per polygon; default yellow), ``box`` (the crop's level-0
        ``(x0, y0, w, h)``: a numbered box on the thumbnail and a µm scale bar on the zoom) and a
        ``caption``.
    level0_mpp : µm per level-0 pixel, for a density in nuclei/mm^2 and the scale bars (optional).
    title : a line of text at the top (e.g. slide name, model and version).
    areas_um2 : nucleus areas for the histogram panel (optional); min_area_um2 marks the size rule.
    legend : ``[(label, rgb), ...]`` for the outline colours (types); None: the confidence colour bar
        when the zooms have colours.
    subtitle : a second line (counts, tissue).
    region_mask : with ``--roi``, the region on the thumbnail grid (bool (h, w)), outlined in magenta.
    footer : small print at the bottom, one or more lines (the model's licence).

    >>> import tempfile, os
    >>> write_qc_png(os.path.join(tempfile.mkdtemp(), "qc.png"), np.full((20, 30, 3), 230, np.uint8),
    ...              4.0, np.ones((5, 5), bool), np.array([[10.0, 12.0]]), level0_mpp=0.5, title="s")
    """
    thumb = _as_rgb_uint8(thumb_rgb)
    th, tw = thumb.shape[:2]
    thumb_scale = float(thumb_scale) if thumb_scale and thumb_scale > 0 else 1.0
    font = qc_font()
    n_nuclei = int(np.asarray(centroids_level0_xy).reshape(-1, 2).shape[0])
    zooms = [tuple(z) + (None,) * (5 - len(z)) for z in list(zooms)[:4]]
    left_img, right_img, vmax, unit = _panels(thumb, thumb_scale, tissue_mask_bool, centroids_level0_xy, zooms,
                                              level0_mpp, font, region_mask)
    dw, dh = left_img.size
    title_h, legend_h, hist_h = 40, 44, (170 if areas_um2 is not None else 0)
    zoom_row_h = (ZOOM + MARGIN + 18) if zooms else 0
    width = max(2 * dw + 3 * MARGIN, (4 * (ZOOM + MARGIN) + MARGIN) if zooms else 0, 560)
    foot_h = 18 * len(footer.splitlines()) if footer else 0
    canvas = Image.new("RGB", (width, title_h + dh + legend_h + zoom_row_h + hist_h + foot_h + 2 * MARGIN), BG)
    draw = ImageDraw.Draw(canvas)
    _texts(draw, (MARGIN, 3), [title or "wsi-nuc QC", subtitle or f"{n_nuclei:,} nuclei  |  tissue outline "
                               f"(green), density (right)"], font, TEXT)
    canvas.paste(left_img, (MARGIN, title_h))
    canvas.paste(right_img, (2 * MARGIN + dw, title_h))
    _density_legend(canvas, draw, (2 * MARGIN + dw, title_h + dh + 6), dw, vmax, unit, font)
    _thumbnail_notes(draw, (MARGIN, title_h + dh + 6), (th, tw), thumb_scale, zooms, font, region_mask is not None)
    zy = title_h + dh + legend_h + MARGIN
    _draw_zooms(canvas, draw, zooms, zy, level0_mpp, font)
    hy = zy + zoom_row_h
    if areas_um2 is not None:
        canvas.paste(_histogram(areas_um2, min(dw, 520), hist_h - MARGIN, font, min_area_um2), (MARGIN, hy))
    _outline_legend(canvas, draw, (MARGIN + min(dw, 520) + 2 * MARGIN, hy), legend, zooms, font)
    _texts(draw, (MARGIN, hy + hist_h + MARGIN - 2), (footer or "").splitlines(), font, (90, 90, 90))
    path = Path(path)
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)


def _texts(draw, at: tuple[int, int], lines, font, colour) -> None:
    """Lines of text from ``at`` down, 18 px apart (µm and mm² written as the font can)."""
    for j, line in enumerate(lines):
        draw.text((at[0], at[1] + 18 * j), units_for(line, font), fill=colour, font=font)


def _panels(thumb, thumb_scale: float, tissue_mask_bool, centroids_level0_xy, zooms, level0_mpp, font,
            region_mask=None):
    """The two thumbnail panels (tissue outline with a scale bar; density), the zoom boxes and the region
    (``region_mask``, magenta) marked on both, and the density's top and unit."""
    th, tw = thumb.shape[:2]
    dw, dh, ds = _display_size(th, tw, PANEL)
    resample = Image.NEAREST if ds >= 2 else Image.BILINEAR
    base = Image.fromarray(thumb).resize((dw, dh), resample)
    disp_per_l0 = ds / thumb_scale          # display px per level-0 px
    left_img = _outlined(base.copy(), tissue_mask_bool, OUTLINE_TISSUE)
    dens, unit = density_map(centroids_level0_xy, (th, tw), thumb_scale, level0_mpp)
    right_img, vmax = _density_panel(base, dens, resample)
    if region_mask is not None:
        left_img, right_img = (_outlined(img, region_mask, OUTLINE_REGION) for img in (left_img, right_img))
    for img in (left_img, right_img):
        _mark_zooms(ImageDraw.Draw(img), zooms, disp_per_l0, font)
    if level0_mpp:
        _scale_bar(ImageDraw.Draw(left_img), 10, dh - 10, disp_per_l0 / float(level0_mpp), dw / 4, font)
    return left_img, right_img, vmax, unit


def _outlined(img: Image.Image, mask, colour) -> Image.Image:
    """``img`` with the outline of ``mask`` (any size over the same extent, resized to it) drawn in ``colour``."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2 or not mask.any():
        return img
    dw, dh = img.size
    disp = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((dw, dh), Image.NEAREST)) > 127
    a = np.asarray(img).copy()
    a[_outline(disp, 2)] = colour
    return Image.fromarray(a)


def _density_panel(base: Image.Image, dens: np.ndarray, resample) -> tuple[Image.Image, float]:
    """The density heatmap over the thumbnail, translucent enough to see the tissue through it; and its top."""
    dw, dh = base.size
    vmax = float(np.percentile(dens[dens > 0], 99)) if (dens > 0).any() else 0.0
    norm = dens / vmax if vmax > 0 else np.zeros_like(dens)
    heat = Image.fromarray(colormap(norm)).resize((dw, dh), resample)
    alpha_small = np.where(norm > 0.03, np.clip(0.1 + 0.5 * norm, 0, 0.55) * np.clip(norm / 0.15, 0, 1), 0.0)
    alpha = np.asarray(Image.fromarray((alpha_small * 255).astype(np.uint8)).resize((dw, dh), resample),
                       np.float64)[..., None] / 255.0
    right = np.round(np.asarray(base, np.float64) * (1 - alpha) + np.asarray(heat, np.float64) * alpha)
    return Image.fromarray(right.astype(np.uint8)), vmax


def _mark_zooms(d, zooms, disp_per_l0: float, font) -> None:
    """Numbered boxes where the zooms come from."""
    for k, (_, _, _, box, _) in enumerate(zooms):
        if box is None:
            continue
        bx, by, bw_, bh_ = (float(v) * disp_per_l0 for v in box)
        cx, cy = bx + bw_ / 2, by + bh_ / 2
        half = max(bw_, bh_, 10) / 2
        d.rectangle([cx - half, cy - half, cx + half, cy + half], outline=(0, 90, 255), width=2)
        d.text((cx + half + 2, cy - half - 2), str(k + 1), fill=(0, 60, 200), font=font)


def _density_legend(canvas, draw, at: tuple[int, int], dw: int, vmax: float, unit: str, font) -> None:
    """The heatmap's colour bar, under it."""
    lx, ly = at
    bar_w = max(60, min(dw, 256))
    bar = colormap(np.tile(np.linspace(0, 1, bar_w), (10, 1)))
    canvas.paste(Image.fromarray(bar), (lx, ly))
    draw.rectangle([lx - 1, ly - 1, lx + bar_w, ly + 10], outline=TEXT)
    draw.text((lx, ly + 13), "0", fill=TEXT, font=font)
    unit = units_for(unit, font)
    draw.text((lx + bar_w + 6, ly - 2), f"{vmax:,.0f} {unit}" if vmax >= 10 else f"{vmax:.3g} {unit}",
              fill=TEXT, font=font)


def _thumbnail_notes(draw, at: tuple[int, int], thumb_shape, thumb_scale: float, zooms, font,
                     region: bool = False) -> None:
    """Under the thumbnail: its size and scale, what the blue boxes are and the magenta region line."""
    x, y = at
    th, tw = thumb_shape
    draw.text((x, y), f"thumbnail: {tw}x{th} px, 1 px = {thumb_scale:g} level-0 px", fill=TEXT, font=font)
    if zooms and any(z[3] is not None for z in zooms):
        draw.text((x, y + 16), "blue boxes: where zooms 1-4 come from", fill=(0, 60, 200), font=font)
    if region:
        draw.text((x + 270, y + 16), "magenta: the region (--roi)", fill=OUTLINE_REGION, font=font)


def _draw_zooms(canvas, draw, zooms, zy: int, level0_mpp: float | None, font) -> None:
    """The zoom row: each crop with its outlines, number, scale bar and caption."""
    for k, (crop, polys, colors, box, caption) in enumerate(zooms):
        crop = _as_rgb_uint8(crop)
        ch, cw = crop.shape[:2]
        zw, zh, zs = _display_size(ch, cw, ZOOM)
        zimg = Image.fromarray(crop).resize((zw, zh), Image.NEAREST if zs >= 2 else Image.BILINEAR)
        zd = ImageDraw.Draw(zimg)
        lw = 2 if zs >= 1.5 else 1
        for j, p in enumerate(polys or ()):
            col = tuple(int(v) for v in colors[j]) if colors is not None else OUTLINE_NUCLEUS
            _draw_polygon_outline(zd, p, zs, col, lw)
        if box is not None and level0_mpp:
            zpx_per_um = zs * cw / (float(box[2]) * float(level0_mpp))
            _scale_bar(zd, 8, zh - 8, zpx_per_um, zw / 3, font)
        zd.rectangle([0, 0, 18, 16], fill=(255, 255, 255))
        zd.text((4, 0), str(k + 1), fill=(0, 60, 200), font=font)
        zx = MARGIN + k * (ZOOM + MARGIN)
        canvas.paste(zimg, (zx, zy))
        draw.rectangle([zx - 1, zy - 1, zx + zw, zy + zh], outline=TEXT)
        if caption:
            draw.text((zx, zy + zh + 2), units_for(str(caption), font), fill=TEXT, font=font)


def _outline_legend(canvas, draw, at: tuple[int, int], legend, zooms, font) -> None:
    """What the outline colours mean: the types, or the confidence colour bar."""
    gx, hy = at
    if legend:
        draw.text((gx, hy + 2), "outlines: nucleus type", fill=TEXT, font=font)
        for j, (label, rgb) in enumerate(legend):
            yy = hy + 22 + 18 * j
            draw.rectangle([gx, yy + 2, gx + 24, yy + 12], fill=tuple(int(v) for v in rgb), outline=TEXT)
            draw.text((gx + 30, yy), str(label), fill=TEXT, font=font)
    elif zooms and any(z[2] is not None for z in zooms):
        draw.text((gx, hy + 2), "outlines: confidence", fill=TEXT, font=font)
        cb = confidence_color(np.tile(np.linspace(0.5, 1.0, 200), (10, 1)))
        canvas.paste(Image.fromarray(cb), (gx, hy + 24))
        draw.text((gx, hy + 38), "0.5", fill=TEXT, font=font)
        draw.text((gx + 180, hy + 38), "1.0", fill=TEXT, font=font)
