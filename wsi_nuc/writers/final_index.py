"""The final nuclei that touch a box, found through their tile: how the OME-Zarr writer rasterises outlines
chunk by chunk without a global tree."""
from __future__ import annotations

import numpy as np


class FinalIndex:
    """Final outlines that touch a working-pixel box, found through their tile (no global tree): the one
    polygon index of the package.

    For every tile with survivors it keeps the outlines' bounding boxes in working pixels (level-0 / f),
    one (n, 4) array of (y0, x0, y1, x1) per tile, and the box around them all; a query picks the tiles,
    then the outlines, with boolean masks. An outline counts when its box touches the query's
    :class:`~wsi_nuc.tiling.Box` [y0, y1] x [x0, x1] (edges included).
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

    def query(self, box):
        """``(nucleus_id, level-0 outline)`` of the outlines touching the working-pixel ``box``, in id order."""
        for t in np.flatnonzero(_touching(self.boxes, box)):
            tn, idx, first, boxes = self.tiles[t]
            for j in np.flatnonzero(_touching(boxes, box)).tolist():
                yield first + j, tn.polygon(idx[j])


def _outline_boxes(tn) -> np.ndarray:
    """(y0, x0, y1, x1) bounds of every outline of a tile, level-0; NaN for an empty outline."""
    starts, lens = tn.offsets[:-1], np.diff(tn.offsets)
    out = np.full((len(lens), 4), np.nan)
    ok = lens > 0
    if ok.any():
        x, y = tn.coords[:tn.offsets[-1], 0], tn.coords[:tn.offsets[-1], 1]
        s = starts[ok]
        out[ok] = np.column_stack([np.minimum.reduceat(y, s), np.minimum.reduceat(x, s),
                                   np.maximum.reduceat(y, s), np.maximum.reduceat(x, s)])
    return out


def _touching(boxes: np.ndarray, box) -> np.ndarray:
    """Which (y0, x0, y1, x1) rows touch ``box`` [y0, y1] x [x0, x1] (False for NaN rows)."""
    return (boxes[:, 2] >= box.y0) & (boxes[:, 0] <= box.y1) & (boxes[:, 3] >= box.x0) & (boxes[:, 1] <= box.x1)
