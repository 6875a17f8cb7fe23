"""Tiled == untiled: cutting a label image into tiles and stitching gives back the same nuclei (no model)."""
import numpy as np
import pytest
from skimage.draw import polygon as draw_polygon, ellipse

from wsi_nuc.segment import owned_nuclei
from wsi_nuc.stitch import deduplicate
from wsi_nuc.tiling import Scale, make_grid


def synthetic_labels(h, w, n, seed, rmax=9):
    """Random ellipses, overlapping ones cut by later ones (so many nuclei touch), without holes."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.int32)
    for i in range(1, n + 1):
        r, c = rng.uniform(0, h), rng.uniform(0, w)
        rr, cc = ellipse(r, c, rng.uniform(3, rmax), rng.uniform(3, rmax), shape=(h, w),
                         rotation=rng.uniform(0, np.pi))
        lab[rr, cc] = i
    # keep only the largest connected piece of each id (cut nuclei may split)
    from scipy import ndimage as ndi
    out = np.zeros_like(lab)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        cc, n_cc = ndi.label(lab[sl] == i)
        if n_cc == 0:
            continue
        big = np.argmax(np.bincount(cc.ravel())[1:]) + 1
        piece = cc == big
        # nuclei have no holes: drop a piece that encloses another (its outline would cover it)
        if piece.sum() >= 8 and ndi.binary_fill_holes(np.pad(piece, 1)).sum() == piece.sum():
            out[sl][piece] = i
    return out


def tile_and_stitch(lab, tile, halo, margin=8, f=1.0):
    h, w = lab.shape
    grid = make_grid(h, w, tile, halo, align=16, margin=margin)
    img = np.zeros((h, w, 3), np.uint8)
    results = []
    for t in grid:
        r = t.read
        pad = ((max(0, -r.y0), max(0, r.y1 - h)), (max(0, -r.x0), max(0, r.x1 - w)))
        crop = np.pad(lab[max(r.y0, 0):min(r.y1, h), max(r.x0, 0):min(r.x1, w)], pad)
        icrop = np.pad(img[max(r.y0, 0):min(r.y1, h), max(r.x0, 0):min(r.x1, w)], pad + ((0, 0),))
        results.append(owned_nuclei(t, crop, icrop, None, Scale(0.5 / f, 0.5)))
    keep = deduplicate(results, band=grid.band)
    return results, keep


def rasterise(results, keep, shape, f=1.0):
    out = np.zeros(shape, np.int32)
    count = np.zeros(shape, np.int32)
    nid = 0
    for tn, k in zip(results, keep):
        for i in np.nonzero(k)[0]:
            nid += 1
            p = tn.polygon(i)
            rr, cc = draw_polygon(p[:, 1] / f - 0.5, p[:, 0] / f - 0.5, shape)
            out[rr, cc] = nid
            count[rr, cc] += 1
    return out, count, nid


def same_instances(a, b):
    """Label images equal up to a renumbering of ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("tile,offset", [(16, 0), (32, 5), (48, 17), (64, 0), (96, 33), (128, 1), (512, 0)])
