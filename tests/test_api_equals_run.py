"""The Python API gives the nuclei `wsi-nuc run` gives on the same pixels (real CMU slide), and cohort
summaries read Parquet tables as they read CSV ones."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

import wsi_nuc
from wsi_nuc.metrics_types import detection_f1, match_centroids


@pytest.fixture(scope="module")
def cmu_run(slides, tmp_path_factory):
    """`wsi-nuc run` on the whole CMU region with both tables (once for this module)."""
    out = tmp_path_factory.mktemp("cmu")
    s = wsi_nuc.run_slide(slides / "CMU-1-Small-Region.svs", out, quiet=True, table="both")
    return s, out / "CMU-1-Small-Region"


def _csv_columns(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows


def _centroid_f1(a_xy, b_xy, radius=2.0):
    tp_idx, _, _ = match_centroids(a_xy[:, ::-1], b_xy[:, ::-1], radius)
    tp = len(tp_idx)
    return detection_f1(tp, len(b_xy) - tp, len(a_xy) - tp)


def test_segment_image_on_the_whole_cmu_region_equals_run(slides, cmu_run):
    import openslide

    s, folder = cmu_run
    with openslide.OpenSlide(str(slides / "CMU-1-Small-Region.svs")) as sl:
        rgb = np.asarray(sl.read_region((0, 0), 0, sl.dimensions).convert("RGB"))
    labels, table = wsi_nuc.segment_image(rgb, mpp=s["slide"]["mpp"])
    rows = _csv_columns(folder / "nuclei.csv")
    run_xy = np.array([[float(r["centroid_x_px"]), float(r["centroid_y_px"])] for r in rows])
    api_xy = np.stack([table["centroid_x_px"], table["centroid_y_px"]], 1)
    f1 = _centroid_f1(run_xy, api_xy)
    assert f1 >= 0.98, f1
    assert len(table["nucleus_id"]) == pytest.approx(s["nucleus_count"], rel=0.01)
    # types, confidence and outlines come back, as in the slide outputs
    n = len(table["nucleus_id"])
    named = set(table["type"]) - {""}                    # "": a nucleus left untyped (not confident), as in nuclei.csv
    assert named <= {"other", "inflammatory", "epithelial", "spindle-shaped"} and len(named) >= 2
    assert list(table["type"]) == [r["type"] for r in rows]    # the same types, nucleus for nucleus
    assert np.isfinite(table["type_prob"]).all() and np.isfinite(table["confidence"]).all()
    assert ((table["confidence"] > 0.3) & (table["confidence"] <= 1)).all()
    assert len(table["outline"]) == n and all(o.ndim == 2 and o.shape[1] == 2 and len(o) >= 3 for o in table["outline"])
    assert set(np.unique(labels)) - {0} <= set(table["nucleus_id"].tolist()) and labels.shape == rgb.shape[:2]
    # the outline holds its centroid's pixel (level-0, the image's own pixels)
    i = n // 2
    o = table["outline"][i]
    assert o[:, 0].min() <= table["centroid_x_px"][i] <= o[:, 0].max()
    # the table's columns are nuclei.csv's (less the slide name), plus the outline
    assert set(table) == (set(rows[0]) - {"slide"}) | {"outline"}
    print(f"segment_image vs run on CMU: centroid F1 {f1:.4f}, {n} vs {s['nucleus_count']} nuclei")


@pytest.mark.slow
def test_a_crop_with_the_slides_stain_and_origin_is_in_slide_coordinates(slides, cmu_run):
    import openslide

    s, folder = cmu_run
    x0, y0, w, h = 600, 900, 1024, 1024
    with openslide.OpenSlide(str(slides / "CMU-1-Small-Region.svs")) as sl:
        rgb = np.asarray(sl.read_region((x0, y0), 0, (w, h)).convert("RGB"))
    stain = wsi_nuc.slide_stain(slides / "CMU-1-Small-Region.svs")
    assert stain == s["stain_normalisation"]["slide"]        # as the run took them
    _, table = wsi_nuc.segment_image(rgb, mpp=s["slide"]["mpp"], stain=stain, origin=(x0, y0))
    rows = _csv_columns(folder / "nuclei.csv")
    run_xy = np.array([[float(r["centroid_x_px"]), float(r["centroid_y_px"])] for r in rows])
    inner = (run_xy[:, 0] > x0 + 140) & (run_xy[:, 0] < x0 + w - 140) & (run_xy[:, 1] > y0 + 140) & (run_xy[:, 1] < y0 + h - 140)
    api_xy = np.stack([table["centroid_x_px"], table["centroid_y_px"]], 1)
    a_in = (api_xy[:, 0] > x0 + 140) & (api_xy[:, 0] < x0 + w - 140) & (api_xy[:, 1] > y0 + 140) & (api_xy[:, 1] < y0 + h - 140)
    f1 = _centroid_f1(run_xy[inner], api_xy[a_in])
    assert inner.sum() > 300 and f1 >= 0.99, f1          # the same nuclei, away from the crop's edges
    assert table["outline"][0][:, 0].min() >= x0 - 1            # outlines in slide coordinates too


def test_api_errors_speak_api_terms():
    rgb = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(ValueError, match=r"mpp=5 µm/px is outside 0.1-2: too coarse"):
        wsi_nuc.segment_image(rgb, mpp=5)
    with pytest.raises(ValueError, match="device must be"):
        wsi_nuc.segment_image(rgb, mpp=0.5, device="gpu")
    with pytest.raises(ValueError, match="stain: not a set of stain statistics"):
        wsi_nuc.segment_image(rgb, mpp=0.5, stain={"mean": [1, 2]}, tissue_detection=False)
    from wsi_nuc.api import _api_terms

    msg = _api_terms("--device cuda: no CUDA device is available here (use --device cpu)")
    assert "--" not in msg and "device=cuda" in msg and "device=cpu" in msg


def test_cohort_summary_from_parquet_as_from_csv(cmu_run, tmp_path):
    """`batch --table parquet` writes no nuclei.csv: the median/IQR columns come from nuclei.parquet."""
    from types import SimpleNamespace

    from wsi_nuc.cohort.manifest import _morph_row, slide_morphometry, slide_table

    s, folder = cmu_run
    from_csv = slide_morphometry(folder / "nuclei.csv")
    from_parquet = slide_morphometry(folder / "nuclei.parquet")
    assert from_csv.keys() == from_parquet.keys() and all(v is not None for v in from_parquet.values())
    for k in from_csv:
        assert from_parquet[k] == pytest.approx(from_csv[k], abs=1e-3), k
    only = tmp_path / "CMU-1-Small-Region"
    only.mkdir()
    shutil.copy(folder / "nuclei.parquet", only)
    assert slide_table(only).name == "nuclei.parquet"
    said = []
    row = _morph_row(SimpleNamespace(stem="CMU-1-Small-Region"), tmp_path, s, SimpleNamespace(message=said.append))
    assert not said and row["area_um2_median"] == pytest.approx(from_csv["area_um2_median"], abs=1e-3)


@pytest.mark.slow
def test_batch_table_parquet_fills_the_cohort_summary(slides, tmp_path):
    """The real command: `wsi-nuc batch --table parquet` on two slides; every median/IQR cell filled."""
    from wsi_nuc.cli import main

    cohort = tmp_path / "c.csv"
    cohort.write_text(f"path\n{slides / 'CMU-1-Small-Region.svs'}\n{slides / 'OS-1-detail.ome.tif'}\n")
    assert main(["batch", str(cohort), "--out", str(tmp_path / "out"), "--table", "parquet", "--quiet",
                 "--workers", "1"]) == 0
    rows = _csv_columns(tmp_path / "out" / "cohort_summary.csv")
    assert len(rows) == 2
    for r in rows:
        for k in ("area_um2_median", "area_um2_iqr", "circularity_median", "mean_h_od_iqr"):
            assert r[k] not in ("", None) and float(r[k]) > 0, (r["slide"], k)
    assert not (tmp_path / "out" / "CMU-1-Small-Region" / "nuclei.csv").exists()
    assert json.loads((tmp_path / "out" / "CMU-1-Small-Region" / "summary.json").read_text())["outputs"][0]


@pytest.mark.slow
def test_the_readme_notebook_recipe_runs_as_written():
    """The README's recipe (the block after `<!-- recipe -->`), run from the repository root as it says."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "README.md").read_text()
    block = text.split("<!-- recipe -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    r = subprocess.run([sys.executable, "-c", block], cwd=repo, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    first = r.stdout.splitlines()[0]
    assert first.endswith("µm²") and int(first.split()[0]) > 300, r.stdout
