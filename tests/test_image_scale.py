"""Scale estimation for images of unknown mpp (wsi_nuc.scale and eval's use of it)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wsi_nuc.scale import estimate_mpp, median_area_px, median_area_um2


def disks(n: int, radius: float, size: int = 400) -> np.ndarray:
    """n non-overlapping disks of one radius on a grid, labelled 1..n."""
    lab = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    step = int(2 * radius + 4)
    k = 0
    for cy in range(step // 2, size - step // 2, step):
        for cx in range(step // 2, size - step // 2, step):
            if k == n:
                return lab
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return lab


def test_median_areas_on_hand_made_labels():
    lab = np.zeros((10, 10), np.int32)
    lab[0, :3] = 1          # 3 px
    lab[2:4, :2] = 2        # 4 px
    lab[5:8, 5:8] = 5       # 9 px (id 3, 4 absent)
    assert median_area_px(lab) == 4.0
    assert median_area_px(np.zeros((4, 4), np.int32)) is None
    assert median_area_um2([lab, lab], 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        median_area_um2([np.zeros((3, 3), np.int32)], 0.5)


def test_estimate_mpp_known_answers():
    lab = disks(30, 8.0)                       # median area a, taken as 0.5 um/px pixels
    a = median_area_px(lab)
    # nuclei four times the training area in pixels: the image is twice as fine as the working scale
    assert estimate_mpp(lab, 0.5, a * 0.25 / 4) == pytest.approx(0.25)
    assert estimate_mpp(lab, 0.5, a * 0.25) == 0.5               # matches: the working scale itself
    assert estimate_mpp(lab, 0.5, a * 0.25 * 1.1) == 0.5         # within the 10 % tolerance
    assert estimate_mpp(lab, 0.5, a * 0.25 / 100) == 0.125       # clamped at working / 4
    assert estimate_mpp(lab, 0.5, a * 0.25 * 100) == 1.0         # clamped at working * 2
    assert estimate_mpp(disks(4, 8.0), 0.5, 1.0) == 0.5          # too few nuclei: no evidence


def test_eval_estimates_the_scale_of_a_40x_tile_without_mpp(shared, tmp_path):
    """A 40x MoNuSeg val tile given without its mpp: the estimate lands near 0.25 um/px and scores
    better than reading its pixels as working (0.5 um/px) pixels."""
    from wsi_nuc.evaluate import evaluate

    data = shared / "data" / "monuseg2018-train"
    meta = json.loads((data / "dataset.json").read_text())
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    stem = meta["split"]["val"][0]
    shutil.copy(data / "images" / f"{stem}.png", ds / "images")
    shutil.copy(data / "labels" / f"{stem}.tif", ds / "labels")
    (ds / "dataset.json").write_text(json.dumps({"name": "no-scale", "mpp": None}))
    auto = evaluate(ds, "he-student-int8", device="cpu")
    native = evaluate(ds, "he-student-int8", device="cpu", auto_scale=False)
    img = auto["images"][0]
    assert img["mpp_source"] == "estimated" and 0.18 < img["mpp"] < 0.35
    assert native["images"][0]["mpp_source"] == "native"
    assert auto["aggregate"]["aji"] > native["aggregate"]["aji"] + 0.05


def test_a_models_scale_rule_comes_from_its_sources_of_known_scale(shared):
    """MoNuSeg gives its scale; NuInsSeg's is estimated and DSB has none. The scale rule written into a
    trained model (loop.model_meta) is the median nucleus of MoNuSeg alone, not of the pool."""
    from wsi_nuc.train.loop import model_meta
    from wsi_nuc.train.driver import TrainData
    from wsi_nuc.train.sources import load_source

    d = shared / "data"
    specs = [{"path": str(d / "monuseg2018-train")}, {"path": str(d / "nuinsseg-train")},
             {"path": str(d / "dsb2018-stage1-train"), "modality": "colour_brightfield"}]
    srcs = [load_source({"weight": 1, "modality": None, "type_bounds": None, **s}, "val", 0.5) for s in specs]
    assert [s.scale_known for s in srcs] == [True, False, False]
    monuseg = median_area_um2([s.labels for s in srcs[0].samples], 0.5)
    pooled = median_area_um2([s.labels for src in srcs for s in src.samples], 0.5)
    assert abs(pooled - monuseg) > 1.0          # the rule would move if the pool set it
    cfg = {"data": {"mpp": 0.5, "roots": specs}, "model": {"base": 16}}
    meta = model_meta(cfg, TrainData(train=srcs, val=[], norm=None, stain=None))
    assert meta["nucleus_area_um2"] == pytest.approx(round(monuseg, 2))
