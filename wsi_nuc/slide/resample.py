"""Resampling: a float level-0 box onto an exact output grid from the best pyramid level, thumbnails."""
from __future__ import annotations

import math
import os
import threading

import numpy as np

from .readers import _white

# Largest level window (in level pixels) read in one piece by read_region; bigger requests are
# read in chunks so that thumbnails of single-level gigapixel slides do not need gigabytes.
_MAX_WINDOW_PX = 4096 * 4096


# A slide whose level 0 is at most this many pixels (48 MiB as RGB) is decoded whole once per process and every
# read of level 0 is cut from that copy: a single-level slide such as CMU-1-Small-Region was otherwise decoded
# whole three times (tissue, stain statistics, the OME-Zarr thumbnail) and once more tile by tile.
_WHOLE_MAX_PX = 16 * 1024 * 1024
_WHOLE: dict = {}
_WHOLE_LOCK = threading.Lock()


def level_window(reader, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``reader.read_level(level, x, y, w, h)``, the same pixels (white outside the slide); level 0 of a small
    slide file comes from a copy of the whole level decoded once per process (one slide at a time)."""
    info = reader.info
    lw, lh = info.level_dimensions[level]
    if level != 0 or lw * lh > _WHOLE_MAX_PX or info.reader not in ("openslide", "tiffslide"):
        return reader.read_level(level, x, y, w, h)
    st = os.stat(info.path)
    key = (info.path, info.reader, st.st_size, st.st_mtime_ns, lw, lh)
    with _WHOLE_LOCK:
        whole = _WHOLE.get(key)
        if whole is None:
            whole = reader.read_level(0, 0, 0, lw, lh)
            _WHOLE.clear()
            _WHOLE[key] = whole
    out = _white(h, w)
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y:cy1 - y, cx0 - x:cx1 - x] = whole[cy0:cy1, cx0:cx1]
    return out


def best_level(reader, scale: float) -> int:
    """Coarsest level whose downsample is <= scale * 1.01 (scale = level-0 px per output px)."""
    ds = reader.info.level_downsamples
    best = 0
    for i, d in enumerate(ds):
        if d <= scale * 1.01 and d >= ds[best]:
            best = i
    return best


def read_region(reader, x0: float, y0: float, w0: float, h0: float, out_w: int, out_h: int) -> np.ndarray:
    """Level-0 box ``[x0, x0+w0) x [y0, y0+h0)`` resampled to exactly ``(out_h, out_w, 3)`` uint8.

    Output pixel (r, c) covers level-0 ``[x0 + c*sx, x0 + (c+1)*sx)`` (``sx = w0/out_w``), read
    from the coarsest level with downsample <= sx*1.01; area (BOX) filter when reducing, bilinear
    when enlarging.  Pixels outside the slide are white.
    """
    out_w, out_h = int(out_w), int(out_h)
    if out_w <= 0 or out_h <= 0:
        return _white(out_h, out_w)
    if not (w0 > 0 and h0 > 0):
        raise ValueError(f"read_region: empty box {w0}x{h0}")
    sx, sy = w0 / out_w, h0 / out_h
    level = best_level(reader, min(sx, sy))
    return _read_scaled(reader, level, float(x0), float(y0), sx, sy, out_w, out_h)


def _read_scaled(reader, level, x0, y0, sx, sy, out_w, out_h) -> np.ndarray:
    info = reader.info
    # nothing of the slide inside the box: skip reading
    if x0 >= info.width or y0 >= info.height or x0 + sx * out_w <= 0 or y0 + sy * out_h <= 0:
        return _white(out_h, out_w)
    ds = info.level_downsamples[level]
    kx, ky = sx / ds, sy / ds  # level pixels per output pixel
    side = math.isqrt(_MAX_WINDOW_PX) - 4
    tw = max(1, int(side / max(kx, 1e-9)))
    th = max(1, int(side / max(ky, 1e-9)))
    if out_w > tw or out_h > th:  # too big for one window: chunk the output grid
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, th):
            r1 = min(out_h, r0 + th)
            for c0 in range(0, out_w, tw):
                c1 = min(out_w, c0 + tw)
                out[r0:r1, c0:c1] = _read_window(reader, level, x0 + c0 * sx, y0 + r0 * sy, sx, sy, c1 - c0, r1 - r0)
        return out
    return _read_window(reader, level, x0, y0, sx, sy, out_w, out_h)


def _read_window(reader, level, x0, y0, sx, sy, out_w, out_h) -> np.ndarray:
    from PIL import Image

    info = reader.info
    if x0 >= info.width or y0 >= info.height or x0 + sx * out_w <= 0 or y0 + sy * out_h <= 0:
        return _white(out_h, out_w)
    ds = info.level_downsamples[level]
    # box in level coordinates
    bx0, by0 = x0 / ds, y0 / ds
    bx1, by1 = (x0 + sx * out_w) / ds, (y0 + sy * out_h) / ds
    lx0, ly0 = math.floor(bx0) - 1, math.floor(by0) - 1
    X, Y = int(round(lx0 * ds)), int(round(ly0 * ds))
    ox, oy = reader.level_origin(level, X), reader.level_origin(level, Y)
    ww = int(math.ceil(bx1 - ox)) + 2
    wh = int(math.ceil(by1 - oy)) + 2
    win = level_window(reader, level, X, Y, ww, wh)
    box = (bx0 - ox, by0 - oy, bx1 - ox, by1 - oy)
    kx, ky = sx / ds, sy / ds
    # exact 1:1 at integer offsets: plain crop
    if kx == 1.0 and ky == 1.0 and float(box[0]).is_integer() and float(box[1]).is_integer():
        c, r = int(box[0]), int(box[1])
        return np.ascontiguousarray(win[r : r + out_h, c : c + out_w])
    resample = Image.Resampling.BOX if min(kx, ky) > 1.0 else Image.Resampling.BILINEAR
    img = Image.fromarray(win, "RGB").resize((out_w, out_h), resample, box=box)
    return np.asarray(img)


def read_thumbnail(reader, max_size: int) -> tuple[np.ndarray, float]:
    """Whole slide with its long side at most ``max_size`` px (never enlarged).

    Returns ``(rgb, scale)``; thumbnail pixel (r, c) covers level-0 ``[c*scale, (c+1)*scale)``.
    The last row/column may extend past the slide edge (white there).
    """
    info = reader.info
    scale = max(1.0, max(info.width, info.height) / max(1, int(max_size)))
    return read_scaled_slide(reader, scale), scale


def read_scaled_slide(reader, scale: float) -> np.ndarray:
    """The whole slide at ``scale`` level-0 px per output px (ceil-sized; white past the edge)."""
    info = reader.info
    out_w = max(1, math.ceil(info.width / scale - 1e-9))
    out_h = max(1, math.ceil(info.height / scale - 1e-9))
    return read_region(reader, 0.0, 0.0, out_w * scale, out_h * scale, out_w, out_h)
