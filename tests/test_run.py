"""`wsi-nuc run` end to end on real slides: outputs agree, tiles are seam-free, bad input exits 2."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from wsi_nuc.cli import main
from wsi_nuc.pipeline import OUTPUT_FILES, RunSettings, run_slide


@pytest.fixture(scope="module")
def client():
    from wsi_nuc.cluster import dask_client

    with dask_client(workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def cmu_runs(slides, tmp_path_factory, client):
    """CMU-1-Small-Region segmented with 256-px and 1024-px tiles."""
    out = {}
    for tile in (256, 1024):
        d = tmp_path_factory.mktemp(f"tile{tile}")
        summary = run_slide(slides / "CMU-1-Small-Region.svs", d, RunSettings(tile=tile, quiet=True), client=client)
        out[tile] = (d / "CMU-1-Small-Region", summary)
    return out


def read_zarr(folder):
    import zarr

    return np.asarray(zarr.open_group(str(folder / "nuclei.ome.zarr" / "labels" / "nuclei"), mode="r")["0"][:])


def test_outputs_exist_and_summary(cmu_runs):
    folder, summary = cmu_runs[256]
    for name in OUTPUT_FILES:
        assert (folder / name).exists(), name
    s = json.loads((folder / "summary.json").read_text())
    assert s["slide"]["reader"] == "openslide" and s["slide"]["width"] == 2220
    assert s["nucleus_count"] > 1000
    assert 0.2 < s["tissue_area_mm2"] < 1.64
    assert s["nuclei_per_mm2"] == pytest.approx(s["nucleus_count"] / s["tissue_area_mm2"], rel=1e-3)
    assert {"segment", "stitch", "write_geojson", "total"} <= set(s["seconds"])
    assert s["model"]["name"] and s["software"]["wsi_nuc"]
    # the default model normalises stain: one set of slide statistics, whatever the tile size
    sn = s["stain_normalisation"]
    assert sn["target"]["method"] == "reinhard-lab" and len(sn["slide"]["mean"]) == 3
    assert sn["slide"] != sn["target"] and all(v > 0 for v in sn["slide"]["std"])
    other = json.loads((cmu_runs[1024][0] / "summary.json").read_text())
    assert other["stain_normalisation"]["slide"] == sn["slide"]


def test_geojson_csv_zarr_agree(cmu_runs):
    from shapely.geometry import shape

    folder, summary = cmu_runs[256]
    gj = json.loads((folder / "nuclei.geojson").read_text())
    feats = gj["features"]
    ids = [f["properties"]["measurements"]["nucleus_id"] for f in feats]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) == summary["nucleus_count"]
    from wsi_nuc import types as T

    for f in feats:   # a typed nucleus: its type's name and fixed colour; an untyped one: plain Nucleus
        p = f["properties"]
        name = p.get("classification", {}).get("name", T.NUCLEUS)
        assert p["objectType"] == "detection" and name in (*T.NAMES, T.NUCLEUS)
        if name != T.NUCLEUS:
            assert tuple(p["classification"]["color"]) == T.type_color(name)
        g = shape(f["geometry"])
        assert g.is_valid and g.geom_type == "Polygon", f["id"]
    with open(folder / "nuclei.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["nucleus_id"]) for r in rows] == ids
    assert [r["type"] or T.NUCLEUS for r in rows] == [f["properties"].get("classification", {}).get("name", T.NUCLEUS)
                                                     for f in feats]
    counts = {t: sum(r["type"] == t for r in rows) for t in T.NAMES}
    untyped = sum(r["type"] == "" for r in rows)
    assert summary["types"]["counts"] == counts and summary["types"]["untyped"] == untyped
    assert sum(counts.values()) + untyped == summary["nucleus_count"] and 0 < untyped < summary["nucleus_count"]
    for f, r in zip(feats[::50], rows[::50]):
        c = shape(f["geometry"]).centroid
        assert abs(c.x - float(r["centroid_x_px"])) < 2 and abs(c.y - float(r["centroid_y_px"])) < 2
        assert 0 < float(r["confidence"]) <= 1 and float(r["area_um2"]) > 0
    lab = read_zarr(folder)
    zs = json.loads((folder / "summary.json").read_text())
    f0 = zs["level0_per_working_px"]
    assert lab.shape == (int(np.ceil(2967 / f0)), int(np.ceil(2220 / f0)))
    present = set(np.unique(lab)) - {0}
    assert present <= set(ids) and len(present) >= 0.99 * len(ids)
    areas = np.bincount(lab.ravel())
    mpp = zs["working_mpp"]
    for r in rows[::50]:
        i = int(r["nucleus_id"])
        assert areas[i] * mpp * mpp == pytest.approx(float(r["area_um2"]), rel=0.35, abs=2)


def test_cmu_geojson_is_light_and_qupath_ready(cmu_runs):
    """Issue 15: <= 500 bytes per nucleus uncompressed on CMU, QuPath's rules met, nothing small."""
    from wsi_nuc.writers.geojson import qupath_problems

    folder, summary = cmu_runs[256]
    path = folder / "nuclei.geojson"
    assert qupath_problems(path) == []
    assert path.stat().st_size / summary["nucleus_count"] <= 500
    with open(folder / "nuclei.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert min(float(r["area_um2"]) for r in rows) >= summary["min_area_um2"] == 3.0
    assert {r["slide"] for r in rows} == {"CMU-1-Small-Region"}


def test_tile_size_does_not_change_nuclei(cmu_runs):
    """Seam-free: 256-px and 1024-px tiles find the same nuclei (F1 >= 0.99 at IoU 0.5)."""
    from wsi_nuc.metrics import f1_at

    a, b = read_zarr(cmu_runs[256][0]), read_zarr(cmu_runs[1024][0])
    assert a.shape == b.shape
    f1 = f1_at(a.astype(np.int64), b.astype(np.int64), 0.5)
    assert f1 >= 0.99, f1


def test_tiffslide_fallback_ome(slides, tmp_path, client):
    s = run_slide(slides / "OS-1-detail.ome.tif", tmp_path, RunSettings(quiet=True), client=client)
    assert s["slide"]["reader"] == "tiffslide"
    assert s["nucleus_count"] > 50
    assert (tmp_path / "OS-1-detail" / "nuclei.geojson").exists()


def test_tiny_and_glass_slides_succeed(slides, tmp_path, client):
    s = run_slide(slides / "synthetic" / "small.svs", tmp_path, RunSettings(quiet=True), client=client)
    assert s["nucleus_count"] <= 2
    from PIL import Image

    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((700, 900, 3), 242, np.uint8)).save(glass)
    s = run_slide(glass, tmp_path, RunSettings(quiet=True, mpp=0.5), client=client)
    assert s["nucleus_count"] == 0 and s["tiles"]["count"] == 0
    assert json.loads((tmp_path / "glass" / "nuclei.geojson").read_text())["features"] == []


