"""Slide outputs written from real nuclei, without a model: the MoNuSeg val tile opened as a slide, its
hand-drawn nuclei cut into tiles as the pipeline does, with and without nucleus types.

Checks QuPath's rules on the GeoJSON, OME-NGFF 0.4 on the zarr (ome-zarr-models, ome-zarr-py's reader),
per-type agreement between GeoJSON, CSV, Parquet, zarr properties and summary.json, and the qc.png
legend.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import Polygon, shape

from wsi_nuc import types as T
from wsi_nuc.writers.geojson import iter_geojson, qupath_problems, simplify_rings

STEM = "TCGA-21-5784-01Z-00-DX1"


def _tiles_from_labels(labels_work, image_work, f, mpp_work, mpp0, tile=256, halo=32):
    """TileNuclei of every tile, as the pipeline's workers make them (owned nuclei, outlines,
    measurements), from instance labels instead of a model."""
    from wsi_nuc.segment import owned_nuclei
    from wsi_nuc.stitch import deduplicate
    from wsi_nuc.tiling import Scale, make_grid

    H, W = labels_work.shape
    grid = make_grid(H, W, tile, halo, margin=8)
    tiles = []
    for t in grid:
        r = t.read
        pad = ((max(0, -r.y0), max(0, r.y1 - H)), (max(0, -r.x0), max(0, r.x1 - W)))
        lab = np.pad(labels_work[max(r.y0, 0):min(r.y1, H), max(r.x0, 0):min(r.x1, W)], pad)
        img = np.pad(image_work[max(r.y0, 0):min(r.y1, H), max(r.x0, 0):min(r.x1, W)], pad + ((0, 0),),
                     constant_values=255)
        conf = np.where(lab > 0, 0.9, 0.1).astype(np.float32)
        tiles.append(owned_nuclei(t, lab, img, conf, Scale(mpp0, mpp_work)))
    return grid, tiles, deduplicate(tiles, band=grid.band)


@pytest.fixture(scope="module")
def slide_parts(shared):
    """(reader, grid, tiles, keep, geometry) for the MoNuSeg val tile at 0.25 µm/px (working 0.5)."""
    import tifffile

    from wsi_nuc.dataset import resize_image, resize_labels
    from wsi_nuc.graph import Geometry
    from wsi_nuc.slide import open_slide
    from wsi_nuc.tiling import Scale

    data = shared / "data" / "monuseg2018-train"
    img_p, lab_p = data / "images" / f"{STEM}.png", data / "labels" / f"{STEM}.tif"
    if not img_p.exists():
        pytest.skip("MoNuSeg data not present")
    reader = open_slide(img_p, mpp=0.25)
    rgb = np.asarray(Image.open(img_p).convert("RGB"))
    labels = tifffile.imread(lab_p).astype(np.int32)
    f = 2.0
    shape_w = (rgb.shape[0] // 2, rgb.shape[1] // 2)
    lab_w, img_w = resize_labels(labels, shape_w), resize_image(rgb, shape_w)
    grid, tiles, keep = _tiles_from_labels(lab_w, img_w, f, 0.5, 0.25)
    geom = Geometry(str(img_p), 0.25, Scale(0.25, 0.5))
    yield reader, grid, tiles, keep, geom
    reader.close()


def _with_types(tiles):
    """Copies of the tiles with a type (cycling 1..4, every 13th nucleus untyped) and a probability."""
    from dataclasses import replace

    out, k = [], 0
    for tn in tiles:
        n = tn.n
        codes = (np.arange(k, k + n) % 4) + 1
        codes[(np.arange(k, k + n) % 13) == 0] = 0
        prob = np.round(0.4 + 0.5 * ((np.arange(k, k + n) * 7919) % 100) / 100, 4)
        out.append(replace(tn, columns={**tn.columns, "type": codes, "type_prob": prob}))
        k += n
    return out


def _write(tmp, slide_parts, tiles=None, **settings):
    from wsi_nuc.pipeline import RunSettings, SlidePlan, SlideRun, Timer, write_outputs
    from wsi_nuc.stitch import stitch
    from wsi_nuc.tissue import full_mask

    reader, grid, base_tiles, keep, geom = slide_parts
    tiles = base_tiles if tiles is None else tiles
    st = RunSettings(quiet=True, **settings)
    tmp.mkdir(parents=True, exist_ok=True)
    run = SlideRun(Path(reader.info.path), tmp, tmp, {}, st, reader, Path("test-model"),
                   {"name": "test-model", "version": "9.9"}, Timer(), 0.0)
    final = stitch(tiles, grid.band, st.min_area_um2)   # the pipeline's stitch step, on these tiles
    summary = write_outputs(tmp, run, SlidePlan(full_mask(reader.info), grid, geom), final)
    return summary


@pytest.fixture(scope="module")
def typed_out(tmp_path_factory, slide_parts):
    d = tmp_path_factory.mktemp("typed")
    s = _write(d, slide_parts, _with_types(slide_parts[2]), table="both")
    (d / "summary.json").write_text(json.dumps(s))
    return d, s


@pytest.fixture(scope="module")
def plain_out(tmp_path_factory, slide_parts):
    d = tmp_path_factory.mktemp("plain")
    return d, _write(d, slide_parts, table="both")


# ------------------------------------------------------------------ GeoJSON ----

def test_geojson_meets_qupaths_rules_and_is_light(plain_out):
    d, s = plain_out
    path = d / "nuclei.geojson"
    assert qupath_problems(path) == []
    feats = list(iter_geojson(path))
    assert len(feats) == s["nucleus_count"] > 300
    for ft in feats:
        pr = ft["properties"]
        assert pr["classification"] == {"name": "Nucleus", "color": list(T.NUCLEUS_COLOR)}
        m = pr["measurements"]
        assert isinstance(m["nucleus_id"], int)
        assert round(m["area_um2"], 2) == m["area_um2"] and round(m["circularity"], 3) == m["circularity"]
        # 40x (f = 2): whole level-0 pixels
        assert all(isinstance(v, int) for xy in ft["geometry"]["coordinates"][0] for v in xy)
    assert path.stat().st_size / len(feats) <= 500


def test_qupath_rule_checker_catches_breaks(tmp_path):
    bad = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]},
         "properties": {"objectType": "detection", "classification": {"name": "x", "color": [1, 2, 3]},
                        "measurements": {"a": 1.0}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
         "properties": {"objectType": "annotation", "classification": {"name": "x"},
                        "measurements": {"a": "text"}}}]}
    p = tmp_path / "bad.geojson"
    p.write_text(json.dumps(bad))
    problems = " | ".join(qupath_problems(p))
    for needle in ("invalid polygon", "Point", "objectType", "color", "measurements"):
        assert needle in problems, (needle, problems)


def test_simplified_outlines_stay_close_valid_and_smaller(real_outlines):
    tol = 1.0                                       # 0.5 working px at f = 2
    rings = real_outlines
    simple = simplify_rings(rings, tol, decimals=0)
    n_in = sum(len(r) for r in rings)
    n_out = sum(len(r) for r in simple)
    assert n_out < 0.7 * n_in
    rel = []
    for a, b in zip(rings, simple):
        pa, pb = Polygon(a), Polygon(b)
        assert pb.is_valid and pb.area > 0 and shapely.is_ccw(pb.exterior)
        # Douglas-Peucker tolerance plus rounding to whole pixels (half a pixel on each axis)
        assert pa.exterior.hausdorff_distance(pb.exterior) <= tol + 0.5 * 2 ** 0.5 + 1e-9
        rel.append(abs(pb.area - pa.area) / pa.area)
    assert np.median(rel) < 0.03
    assert simplify_rings(rings[:3], 0) == rings[:3]


@pytest.fixture(scope="module")
def real_outlines(slide_parts):
    _, _, tiles, keep, _ = slide_parts
    return [tn.polygon(i) for tn, k in zip(tiles, keep) for i in np.flatnonzero(k)]


# -------------------------------------------------------------------- types ----

def test_types_agree_across_outputs(typed_out):
    import pyarrow.parquet as pq

    d, s = typed_out
    counts = s["types"]["counts"]
    assert set(counts) == set(T.NAMES) and all(v > 50 for v in counts.values())
    fr = s["types"]["fraction"]
    assert sum(fr.values()) == pytest.approx(1, abs=1e-3)
    assert s["types"]["per_mm2"]["epithelial"] == pytest.approx(
        counts["epithelial"] / s["tissue_area_mm2"], rel=1e-3)
    # GeoJSON: the type's name and fixed colour; untyped nuclei stay "Nucleus"
    gj = {}
    for ft in iter_geojson(d / "nuclei.geojson"):
        c = ft["properties"]["classification"]
        assert tuple(c["color"]) == T.type_color(c["name"]) if c["name"] != "Nucleus" else True
        gj[c["name"]] = gj.get(c["name"], 0) + 1
        if c["name"] != "Nucleus":
            assert 0.4 <= ft["properties"]["measurements"]["type_prob"] <= 0.9
    assert {k: gj[k] for k in T.NAMES} == counts and gj["Nucleus"] > 0
    assert qupath_problems(d / "nuclei.geojson") == []
    # CSV and Parquet: type and type_prob columns, the same rows
    with open(d / "nuclei.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["slide"] for r in rows} == {STEM}
    csv_counts = {n: sum(r["type"] == n for r in rows) for n in T.NAMES}
    assert csv_counts == counts
    assert all(r["type_prob"] == "" for r in rows if r["type"] == "")
    tab = pq.read_table(d / "nuclei.parquet").to_pydict()
    assert tab["nucleus_id"] == [int(r["nucleus_id"]) for r in rows]
    assert tab["type"] == [r["type"] for r in rows] and set(tab["slide"]) == {STEM}
    assert tab["area_um2"] == [float(r["area_um2"]) for r in rows]
    # zarr properties carry the type
    props = _label_attrs(d)["image-label"]["properties"]
    assert [p["label-value"] for p in props] == tab["nucleus_id"]
    assert {n: sum(p.get("type") == n for p in props) for n in T.NAMES} == counts
    colors = _label_attrs(d)["image-label"]["colors"]
    by_id = {c["label-value"]: c["rgba"] for c in colors}
    assert set(by_id) == {p["label-value"] for p in props}
    for p in props[:200]:
        assert by_id[p["label-value"]] == [*T.type_color(p.get("type")), 255]


def test_untyped_outputs_look_as_before(plain_out):
    d, s = plain_out
    assert "types" not in s
    with open(d / "nuclei.csv") as fh:
        header = next(csv.reader(fh))
    assert "type" not in header and header[:2] == ["slide", "nucleus_id"]
    props = _label_attrs(d)["image-label"]["properties"]
    assert "type" not in props[0] and "colors" not in _label_attrs(d)["image-label"]


def test_qc_png_shows_type_colours_and_legend(typed_out, plain_out):
    typed = np.asarray(Image.open(typed_out[0] / "qc.png").convert("RGB")).reshape(-1, 3)
    plain = np.asarray(Image.open(plain_out[0] / "qc.png").convert("RGB")).reshape(-1, 3)
    for name, rgb in T.TYPES.values():
        n_typed = int((typed == rgb).all(1).sum())
        n_plain = int((plain == rgb).all(1).sum())
        assert n_typed > 200 and n_typed > 5 * n_plain, (name, n_typed, n_plain)


# ------------------------------------------------------------------ OME-Zarr ----

def _label_attrs(d):
    return json.loads((d / "nuclei.ome.zarr" / "labels" / "nuclei" / ".zattrs").read_text())


def test_ome_zarr_validates_and_opens(typed_out):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v04 import Image as NgffImage
    from ome_zarr_models.v04.image_label import ImageLabel

    d, s = typed_out
    z = d / "nuclei.ome.zarr"
    img = NgffImage.from_zarr(zarr.open_group(str(z), mode="r"))
    assert img.attributes.multiscales[0].axes[0].name == "c"
    lab = ImageLabel.from_zarr(zarr.open_group(str(z / "labels" / "nuclei"), mode="r"))
    ms = lab.attributes.multiscales[0]
    assert len(ms.datasets) == s["ome_zarr"]["levels"] >= 1
    assert lab.attributes.image_label.source.image == "../../"
    # ome-zarr-py finds the image and its labels
    nodes = list(Reader(parse_url(str(z)))())
    specs = {type(sp).__name__ for n in nodes for sp in n.specs}
    assert {"Multiscales", "Label"} <= specs, specs
    label_node = next(n for n in nodes if any(type(sp).__name__ == "Label" for sp in n.specs))
    assert len(label_node.data) == s["ome_zarr"]["levels"]
    props = label_node.metadata.get("properties")
    assert props and len(props) == s["nucleus_count"]


def test_label_pyramid_and_placement(typed_out, slide_parts):
    import zarr

    d, s = typed_out
    g = zarr.open_group(str(d / "nuclei.ome.zarr" / "labels" / "nuclei"), mode="r")
    lv = [np.asarray(g[str(k)][:]) for k in range(s["ome_zarr"]["levels"])]
    for a, b in zip(lv, lv[1:]):
        assert np.array_equal(a[::2, ::2], b)
    # the labels lie where the GeoJSON outlines are: level-0 centroid -> label pixel (scale, translation)
    ds0 = _label_attrs(d)["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    sc, tr = ds0[0]["scale"][0], ds0[1]["translation"][0]
    mpp0 = 0.25
    hits = n = 0
    for ft in list(iter_geojson(d / "nuclei.geojson"))[::7]:
        p = shape(ft["geometry"]).representative_point()
        r, c = round((p.y * mpp0 - 0.5 * mpp0 - tr) / sc), round((p.x * mpp0 - 0.5 * mpp0 - tr) / sc)
        n += 1
        hits += lv[0][r, c] == ft["properties"]["measurements"]["nucleus_id"]
    assert hits >= 0.9 * n


def test_geojson_gz_and_parquet_only(tmp_path, slide_parts):
    import gzip

    s = _write(tmp_path, slide_parts, geojson_gz=True, table="parquet", min_area_um2=20.0)
    assert (tmp_path / "nuclei.geojson.gz").exists() and not (tmp_path / "nuclei.geojson").exists()
    assert not (tmp_path / "nuclei.csv").exists() and (tmp_path / "nuclei.parquet").exists()
    assert "nuclei.geojson.gz" in s["outputs"]
    doc = json.loads(gzip.open(tmp_path / "nuclei.geojson.gz", "rt").read())
    areas = [f["properties"]["measurements"]["area_um2"] for f in doc["features"]]
    assert len(areas) == s["nucleus_count"] and min(areas) >= 20.0


def test_many_nuclei_leave_properties_out(tmp_path, slide_parts, monkeypatch):
    """Above PROPERTIES_MAX the zarr has no properties/colours (napari would spend minutes on them)."""
    import zarr
    from ome_zarr_models.v04.image_label import ImageLabel

    import wsi_nuc.writers.ome_zarr as oz

    monkeypatch.setattr(oz, "PROPERTIES_MAX", 10)
    s = _write(tmp_path, slide_parts, _with_types(slide_parts[2]))
    assert s["nucleus_count"] > 10 and s["ome_zarr"]["properties"] is False
    il = _label_attrs(tmp_path)["image-label"]
    assert "properties" not in il and "colors" not in il
    ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "nuclei.ome.zarr" / "labels" / "nuclei"), mode="r"))


# ------------------------------------------------- a typed model, end to end ----

from test_types_pipeline import STEMS, consep, tiny_model  # noqa: E402,F401  (fixtures: a typed model)


def test_typed_model_types_reach_every_output(tiny_model, consep, tmp_path):
    """A model whose type head says "epithelial" everywhere: every output of `wsi-nuc run` says so."""
    import shutil

    import pyarrow.parquet as pq

    from wsi_nuc.cli import main

    slide = tmp_path / "crop.png"
    shutil.copy(consep / "images" / f"{STEMS[0]}.png", slide)
    args = ["run", str(slide), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--device", "cpu",
            "--mpp", "0.25", "--no-tissue-detection", "--quiet", "--workers", "1", "--table", "both"]
    assert main(args) == 0
    d = tmp_path / "out" / "crop"
    s = json.loads((d / "summary.json").read_text())
    n = s["nucleus_count"]
    assert n > 10 and s["types"]["counts"] == {"other": 0, "inflammatory": 0, "epithelial": n, "spindle-shaped": 0}
    assert s["types"]["fraction"]["epithelial"] == 1.0
    assert qupath_problems(d / "nuclei.geojson") == []
    cls = {(f["properties"]["classification"]["name"], tuple(f["properties"]["classification"]["color"]))
           for f in iter_geojson(d / "nuclei.geojson")}
    assert cls == {("epithelial", T.type_color("epithelial"))}
    tab = pq.read_table(d / "nuclei.parquet").to_pydict()
    assert set(tab["type"]) == {"epithelial"} and len(tab["type_prob"]) == n
    props = _label_attrs(d)["image-label"]["properties"]
    assert {p["type"] for p in props} == {"epithelial"}
    # --no-types: plain nuclei everywhere
    assert main(args[:3] + [str(tmp_path / "plain")] + args[4:] + ["--no-types"]) == 0
    s2 = json.loads((tmp_path / "plain" / "crop" / "summary.json").read_text())
    assert "types" not in s2 and s2["nucleus_count"] == n
    assert {f["properties"]["classification"]["name"] for f in iter_geojson(tmp_path / "plain" / "crop" / "nuclei.geojson")} == {"Nucleus"}
