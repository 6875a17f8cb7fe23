"""qc.png's nucleus-area histogram panel (a small Pillow image), apart from the page's layout in :mod:`.qc`.

>>> from .qc_text import qc_font
>>> histogram(np.array([10.0, 20.0, 20.5]), 300, 150, qc_font(), 3.0).size
(300, 150)
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .qc_text import units_for

BG = (255, 255, 255)
TEXT = (20, 20, 20)


def histogram(areas: np.ndarray, w: int, h: int, font, min_area: float | None) -> Image.Image:
    """Nucleus-area histogram (µm², 1 µm² bins up to the 99.5th percentile) as a small image."""
    img = Image.new("RGB", (w, h), BG)
    d = ImageDraw.Draw(img)
    a = np.asarray(areas, np.float64)
    a = a[np.isfinite(a)]
    d.text((4, 2), units_for(f"nucleus area (µm²), n = {len(a):,}", font), fill=TEXT, font=font)
    if not len(a):
        return img
    hi = max(float(np.percentile(a, 99.5)), 1.0)
    bins = np.linspace(0, hi, min(60, max(10, int(hi))) + 1)
    cnt, _ = np.histogram(np.clip(a, 0, hi), bins)
    x0, y0, x1, y1 = 36, 22, w - 8, h - 20
    top = max(int(cnt.max()), 1)
    bw = (x1 - x0) / len(cnt)
    for i, c in enumerate(cnt.tolist()):
        bh = (y1 - y0) * c / top
        d.rectangle([x0 + i * bw, y1 - bh, x0 + (i + 1) * bw - 1, y1], fill=(90, 90, 160))
    d.line([x0, y1, x1, y1], fill=TEXT)
    d.line([x0, y0, x0, y1], fill=TEXT)
    for v in (0, hi / 2, hi):
        xv = x0 + (x1 - x0) * v / hi
        label = f"{v:.0f}"
        d.text((min(xv - 8, x1 - 8 * len(label)), y1 + 3), label, fill=TEXT, font=font)
    d.text((2, y0), f"{top}", fill=TEXT, font=font)
    med = float(np.median(a))
    xm = x0 + (x1 - x0) * min(med, hi) / hi
    d.line([xm, y0, xm, y1], fill=(200, 0, 0), width=2)
    d.text((xm + 4, y0), f"median {med:.1f}", fill=(200, 0, 0), font=font)
    if min_area:
        xa = x0 + (x1 - x0) * min(min_area, hi) / hi
        d.line([xa, y0 + 20, xa, y1], fill=(0, 130, 0), width=1)
        d.text((xa + 3, y0 + 20), f"min {min_area:g}", fill=(0, 130, 0), font=font)
    return img