def _bad_cases(slides, tmp_path):
    trunc = tmp_path / "truncated.svs"
    data = (slides / "CMU-1-Small-Region.svs").read_bytes()
    trunc.write_bytes(data[: len(data) * 6 // 10])
    rnd = tmp_path / "random.svs"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cmu = slides / "CMU-1-Small-Region.svs"
    return [
        ([str(tmp_path / "missing.svs")], "missing.svs"),
        ([str(tmp_path)], tmp_path.name),
        ([str(empty)], "empty.svs"),
        ([str(rnd)], "random.svs"),
        ([str(trunc)], "truncated.svs"),
        ([str(slides / "bad" / "unopenable.tiff")], "unopenable.tiff"),
        ([str(slides / "bad" / "unreadable.svs")], "unreadable.svs"),
        ([str(slides / "TCGA-CR-7395-01A-01-TS1-jp2k-no-mpp.svs")], "--mpp"),
        ([str(slides / "camelyon-multiframe-jpeg.dcm")], "coarse"),
        ([str(cmu), "--out", str(blocker / "out")], "a-file"),
    ]


def test_bad_input_exits_2_with_one_line(slides, tmp_path, capsys):
    for args, needle in _bad_cases(slides, tmp_path):
        out = tmp_path / "out"
        argv = ["run", *args] if "--out" in args else ["run", *args, "--out", str(out)]
        code = main(argv + ["--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1, err
        assert needle in err, (needle, err)
        assert "Traceback" not in err
        assert not (out / "missing").exists()


def test_crash_leaves_no_complete_looking_folder(slides, tmp_path, client, monkeypatch):
    import wsi_nuc.writers.table as table

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(table, "write_csv", boom)
    with pytest.raises(RuntimeError):
        run_slide(slides / "OS-1-detail.ome.tif", tmp_path, RunSettings(quiet=True), client=client)
    assert not (tmp_path / "OS-1-detail").exists()


def test_info_command(slides, capsys):
    assert main(["info", str(slides / "CMU-1-Small-Region.svs"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["width"] == 2220 and d["height"] == 2967 and d["reader"] == "openslide"
    assert main(["info", str(slides / "TCGA-CR-7395-01A-01-TS1-jp2k-no-mpp.svs")]) == 0
    assert "4443" in capsys.readouterr().out


def test_output_check_is_safe_for_concurrent_slides(tmp_path):
    """Several slides of a cohort check the same output folder at once (a shared probe name raced)."""
    from concurrent.futures import ThreadPoolExecutor

    from wsi_nuc.pipeline import check_output_dir

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda _: [check_output_dir(tmp_path) for _ in range(50)], range(8)))
    assert list(tmp_path.iterdir()) == []
