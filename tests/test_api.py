"""The Python API on real data: a MoNuSeg tile in memory, and the CMU slide."""
from __future__ import annotations

import numpy as np
import pytest

import wsi_nuc


def test_segment_image_on_a_real_tile(monuseg_tile):
    from wsi_nuc.metrics import f1_at

    rgb, gt, _ = monuseg_tile
    labels, table = wsi_nuc.segment_image(rgb, mpp=0.25)
    assert labels.shape == gt.shape and labels.dtype == np.int32
    n = len(table["nucleus_id"])
    assert n > 200 and table["nucleus_id"].tolist() == list(range(1, n + 1))
    drawn = set(np.unique(labels)) - {0}
    assert drawn <= set(range(1, n + 1)) and len(drawn) >= 0.98 * n
    assert all(len(v) == n for v in table.values())
    # areas measured as run measures them (working pixels at 0.5 µm/px), close to the drawn labels' areas
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    ok = counts > 0
    assert np.median(table["area_um2"][ok] / (counts[ok] * 0.25 ** 2)) == pytest.approx(1.0, abs=0.1)
    assert table["area_um2"].min() >= 3.0
    # centroids in the image's pixels (pixel centres at +0.5)
    i = n // 2
    ys, xs = np.nonzero(labels == i + 1)
    assert table["centroid_x_px"][i] == pytest.approx(xs.mean() + 0.5, abs=1.5)
    assert f1_at(labels.astype(np.int64), gt.astype(np.int64), 0.5) > 0.6


def test_segment_image_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        wsi_nuc.segment_image(np.zeros((8, 8)), mpp=0.5)
    with pytest.raises(ValueError, match="mpp"):
        wsi_nuc.segment_image(np.zeros((8, 8, 3), np.uint8), mpp=0)


def test_run_slide_api(slides, tmp_path):
    s = wsi_nuc.run_slide(slides / "OS-1-detail.ome.tif", tmp_path, quiet=True, workers=1, table="parquet")
    assert s["nucleus_count"] > 50 and (tmp_path / "OS-1-detail" / "nuclei.parquet").exists()
    assert s["output"].endswith("OS-1-detail")
    with pytest.raises(TypeError, match="tilesize"):
        wsi_nuc.run_slide(slides / "OS-1-detail.ome.tif", tmp_path, tilesize=3)
