"""An RGB image held in memory as a one-level slide, for the Python API (:func:`wsi_nuc.segment_image`).

It answers the reader interface (``info``, ``read_level``) so tissue detection, stain statistics and the
tile tasks of ``wsi-nuc run`` read it exactly as they read a slide file: the same pixels give the same nuclei.
With ``origin`` the image sits at that level-0 (x, y) of an otherwise white slide, so the tiles are cut on the
grid of the slide it came from (its network sees the same pixels at the same grid offsets as ``run`` did).
Reads are numpy slices, safe from several tile threads at once.

>>> import numpy as np
>>> r = ArrayReader(np.zeros((4, 6, 3), np.uint8), mpp=0.5)
>>> r.info.width, r.info.height, r.read_level(0, 4, 2, 4, 3)[:, :, 0].tolist()
(6, 4, [[0, 0, 255, 255], [0, 0, 255, 255], [255, 255, 255, 255]])
>>> ArrayReader(np.zeros((4, 6, 3), np.uint8), mpp=0.5, origin=(2, 1)).read_level(0, 0, 0, 4, 2)[:, :, 0].tolist()
[[255, 255, 255, 255], [255, 255, 0, 0]]
"""
from __future__ import annotations

import numpy as np

from .info import SlideInfo
from .readers import _BaseReader, _white


class ArrayReader(_BaseReader):
    """A (H, W, 3) uint8 array at ``mpp`` µm/px as level 0 of a slide named ``name``, its top-left pixel at
    level-0 ``origin`` (whole pixels; the slide is white elsewhere)."""

    name = "array"

    def __init__(self, rgb: np.ndarray, mpp: float, name: str = "rgb", origin: tuple[int, int] = (0, 0)):
        super().__init__(name)
        self._arr = np.ascontiguousarray(rgb[..., :3])
        self.origin = (int(origin[0]), int(origin[1]))
        h, w = self._arr.shape[:2]
        W, H = w + self.origin[0], h + self.origin[1]
        self._level_dims = ((W, H),)
        self._level_ds = (1.0,)
        self.vendor = "array"
        self.info = SlideInfo(name, W, H, float(mpp), "override", "array", "array", ((W, H),), (1.0,), None)

    def _read_px(self, level, lx, ly, w, h):
        ox, oy = self.origin
        if ox == 0 and oy == 0:
            return self._arr[ly:ly + h, lx:lx + w]
        out = _white(h, w)
        ah, aw = self._arr.shape[:2]
        x0, y0, x1, y1 = max(lx, ox), max(ly, oy), min(lx + w, ox + aw), min(ly + h, oy + ah)
        if x1 > x0 and y1 > y0:
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = self._arr[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        return out

    def __reduce__(self):
        return (ArrayReader, (self._arr, self.info.mpp, self.path, self.origin))
