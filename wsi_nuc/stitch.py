"""The slide's nuclei from its tiles: one survivor per nucleus, the size rule and the region, then ids.

    final = stitch(tiles, band=grid.band, min_area_um2=3.0, roi=None)
    for tn, idx, first in final:      # every writer iterates the same final nuclei, in id order
        ...                           # nucleus first + j is tn's nucleus idx[j]

:func:`deduplicate` makes the same nucleus kept by two tiles one (a shapely STRtree over the nuclei near a
core edge); :func:`apply_min_area` and :func:`apply_roi` drop what the size rule and the region exclude;
:func:`number` gives the ids, once: 1..N in tile order, then centroid (y, x) order, so they do not depend on
which worker finished first.

>>> from types import SimpleNamespace as S
>>> t = S(n=3, columns={"area_um2": np.array([9.0, 2.0, 9.0]), "centroid_x_px": np.array([5.0, 1.0, 1.0]),
...                     "centroid_y_px": np.array([0.0, 0.0, 0.0])}, cut=0)
>>> final = number([t], apply_min_area([t], [np.ones(3, bool)], 3.0))
>>> [(first, idx.tolist()) for _, idx, first in final], len(final)
([(1, [2, 0])], 2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .segment import TileNuclei


@dataclass(frozen=True)
class FinalNuclei:
    """The slide's final nuclei: per tile (every tile, in tile order), its surviving indices in id order
    and the id of the first; nucleus ``first + j`` is ``tile.polygon(idx[j])``, ``tile.columns[c][idx[j]]``."""

    parts: tuple            # ((TileNuclei, idx int array, first id), ...)
    count: int              # N: ids run 1..N
    cut: int = 0            # nuclei the tile that would own them saw cut by its read window (tiling.Owned)

    def __iter__(self) -> Iterator[tuple[TileNuclei, np.ndarray, int]]:
        return iter(self.parts)

    def __len__(self) -> int:
        return self.count

    def nuclei(self) -> Iterator[tuple[int, TileNuclei, int]]:
        """(id, tile, index in tile) of every nucleus, in id order."""
        for tn, idx, first in self.parts:
            for j, i in enumerate(idx.tolist()):
                yield first + j, tn, i


def stitch(tiles: list[TileNuclei], band: float, min_area_um2: float = 0.0, roi=None) -> FinalNuclei:
    """The final nuclei of a slide from its tiles (see the module docstring); ``band`` is the grid's
    :attr:`wsi_nuc.tiling.TileGrid.band`, ``roi`` a :class:`wsi_nuc.roi.Roi` or None."""
    keep = apply_min_area(tiles, deduplicate(tiles, band=band), min_area_um2)
    if roi is not None:
        keep = apply_roi(tiles, keep, roi)
    return number(tiles, keep)


def number(tiles: list[TileNuclei], keep: list[np.ndarray]) -> FinalNuclei:
    """Ids for the nuclei ``keep`` marks (one boolean array per tile): 1..N in tile order, then centroid
    (y, x) order."""
    parts = []
    nid = 1
    for tn, k in zip(tiles, keep):
        idx = np.nonzero(k)[0]
        if len(idx):
            idx = idx[np.lexsort((tn.columns["centroid_x_px"][idx], tn.columns["centroid_y_px"][idx]))]
        parts.append((tn, idx, nid))
        nid += len(idx)
    return FinalNuclei(tuple(parts), nid - 1, sum(int(getattr(tn, "cut", 0)) for tn in tiles))


def apply_min_area(tiles, keep, min_area_um2: float) -> list[np.ndarray]:
    """``keep`` without nuclei smaller than ``min_area_um2`` (µm², from the unsimplified outline's
    pixel count); a new list, the input is not changed.

    >>> from types import SimpleNamespace as S
    >>> apply_min_area([S(columns={"area_um2": np.array([2.0, 3.0, 9.5])})], [np.ones(3, bool)], 3.0)
    [array([False,  True,  True])]
    """
    if not min_area_um2 or min_area_um2 <= 0:
        return [k.copy() for k in keep]
    return [k & (np.nan_to_num(tn.columns["area_um2"], nan=0.0) >= float(min_area_um2))
            for tn, k in zip(tiles, keep)]


def apply_roi(tiles, keep, roi) -> list[np.ndarray]:
    """``keep`` without nuclei whose centroid lies outside the region (``roi.Roi``); a new list."""
    return [k & roi.contains(tn.columns["centroid_x_px"], tn.columns["centroid_y_px"]) if k.any() else k.copy()
            for tn, k in zip(tiles, keep)]


def border_candidates(tn: TileNuclei, band: float) -> np.ndarray:
    """Indices of a tile's nuclei whose centroid lies within ``band`` working px of its core edge."""
    return np.nonzero(tn.depth < band)[0]


def deduplicate(tiles: list[TileNuclei], band: float = 16.0, iou: float = 0.3,
                cover: float = 0.6) -> list[np.ndarray]:
    """Keep masks, one boolean array per tile, so that each nucleus survives exactly once.

    Only nuclei near a core edge can be seen twice. Among those, two outlines from different tiles are
    the same nucleus when their IoU exceeds ``iou`` or the overlap covers more than ``cover`` of the
    smaller one. Survivors are chosen greedily by depth inside their own core (the view with the most
    context wins); ties go to the earlier tile, so the result does not depend on completion order.
    """
    from shapely import STRtree, Polygon, make_valid

    keep = [np.ones(t.n, bool) for t in tiles]
    cand = [(ti, i) for ti, t in enumerate(tiles) for i in border_candidates(t, band)]
    if len(cand) < 2:
        return keep
    geoms = np.array([make_valid(Polygon(tiles[ti].polygon(i))) for ti, i in cand], dtype=object)
    depth = np.array([tiles[ti].depth[i] for ti, i in cand])
    order = np.lexsort((np.array([ti for ti, _ in cand]), -depth))
    tree = STRtree(geoms)
    kept = np.zeros(len(cand), bool)
    for k in order:
        g = geoms[k]
        ti = cand[k][0]
        dup = False
        for j in tree.query(g, predicate="intersects"):
            if j == k or not kept[j] or cand[j][0] == ti:
                continue
            h = geoms[j]
            inter = g.intersection(h).area
            small = min(g.area, h.area)
            union = g.area + h.area - inter
            if (union > 0 and inter / union > iou) or (small > 0 and inter / small > cover):
                dup = True
                break
        if dup:
            keep[ti][cand[k][1]] = False
        else:
            kept[k] = True
    return keep
