"""--roi: QuPath annotation GeoJSON or a mask image limits a run to a region (real CMU slide)."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from wsi_nuc.cli import main
from wsi_nuc.errors import InputError
from wsi_nuc.roi import load_roi
from wsi_nuc.tiling import Box

W, H = 2220, 2967            # CMU-1-Small-Region level 0
INFO = SimpleNamespace(width=W, height=H)
# a QuPath-style export: a square annotation with a hole, and a second square (a MultiPolygon feature)
OUTER = [[300, 1200], [1500, 1200], [1500, 2200], [300, 2200], [300, 1200]]
HOLE = [[700, 1500], [1000, 1500], [1000, 1800], [700, 1800], [700, 1500]]
SECOND = [[1600, 200], [1900, 200], [1900, 500], [1600, 500], [1600, 200]]


def qupath_roi(path):
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a1", "geometry": {"type": "MultiPolygon", "coordinates": [[OUTER, HOLE], [SECOND]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}]}
    path.write_text(json.dumps(doc))
    return path


def mask_of_roi(path, down: int):
    """The same region as a mask image at 1:down (pixel centres inside)."""
    h, w = -(-H // down), -(-W // down)
    roi = load_roi(qupath_roi(path.with_suffix(".geojson")), INFO)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = roi.contains((xx + 0.5) * W / w, (yy + 0.5) * H / h)
    Image.fromarray(inside.astype(np.uint8) * 255).save(path)
    return path


def test_polygons_holes_and_multipolygons(tmp_path):
    roi = load_roi(qupath_roi(tmp_path / "roi.geojson"), INFO)
    assert roi.area_px == pytest.approx(1200 * 1000 - 300 * 300 + 300 * 300)
    x = np.array([400, 850, 1700, 100, 1500])
    y = np.array([1300, 1650, 300, 100, 2200])
    assert roi.contains(x, y).tolist() == [True, False, True, False, True]   # hole out, boundary in
    assert roi.meets(Box(100, 1550, 250, 1650)) and not roi.meets(Box(0, 0, 200, 200))
    assert not roi.meets(Box(1550, 750, 1750, 950))                          # inside the hole
    assert roi.area_mm2(0.499) == pytest.approx(roi.area_px * 0.499 ** 2 / 1e6)


def test_mask_at_a_downsample_matches_the_polygons(tmp_path):
    poly = load_roi(qupath_roi(tmp_path / "roi.geojson"), INFO)
    m = load_roi(mask_of_roi(tmp_path / "roi.png", 8), INFO)
    assert m.mask.shape == (-(-H // 8), -(-W // 8))
    assert m.area_px == pytest.approx(poly.area_px, rel=0.03)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, W, 5000), rng.uniform(0, H, 5000)
    agree = (poly.contains(x, y) == m.contains(x, y)).mean()
    assert agree > 0.98


def _bad_rois(tmp_path):
    (tmp_path / "empty.geojson").write_text("")
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    (tmp_path / "points.geojson").write_text(json.dumps(
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}))
    (tmp_path / "outside.geojson").write_text(json.dumps(
        {"type": "Polygon", "coordinates": [[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]]}))
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "square.png")
    Image.fromarray(np.zeros((371, 278), np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    return [("missing.geojson", "not found"), ("empty.geojson", "empty"), ("broken.geojson", "JSON"),
            ("points.geojson", "no Polygon"), ("outside.geojson", "outside the slide"),
            ("square.png", "aspect"), ("blank.png", "empty"), ("garbage.png", "cannot be read")]


def test_bad_roi_files_exit_2_with_one_line(slides, tmp_path, capsys):
    for name, needle in _bad_rois(tmp_path):
        code = main(["run", str(slides / "CMU-1-Small-Region.svs"), "--out", str(tmp_path / "out"),
                     "--roi", str(tmp_path / name), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        assert len(err.splitlines()) == 1 and name in err and needle in err, (name, err)
        with pytest.raises(InputError):
            load_roi(tmp_path / name, INFO)
    assert not (tmp_path / "out" / "CMU-1-Small-Region").exists()


@pytest.fixture(scope="module")
def client():
    from wsi_nuc.cluster import dask_client

    with dask_client(workers=1) as c:
        yield c


def test_run_limited_to_a_region(slides, tmp_path, client):
    from wsi_nuc.pipeline import RunSettings, run_slide

    roi_path = qupath_roi(tmp_path / "roi.geojson")
    s = run_slide(slides / "CMU-1-Small-Region.svs", tmp_path / "a", RunSettings(quiet=True, roi=str(roi_path)),
                  client=client)
    full_tiles = 21                                        # README / test_run: CMU at 512-px tiles
    assert 0 < s["tiles"]["count"] < full_tiles
    roi = load_roi(roi_path, INFO)
    with open(tmp_path / "a" / "CMU-1-Small-Region" / "nuclei.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == s["nucleus_count"] > 100
    x = np.array([float(r["centroid_x_px"]) for r in rows])
    y = np.array([float(r["centroid_y_px"]) for r in rows])
    assert roi.contains(x, y).all()
    in_hole = (x > 700) & (x < 1000) & (y > 1500) & (y < 1800)
    assert not in_hole.any()
    r = s["roi"]
    assert r["area_mm2"] == pytest.approx(roi.area_px * 0.499 ** 2 / 1e6, rel=0.01)
    assert r["nuclei_per_mm2"] == pytest.approx(s["nucleus_count"] / r["area_mm2"], rel=1e-3)
    assert 0 < r["tissue_area_mm2"] <= r["area_mm2"] + 1e-6 and s["tissue_area_mm2"] == r["tissue_area_mm2"]
    # the same region as a 1:8 mask finds nearly the same nuclei
    m = run_slide(slides / "CMU-1-Small-Region.svs", tmp_path / "b",
                  RunSettings(quiet=True, roi=str(mask_of_roi(tmp_path / "roi.png", 8))), client=client)
    assert m["roi"]["kind"] == "mask"
    assert m["nucleus_count"] == pytest.approx(s["nucleus_count"], rel=0.03)


def test_cohort_csv_roi_column(tmp_path, slides):
    from wsi_nuc import cohort as C
    from wsi_nuc.cohort.resume import _slide_roi

    (tmp_path / "rois").mkdir()
    (tmp_path / "c.csv").write_text(f"path,roi\n{slides / 'CMU-1-Small-Region.svs'},rois/cmu.geojson\n"
                                    f"{slides / 'OS-1-detail.ome.tif'},\n")
    c = C.read_cohort(tmp_path / "c.csv")
    assert c.slides[0].extra["roi"] == str(tmp_path / "rois" / "cmu.geojson")
    assert _slide_roi(c.slides[1], SimpleNamespace(roi=None)) is None
