"""The bulk outline cleaner gives exactly what the one-at-a-time cleaner gives, on real nuclei and bad rings."""
import numpy as np

from wsi_nuc.instances import polygons_level0
from wsi_nuc.outlines import clean_polygons
from wsi_nuc.writers import clean_polygon


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def test_bulk_cleaning_matches_scalar_on_real_outlines(monuseg_tile):
    _, labels, ids = monuseg_tile
    raw = polygons_level0(labels, ids, 2.0, (1000.5, 333.25))
    bulk = clean_polygons(raw)
    assert len(bulk) == len(raw) == len(ids)
    assert sum(r is not None for r in bulk) == len(ids)
    assert all(_same(a, clean_polygon(r)) for a, r in zip(bulk, raw))


def test_bulk_cleaning_repairs_and_drops_like_scalar():
    rings = [
        np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float),            # bow-tie: repaired
        None,                                                              # tracing failed: stays None
        np.array([[0, 0], [1, 1], [2, 2]], float),                         # collinear: dropped
        np.array([[0, 0], [0, 4], [4, 4], [4, 0], [np.nan, 1]], float),   # clockwise with a NaN vertex
        np.array([[0, 0], [5, 0.001], [10, 0]], float),                    # sliver lost to rounding
        np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float),                 # plain square
    ]
    bulk = clean_polygons(rings)
    assert bulk[1] is None and bulk[2] is None and bulk[4] is None
    assert bulk[0] is not None and bulk[5] is not None
    for a, r in zip(bulk, rings):
        assert _same(a, None if r is None else clean_polygon(r))