def test_tiled_equals_untiled(tile, offset):
    lab = synthetic_labels(300, 260, 260, seed=tile + offset)
    lab = np.pad(lab, ((offset, 0), (offset // 2, 0)))
    results, keep = tile_and_stitch(lab, tile, halo=32)
    out, count, n = rasterise(results, keep, lab.shape)
    assert count.max() <= 1, "overlapping survivors: a duplicate escaped the stitcher"
    assert n == len(np.unique(lab)) - 1
    assert same_instances(lab, out)


def test_each_nucleus_has_one_owner_without_dedup():
    lab = synthetic_labels(200, 200, 150, seed=3)
    results, _ = tile_and_stitch(lab, 48, halo=32, margin=0)
    ids = np.concatenate([np.round(tn.columns["centroid_x_px"] * 1000 + tn.columns["centroid_y_px"]) for tn in results])
    assert len(ids) == len(np.unique(ids)) == len(np.unique(lab)) - 1


def test_scaled_coordinates_level0():
    """With f = 2 (working at half the level-0 resolution) outlines land in level-0 pixels."""
    lab = synthetic_labels(128, 128, 40, seed=7)
    results, keep = tile_and_stitch(lab, 64, halo=32, f=2.0)
    out, count, n = rasterise(results, keep, lab.shape, f=2.0)
    assert same_instances(lab, out)
    xs = np.concatenate([tn.columns["centroid_x_px"] for tn in results])
    assert xs.max() > 128  # level-0 units are twice the working ones


def test_duplicate_views_are_merged():
    """Two tiles seeing the same nucleus with slightly different outlines keep one of them."""
    from wsi_nuc.segment import TileNuclei, pack_polygons
    from wsi_nuc.tiling import Box

    sq = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], float)
    a = TileNuclei("a", 0, 0, Box(0, 0, 16, 16), *pack_polygons([sq]), np.array([1.0]))
    b = TileNuclei("b", 0, 1, Box(0, 16, 16, 32), *pack_polygons([sq + 1]), np.array([-1.0]))
    keep = deduplicate([a, b], band=17)
    assert keep[0].tolist() == [True] and keep[1].tolist() == [False]
    far = TileNuclei("c", 0, 1, Box(0, 16, 16, 32), *pack_polygons([sq + 30]), np.array([0.0]))
    keep = deduplicate([a, far], band=17)
    assert keep[0].tolist() == [True] and keep[1].tolist() == [True]


def test_low_confidence_instances_are_dropped():
    from wsi_nuc.instances import InstanceParams, labels_from_maps

    maps = np.zeros((6, 40, 40), np.float32)
    maps[0, 5:15, 5:15] = 0.95       # a confident nucleus
    maps[0, 25:35, 25:35] = 0.55     # a weak blob
    maps[2, 8:12, 8:12] = 0.9        # distance peaks -> markers
    maps[2, 28:32, 28:32] = 0.9
    keep_all = labels_from_maps(maps, InstanceParams(marker_threshold=0.3))
    assert len(np.unique(keep_all)) == 3
    filtered = labels_from_maps(maps, InstanceParams(marker_threshold=0.3, min_confidence=0.6))
    assert filtered[10, 10] > 0 and filtered[30, 30] == 0


def test_tile_owned_matches_center_of_mass():
    """Tile.owned (bincount over labelled pixels) gives the ids and, bit for bit, the centroids that
    np.unique + ndimage.center_of_mass gave; nuclei touching the read edge are never owned."""
    from scipy import ndimage as ndi

    from wsi_nuc.tiling import Box, Tile

    for seed in range(4):
        lab = synthetic_labels(96, 96, 60, seed=seed)
        t = Tile(0, 0, Box(16, 16, 80, 80), Box(-16, -16, 80, 80), margin=8)   # read offset by -16
        got = t.owned(lab)
        ids = np.unique(lab)[1:]
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        ids = np.setdiff1d(ids, edge)
        cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(lab, np.float32), lab, ids)).reshape(-1, 2).T
        own = t.owns(cy - 16, cx - 16)
        assert np.array_equal(got.ids, ids[own])
        assert np.array_equal(got.y, cy[own] - 16) and np.array_equal(got.x, cx[own] - 16)


def test_nuclei_larger_than_the_halo_are_counted():
    """A nucleus that its owning tile sees cut by the read window is not dropped silently: it is counted."""
    lab = np.zeros((128, 128), np.int32)
    lab[10:118, 60:68] = 1                           # 108 px long: more than tile + 2 halo of one tile
    lab[20:26, 20:26] = 2
    results, keep = tile_and_stitch(lab, 32, halo=16)
    assert sum(tn.cut for tn in results) >= 1
    from wsi_nuc.stitch import number

    final = number(results, keep)
    assert final.cut == sum(tn.cut for tn in results) and final.count == 1   # the small one survives


def test_halo_must_exceed_the_margin():
    with pytest.raises(ValueError, match="larger than the ownership margin"):
        make_grid(64, 64, 32, 0, margin=8)
    assert make_grid(64, 64, 32, 1, margin=8).halo == 16      # rounded up to the grid first
