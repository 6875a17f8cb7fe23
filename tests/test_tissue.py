"""wsi_nuc.tissue: tissue masks on real and synthetic images; box fractions."""
from __future__ import annotations

import numpy as np
import pytest

from wsi_nuc.errors import InputError
from wsi_nuc.slide import open_slide
from wsi_nuc.tiling import Box
from wsi_nuc.tissue import TissueMask, detect_tissue, full_mask


def test_cmu_tissue_fraction(slides):
    with open_slide(slides / "CMU-1-Small-Region.svs") as r:
        tm = detect_tissue(r)
        info = r.info
    assert tm.mask.dtype == bool
    # the mask covers the slide
    assert tm.mask.shape[1] * tm.scale >= info.width and tm.mask.shape[0] * tm.scale >= info.height
    # measured 0.40: skin section on the right 2/3, glass on the left
    assert 0.25 < tm.fraction < 0.65
    slide_mm2 = info.width * info.height * (info.mpp / 1000) ** 2
    assert 0.25 * slide_mm2 < tm.area_mm2(info.mpp) < 0.65 * slide_mm2
    # glass at the top-left, tissue in the lower middle
    assert tm.fraction_in(Box(0, 0, 400, 400)) < 0.05
    assert tm.fraction_in(Box(2300, 1100, 2700, 1500)) > 0.9


def test_white_image_has_no_tissue(make_image):
    png = make_image("white.png", np.full((300, 400, 3), 255, np.uint8))
    with open_slide(png, mpp=0.5) as r:
        tm = detect_tissue(r)
    assert not tm.mask.any() and tm.area_mm2(0.5) == 0.0
    assert tm.fraction_in(Box(0, 0, 300, 400)) == 0.0


def test_synthetic_blob_and_borders(make_image):
    """A pink blob is tissue; a black scanner border and green pen are not."""
    img = np.full((600, 800, 3), 245, np.uint8)
    yy, xx = np.mgrid[:600, :800]
    blob = (yy - 300) ** 2 + (xx - 300) ** 2 < 150 ** 2
    img[blob] = (200, 120, 170)
    img[:, :30] = 5  # black border
    img[100:160, 550:750] = (40, 160, 60)  # green pen
    with open_slide(make_image("blob.png", img), mpp=1.0) as r:
        tm = detect_tissue(r, target_mpp=4.0, min_area_um2=1000)
    assert tm.fraction_in(Box(250, 250, 350, 350)) == 1.0
    assert tm.fraction_in(Box(0, 0, 600, 30)) == 0.0  # border
    assert tm.fraction_in(Box(110, 560, 150, 740)) == 0.0  # pen
    assert tm.fraction_in(Box(400, 650, 600, 800)) == 0.0  # glass
    blob_mm2 = blob.sum() * 1e-6
    assert tm.area_mm2(1.0) == pytest.approx(blob_mm2, rel=0.1)


def test_tiny_slide_is_sane(slides):
    with open_slide(slides / "synthetic/small.svs") as r:
        tm = detect_tissue(r)
    assert tm.mask.shape[0] * tm.scale >= 16 and tm.mask.shape[1] * tm.scale >= 16
    assert 0.0 <= tm.fraction <= 1.0


def test_detect_needs_mpp(slides):
    with open_slide(slides / "TCGA-CR-7395-01A-01-TS1-jp2k-no-mpp.svs", check=False) as r:
        with pytest.raises(InputError, match="no microns-per-pixel"):
            detect_tissue(r)


def test_fraction_in_box():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half is tissue
    tm = TissueMask(mask, scale=4.0)  # mask covers level-0 [0, 40) x [0, 40)
    assert tm.fraction_in(Box(0, 0, 40, 20)) == 1.0
    assert tm.fraction_in(Box(0, 20, 40, 40)) == 0.0
    assert tm.fraction_in(Box(10, 10, 30, 30)) == pytest.approx(0.5)
    assert tm.fraction_in(Box(0, 18, 4, 22)) == pytest.approx(0.5)  # partial mask pixels weighted
    assert tm.fraction_in_box(18, 0, 22, 4) == tm.fraction_in(Box(0, 18, 4, 22))  # the x-first form (stainnorm)
    assert tm.fraction_in(Box(0, -20, 40, 20)) == pytest.approx(0.5)  # outside counts as no tissue
    assert tm.fraction_in(Box(100, 100, 200, 200)) == 0.0
    assert tm.fraction_in(Box(5, 5, 9, 5)) == 0.0  # empty box
    assert tm.area_mm2(0.5) == pytest.approx(50 * (4 * 0.5 / 1000) ** 2)


def test_full_mask(slides):
    with open_slide(slides / "CMU-1-Small-Region.svs") as r:
        fm = full_mask(r.info)
    assert fm.mask.all()
    assert fm.mask.shape[1] * fm.scale >= 2220 and fm.mask.shape[0] * fm.scale >= 2967
    assert fm.fraction_in(Box(0, 0, 2967, 2220)) == 1.0
