"""Shared test fixtures: the real slides in ../shared, and tiny images written into tmp_path."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder next to the repo (or $WSI_NUC_SHARED); skip when absent."""
    p = Path(os.environ.get("WSI_NUC_SHARED", REPO.parent / "shared"))
    if not p.is_dir():
        pytest.skip(f"shared data folder not found: {p}")
    return p


@pytest.fixture(scope="session")
def slides(shared) -> Path:
    """``shared/slides`` (see its README.md); skip when absent."""
    p = shared / "slides"
    if not p.is_dir():
        pytest.skip(f"slides folder not found: {p}")
    return p


def write_image(path: Path, array: np.ndarray, *, dpi: float | None = None, tile: int | None = None,
                mpp: float | None = None) -> Path:
    """Write ``array`` (h, w[, c]) uint8 as a plain image chosen by the suffix.

    .png/.jpg/.bmp via Pillow (``dpi`` sets the pHYs/JFIF density); .tif/.tiff via tifffile
    (``tile`` makes it tiled; ``mpp`` writes resolution tags in centimetres).
    """
    path = Path(path)
    arr = np.asarray(array)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        kw = {}
        if tile:
            kw["tile"] = (tile, tile)
        if mpp:
            kw["resolution"] = (1e4 / mpp, 1e4 / mpp)
            kw["resolutionunit"] = "CENTIMETER"
        tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 and arr.shape[2] in (3, 4) else None, **kw)
    else:
        from PIL import Image

        kw = {"dpi": (dpi, dpi)} if dpi else {}
        if path.suffix.lower() in (".jpg", ".jpeg"):
            kw["quality"] = 95
        Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture
def make_image(tmp_path):
    """``make_image(name, array, **kw)`` writes a tiny image into tmp_path; see write_image."""

    def make(name: str, array: np.ndarray, **kw) -> Path:
        return write_image(tmp_path / name, array, **kw)

    return make


@pytest.fixture(scope="module")
def monuseg_tile(shared):
    """One real MoNuSeg val tile: (rgb uint8, instance labels int32, ids > 0)."""
    import tifffile
    from PIL import Image

    data = shared / "data" / "monuseg2018-train"
    stem = "TCGA-21-5784-01Z-00-DX1"
    img_p, lab_p = data / "images" / f"{stem}.png", data / "labels" / f"{stem}.tif"
    if not (img_p.exists() and lab_p.exists()):
        pytest.skip("MoNuSeg data not present")
    rgb = np.asarray(Image.open(img_p).convert("RGB"))
    labels = tifffile.imread(lab_p).astype(np.int32)
    ids = np.unique(labels)
    return rgb, labels, ids[ids > 0]


@pytest.fixture
def captured_settings(monkeypatch) -> list:
    """`run` and `batch` with the slide work replaced: the RunSettings each CLI call built, in order."""
    import wsi_nuc.cohort as cohort
    import wsi_nuc.pipeline as pipeline

    got = []
    monkeypatch.setattr(pipeline, "run_slide", lambda path, out, st: got.append(st) or
                        {"seconds": {"total": 0}, "nucleus_count": 0, "tissue_area_mm2": 0, "output": ""})

    class Res:
        rows, seconds, manifest, exit_code = [], 0.0, "", 0

        def count(self, _):
            return 0

    monkeypatch.setattr(cohort, "run_cohort", lambda c, o, st, **kw: got.append(st) or Res())
    return got
