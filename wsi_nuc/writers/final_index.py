"""The final nuclei that touch a box, found through their tile: how the OME-Zarr writer rasterises outlines
chunk by chunk without a global tree."""
from __future__ import annotations

import numpy as np


class FinalIndex:
    """Surviving outlines that touch a working-pixel box, found through their tile (no global tree).

    For every tile with survivors it keeps the outlines' bounding boxes in working pixels (level-0 / f),
    one (n, 4) array per tile, and the box around them all; a query picks the tiles, then the outlines,
    with boolean masks. An outline counts when its box touches [y0, y1] x [x0, x1] (edges included).
    Ids and order are those of the final nuclei (:class:`wsi_nuc.stitch.FinalNuclei`).
    """

    def __init__(self, final, f):
        self.f = f
        self.tiles = []
        for tn, idx, first in final:
            if len(idx):
                self.tiles.append((tn, idx, first, _outline_boxes(tn)[idx] / f))
        self.boxes = np.array([(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
                               for *_, b in self.tiles]).reshape(-1, 4)

    def __call__(self, y0, x0, y1, x1):
        for t in np.flatnonzero(_touching(self.boxes, y0, x0, y1, x1)):
            tn, idx, first, boxes = self.tiles[t]
            for j in np.flatnonzero(_touching(boxes, y0, x0, y1, x1)).tolist():
                yield first + j, tn.polygon(idx[j])

    query = __call__


def _outline_boxes(tn) -> np.ndarray:
    """(x_min, y_min, x_max, y_max) of every outline of a tile, level-0; NaN for an empty outline."""
    starts, lens = tn.offsets[:-1], np.diff(tn.offsets)
    out = np.full((len(lens), 4), np.nan)
    ok = lens > 0
    if ok.any():
        x, y = tn.coords[:tn.offsets[-1], 0], tn.coords[:tn.offsets[-1], 1]
        s = starts[ok]
        out[ok] = np.column_stack([np.minimum.reduceat(x, s), np.minimum.reduceat(y, s),
                                   np.maximum.reduceat(x, s), np.maximum.reduceat(y, s)])
    return out


def _touching(boxes: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    """Which (x_min, y_min, x_max, y_max) boxes touch [y0, y1] x [x0, x1] (False for NaN boxes)."""
    return (boxes[:, 2] >= x0) & (boxes[:, 0] <= x1) & (boxes[:, 3] >= y0) & (boxes[:, 1] <= y1)
