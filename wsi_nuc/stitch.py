"""Cross-tile de-duplication: the same nucleus kept by two tiles becomes one, via a shapely STRtree."""
from __future__ import annotations

import numpy as np

from .segment import TileNuclei


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
