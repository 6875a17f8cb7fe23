"""Reinhard stain normalisation (wsi_nuc.stainnorm) on hand-made colours and real H&E images."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wsi_nuc.stainnorm import (LabStats, lab_stats, lab_to_rgb, normalise, normalise_exact, rgb_to_lab,
                               stain_pixels)


def test_lab_conversion_matches_skimage_and_round_trips():
    from skimage.color import lab2rgb, rgb2lab

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    lab = rgb_to_lab(rgb)
    assert np.abs(lab - rgb2lab(rgb)).max() < 1e-3
    assert np.abs(lab_to_rgb(lab) - lab2rgb(rgb2lab(rgb))).max() < 1e-4
    assert np.abs(np.round(lab_to_rgb(lab) * 255) - rgb).max() == 0
    white = rgb_to_lab(np.full((1, 1, 3), 255, np.uint8))[0, 0]
    assert white == pytest.approx([100.0, 0.0, 0.0], abs=1e-2)


def test_statistics_skip_background_and_identity_normalisation():
    img = np.full((10, 10, 3), 250, np.uint8)     # glass
    img[:5] = (120, 60, 160)                      # tissue: half the image
    px = stain_pixels(img)
    assert len(px) == 50 and (px == (120, 60, 160)).all()
    assert len(stain_pixels(np.full((10, 10, 3), 250, np.uint8))) == 100   # all glass: keep everything
    s = lab_stats(img)
    assert s.std == pytest.approx((0, 0, 0), abs=1e-3)
    assert LabStats.from_dict(s.to_dict()).mean == pytest.approx(s.mean, abs=1e-4)
    with pytest.raises(ValueError):
        LabStats.from_dict({"method": "macenko", "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert LabStats.from_dict(None) is None
    rgb = np.random.default_rng(1).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    st = lab_stats(rgb)
    assert np.abs(normalise(rgb, st, st).astype(int) - rgb).max() <= 1


def test_normalise_moves_a_foreign_stain_onto_the_target(shared):
    """A purple DSB H&E-like image takes on the MoNuSeg image's statistics."""
    from PIL import Image

    mon = shared / "data" / "monuseg2018-train"
    dsb = shared / "data" / "dsb2018-stage1-train"
    meta = json.loads((dsb / "dataset.json").read_text())
    stem = next(k for k, v in sorted(meta["images"].items()) if v["modality"] == "colour_brightfield")
    src = np.asarray(Image.open(dsb / "images" / f"{stem}.png").convert("RGB"))
    ref_stem = json.loads((mon / "dataset.json").read_text())["split"]["train"][0]
    ref = np.asarray(Image.open(mon / "images" / f"{ref_stem}.png").convert("RGB"))
    target, before = lab_stats(ref), lab_stats(src)
    after = lab_stats(normalise(src, before, target))
    gap = lambda a, b: np.abs(np.subtract(a.mean, b.mean)).max()  # noqa: E731
    assert gap(before, target) > 5
    assert gap(after, target) < 2.5
    assert np.abs(np.subtract(after.std, target.std)).max() < 2.5


def test_table_path_agrees_with_the_formulas():
    rgb = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    src = LabStats((60.0, 20.0, -5.0), (25.0, 12.0, 9.0))
    dst = LabStats((52.0, 29.0, -13.0), (18.0, 9.6, 8.2))
    fast, exact = normalise(rgb, src, dst), normalise_exact(rgb, src, dst)
    assert fast.dtype == np.uint8 and fast.shape == rgb.shape
    assert np.abs(fast.astype(int) - exact).max() <= 1 and (fast != exact).mean() < 0.01


def test_normalise_reads_and_writes_any_memory_layout(shared):
    """A batch in another memory order (a channels-first tensor permuted to channels-last, as a distillation
    teacher's input map hands it over) is recoloured exactly as its C-order copy. Before the fix the strips
    were written into a reshaped copy and the result was uninitialised memory."""
    from PIL import Image

    mon = shared / "data" / "monuseg2018-train"
    stem = json.loads((mon / "dataset.json").read_text())["split"]["val"][0]
    rgb = np.asarray(Image.open(mon / "images" / f"{stem}.png").convert("RGB"))[:192, :160]
    batch = np.stack([rgb, rgb[::-1], rgb[:, ::-1]])
    permuted = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)   # B, H, W, 3 view
    assert not permuted.flags.c_contiguous and (permuted == batch).all()
    src, dst = lab_stats(rgb), LabStats((43.8, 23.5, -10.2), (17.6, 10.8, 10.2))
    want = normalise(batch, src, dst)
    for view in (permuted, batch[:, ::2, ::3], np.asfortranarray(rgb)):
        got = normalise(view, src, dst)
        assert got.shape == view.shape
        assert (got == normalise(np.ascontiguousarray(view), src, dst)).all()
    assert (normalise(permuted, src, dst) == want).all()


def test_slide_stats_fall_back_to_slivers_and_need_tissue(slides):
    """A slide whose tissue is a thin strip still gets statistics; one with no tissue gets none."""
    from wsi_nuc.slide import open_slide
    from wsi_nuc.stainnorm import slide_stats
    from wsi_nuc.tissue import TissueMask

    with open_slide(slides / "CMU-1-Small-Region.svs") as r:
        w, h = r.info.width, r.info.height
        mask = np.zeros((h // 32, w // 32), bool)
        mask[:, mask.shape[1] // 2] = True            # one mask column: 32 level-0 px wide
        st = slide_stats(r, TissueMask(mask, 32.0), 1.0, h, w)
        assert st is not None and all(s > 0 for s in st.std)
        assert slide_stats(r, TissueMask(np.zeros_like(mask), 32.0), 1.0, h, w) is None
