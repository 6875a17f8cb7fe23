"""Per-nucleus measurements: real MoNuSeg tile plus small synthetic checks of the conventions."""
from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.measure import regionprops

from wsi_nuc.morphometry import COLUMNS, measure_nuclei

MEAS = [c for c in COLUMNS if c != "nucleus_id"]


@pytest.fixture(scope="module")
def tile(monuseg_tile):
    return monuseg_tile


def test_real_tile_columns(tile):
    rgb, labels, ids = tile
    mpp_work, level0 = 0.5, 0.25  # f = 2
    origin = (1000.0, 3000.0)
    m = measure_nuclei(labels, rgb, ids, mpp_work, level0, origin_xy=origin)
    assert set(m) == set(MEAS)
    assert all(v.shape == (len(ids),) for v in m.values())

    counts = np.bincount(labels.ravel(), minlength=ids.max() + 1)[ids]
    np.testing.assert_allclose(m["area_um2"], counts * mpp_work ** 2)
    assert np.all(m["circularity"] > 0) and np.all(m["circularity"] <= 1)
    assert np.all((m["solidity"] > 0) & (m["solidity"] <= 1))
    assert np.all((m["eccentricity"] >= 0) & (m["eccentricity"] <= 1))
    assert np.all(m["major_axis_um"] >= m["minor_axis_um"])
    assert np.all(np.isnan(m["confidence"]))

    # haematoxylin: positive, and nuclei darker in H than the background
    from wsi_nuc.stain import haematoxylin_od

    assert np.all(m["mean_h_od"] > 0)
    bg_h = haematoxylin_od(rgb / 255.0)[labels == 0].mean()
    assert np.median(m["mean_h_od"]) > bg_h

    # centroid conversion with a non-zero origin and f = 2
    f = mpp_work / level0
    for k in (0, len(ids) // 2, len(ids) - 1):
        rr, cc = np.nonzero(labels == ids[k])
        x = origin[0] + (cc.mean() + 0.5) * f
        y = origin[1] + (rr.mean() + 0.5) * f
        assert m["centroid_x_px"][k] == pytest.approx(x)
        assert m["centroid_y_px"][k] == pytest.approx(y)
        assert m["centroid_x_um"][k] == pytest.approx(x * level0)
        assert m["centroid_y_um"][k] == pytest.approx(y * level0)
        assert m["mean_r"][k] == pytest.approx(rgb[rr, cc, 0].mean())

    # shape features agree with skimage regionprops
    props = {r.label: r for r in regionprops(labels)}
    sub = ids[::25]
    pos = np.searchsorted(ids, sub)
    for name, attr in [("perimeter_um", "perimeter"), ("major_axis_um", "axis_major_length"),
                       ("minor_axis_um", "axis_minor_length"), ("solidity", "solidity"),
                       ("eccentricity", "eccentricity"), ("orientation_deg", "orientation")]:
        ref = np.array([getattr(props[i], attr) for i in sub])
        if name.endswith("_um"):
            ref = ref * mpp_work
        if name == "orientation_deg":
            ref = np.degrees(ref)
        np.testing.assert_allclose(m[name][pos], ref, atol=1e-6, err_msg=name)


def test_row_order_follows_ids_and_large_ids(tile):
    rgb, labels, ids = tile
    sub = ids[:40][::-1]
    a = measure_nuclei(labels, rgb, sub, 0.5, 0.25)
    # the same nuclei carried as huge global ids (forces the compacting path)
    big = np.where(labels > 0, labels.astype(np.int64) + 10_000_000_000, 0)
    b = measure_nuclei(big, rgb, sub.astype(np.int64) + 10_000_000_000, 0.5, 0.25)
    for k in MEAS:
        np.testing.assert_allclose(a[k], b[k], equal_nan=True, err_msg=k)
    full = measure_nuclei(labels, rgb, ids, 0.5, 0.25)
    pos = np.searchsorted(ids, sub)
    np.testing.assert_allclose(a["area_um2"], full["area_um2"][pos])


def test_orientation_convention_and_confidence():
    lab = np.zeros((80, 120), np.int32)
    rr, cc = ellipse(40, 30, 8, 20)          # elongated along x (columns)
    lab[rr, cc] = 1
    rr, cc = ellipse(40, 90, 20, 6)          # elongated along y (rows)
    lab[rr, cc] = 2
    rgb = np.full(lab.shape + (3,), 200, np.uint8)
    conf = np.where(lab == 1, 0.25, 0.75)
    m = measure_nuclei(lab, rgb, [1, 2, 7], 1.0, 1.0, confidence=conf)
    assert abs(m["orientation_deg"][0]) == pytest.approx(90, abs=1)
    assert m["orientation_deg"][1] == pytest.approx(0, abs=1)
    assert m["major_axis_um"][0] == pytest.approx(40, rel=0.05)
    assert m["minor_axis_um"][0] == pytest.approx(16, rel=0.1)
    np.testing.assert_allclose(m["confidence"][:2], [0.25, 0.75])
    # an id that is not in the tile: area 0, everything else NaN
    assert m["area_um2"][2] == 0 and np.isnan(m["centroid_x_px"][2]) and np.isnan(m["confidence"][2])


def test_empty_ids():
    lab = np.zeros((16, 16), np.int32)
    m = measure_nuclei(lab, np.zeros((16, 16, 3), np.uint8), [], 0.5, 0.25)
    assert set(m) == set(MEAS)
    assert all(len(v) == 0 for v in m.values())


def test_speed_1000_nuclei():
    lab = np.zeros((1024, 1024), np.int32)
    k = 0
    for r in range(16, 1024, 32):
        for c in range(16, 1024, 32):
            k += 1
            rr, cc = ellipse(r, c, 9 + (k % 4), 12 - (k % 3), shape=lab.shape, rotation=k * 0.3)
            lab[rr, cc] = k
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, lab.shape + (3,), dtype=np.uint8)
    ids = np.arange(1, k + 1)
    measure_nuclei(lab[:64, :64], rgb[:64, :64], ids[:4], 0.5, 0.25)  # warm-up imports
    t = time.perf_counter()
    m = measure_nuclei(lab, rgb, ids, 0.5, 0.25)
    dt = time.perf_counter() - t
    assert len(m["area_um2"]) == 1024
    assert dt < 3.0, f"{dt:.2f} s for 1024 nuclei"  # ~0.5 s on a loaded 2-core box; loose bound
