"""Writers: GeoJSON (QuPath), CSV, OME-Zarr labels, QC PNG, atomic folders. Real MoNuSeg labels where
it matters."""
from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
import shapely
from PIL import Image
from scipy import ndimage as ndi
from shapely.geometry import Polygon
from skimage.measure import find_contours

from wsi_nuc.tiling import Box
from wsi_nuc.writers import (atomic_dir, clean_polygon, iter_geojson, safe_child, safe_name, write_csv,
                             write_geojson, write_qc_png)
from wsi_nuc.writers.rasterise import polygon_areas, rasterise, rasterise_blocks
from wsi_nuc.writers.table import format_column, format_value

STEM = "TCGA-21-5784-01Z-00-DX1"
F = 2.0           # level-0 px per working px (MoNuSeg 0.25 µm/px as level 0, working 0.5 µm/px)
LEVEL0_MPP = 0.25


def trace(mask: np.ndarray) -> np.ndarray | None:
    """Outline of a binary mask in pixel-centre (row, col) coordinates: marching squares on the padded
    mask, through the midpoints between inside and outside pixel centres."""
    cs = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if not cs:
        return None
    return max(cs, key=len) - 1.0


def polygons_level0(labels: np.ndarray, ids, f: float = F) -> list[np.ndarray]:
    """Level-0 (x, y) outlines of the given labels; working pixel centre c -> level-0 (c + 0.5) f."""
    out = []
    sl = ndi.find_objects(labels)
    for i in ids:
        s = sl[i - 1]
        rc = trace(labels[s] == i)
        y = (rc[:, 0] + s[0].start + 0.5) * f
        x = (rc[:, 1] + s[1].start + 0.5) * f
        out.append(np.column_stack([x, y]))
    return out


@pytest.fixture(scope="module")
def real(monuseg_tile):
    rgb, labels, ids = monuseg_tile
    return rgb, labels, ids, polygons_level0(labels, ids)


# ---------------------------------------------------------------- polygons ----

def test_clean_polygon_on_real_outlines(real):
    _, _, ids, polys = real
    n_ok = 0
    for xy in polys:
        ring = clean_polygon(xy)
        assert ring is not None
        p = Polygon(ring)
        assert p.is_valid and p.area > 0 and len(p.interiors) == 0
        assert np.array_equal(ring[0], ring[-1])                       # closed
        assert shapely.is_ccw(p.exterior)                              # RFC 7946 orientation
        assert np.allclose(ring, np.round(ring, 2))                    # 2 decimals
        n_ok += 1
    assert n_ok == len(ids)


def test_clean_polygon_repairs_bad_rings():
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float)
    assert not Polygon(bowtie).is_valid
    ring = clean_polygon(bowtie)
    assert ring is not None and Polygon(ring).is_valid and Polygon(ring).area == pytest.approx(25)
    # degenerate inputs
    assert clean_polygon(np.array([[0, 0], [1, 1], [2, 2]], float)) is None
    assert clean_polygon(np.array([[0, 0], [1, 1]], float)) is None
    # a thin sliver that rounding to 2 decimals would collapse
    assert clean_polygon(np.array([[0, 0], [5, 0.001], [10, 0]], float)) is None
    # clockwise input comes back counter-clockwise, same area; NaN vertices dropped
    cw = np.array([[0, 0], [0, 4], [4, 4], [4, 0], [np.nan, 1]], float)
    r = clean_polygon(cw)
    assert shapely.is_ccw(Polygon(r).exterior) and Polygon(r).area == pytest.approx(16)
    # near-duplicate vertices that coincide after rounding
    r = clean_polygon(np.array([[0, 0], [10, 0], [10.001, 0.002], [10, 10], [0, 10]], float))
    assert r is not None and Polygon(r).is_valid


# ----------------------------------------------------------------- GeoJSON ----

def _features(polys, ids, n=None):
    for k, (i, xy) in enumerate(zip(ids, polys)):
        if n is not None and k >= n:
            return
        yield int(i), xy, {"area_um2": float(k) + 0.5, "confidence": float("nan"),
                          "mean_h_od": np.float32(0.25), "n": np.int64(3)}


@pytest.mark.parametrize("name", ["nuclei.geojson", "nuclei.geojson.gz"])
def test_geojson_qupath_fields(tmp_path, real, name):
    _, _, ids, polys = real
    path = tmp_path / name
    n = write_geojson(path, _features(polys, ids), color=(10, 20, 30), id_namespace="slideA")
    assert n == len(ids)
    raw = gzip.open(path, "rt").read() if name.endswith(".gz") else path.read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    doc = json.loads(raw)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n
    ids_seen = set()
    for feat in doc["features"]:
        assert feat["type"] == "Feature" and isinstance(feat["id"], str)
        ids_seen.add(feat["id"])
        g = feat["geometry"]
        assert g["type"] == "Polygon" and len(g["coordinates"]) == 1
        ring = np.array(g["coordinates"][0])
        assert Polygon(ring).is_valid and np.array_equal(ring[0], ring[-1])
        pr = feat["properties"]
        assert pr["objectType"] == "detection" and pr["isLocked"] is False
        assert pr["classification"] == {"name": "Nucleus", "color": [10, 20, 30]}
        meas = pr["measurements"]
        assert isinstance(meas["nucleus_id"], int)
        assert "confidence" not in meas                     # NaN omitted
        assert meas["mean_h_od"] == pytest.approx(0.25) and meas["n"] == 3
    assert len(ids_seen) == n                               # unique object ids
    streamed = list(iter_geojson(path))
    assert [f["properties"]["measurements"]["nucleus_id"] for f in streamed] == [int(i) for i in ids]


def test_geojson_empty_and_invalid_skipped(tmp_path):
    p = tmp_path / "empty.geojson"
    assert write_geojson(p, iter(())) == 0
    assert json.loads(p.read_text()) == {"type": "FeatureCollection", "features": []}
    assert list(iter_geojson(p)) == []
    feats = [(1, np.array([[0, 0], [1, 1], [2, 2]], float), {}),           # degenerate -> skipped
             (2, np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float), {})]  # bow-tie -> repaired
    assert write_geojson(p, feats) == 1
    (f,) = list(iter_geojson(p))
    assert f["properties"]["measurements"] == {"nucleus_id": 2}
    assert not list(tmp_path.glob(".*partial"))


# --------------------------------------------------------------------- CSV ----

def test_csv_rows_and_chunks(tmp_path):
    cols = ["nucleus_id", "area_um2", "confidence", "label"]
    chunk = {"nucleus_id": np.array([1, 2]), "area_um2": np.array([12.123456789, 1e-7]),
             "confidence": np.array([np.nan, 0.5])}
    rows = [{"nucleus_id": 3, "area_um2": 100000.0 / 3, "confidence": 0.1 + 0.2, "label": "x"}]
    p = tmp_path / "nuclei.csv"
    assert write_csv(p, cols, [chunk, *rows]) == 3
    got = list(csv.reader(p.open()))
    assert got[0] == cols
    assert got[1] == ["1", "12.1235", "", ""]
    assert got[2] == ["2", "1e-07", "0.5", ""]
    assert got[3] == ["3", "33333.3333", "0.3", "x"]
    pg = tmp_path / "nuclei.csv.gz"
    write_csv(pg, cols, [chunk])
    assert list(csv.reader(gzip.open(pg, "rt")))[1][0] == "1"


def test_csv_column_chunks_match_row_dicts(tmp_path):
    # whole-column formatting gives the bytes value-by-value formatting gives, on the hard cases too:
    # x * 10**4 at or next to a half-integer (np.round differs from round there), tiny, huge, NaN/inf
    rng = np.random.default_rng(3)
    k = rng.integers(-10**9, 10**9, 3000)
    half = (k + 0.5) / 1e4
    x = np.concatenate([half, np.nextafter(half, np.inf), np.nextafter(half, -np.inf), k / 1e4,
                        rng.normal(0, 1e3, 3000), rng.normal(0, 1e-5, 500),
                        [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-4, -5e-5, 2.675, 1e15, 1e300, 5e-324]])
    chunk = {"i": np.arange(len(x)) - 7, "x": x, "pos": x > 0,
             "f32": np.clip(x, -1e30, 1e30).astype(np.float32), "u": np.full(len(x), 2**64 - 1, np.uint64)}
    cols = ["i", "x", "missing", "pos", "f32", "u"]
    rows = [{c: chunk[c][j] for c in chunk} for j in range(len(x))]
    a, b = tmp_path / "chunks.csv", tmp_path / "rows.csv"
    assert write_csv(a, cols, [chunk]) == write_csv(b, cols, rows) == len(x)
    assert a.read_bytes() == b.read_bytes()
    for d in (0, 2, 6):
        assert format_column(x, d) == [format_value(v, d) for v in x.tolist()]
    assert format_column(["a", None, 1.5, np.int64(2)]) == ["a", "", "1.5", "2"]


# -------------------------------------------------------------------- zarr ----

def test_rasterise_blocks_roundtrip_real(real):
    # the real outlines rasterised block by block give back the hand-drawn labels
    _, labels, ids, polys = real
    arr = np.zeros(labels.shape, np.uint32)
    assert rasterise_blocks(arr, lambda box: zip(ids, polys), F, 128) == max(ids)
    assert set(np.unique(arr[arr > 0]).tolist()) == set(ids.tolist())
    both = (arr == labels) & (labels > 0)
    iou = both.sum() / ((arr > 0) | (labels > 0)).sum()
    assert iou >= 0.95, iou


def test_rasterise_reproduces_traced_masks():
    # tracing a pixel mask and rasterising the outline gives back the same pixels, for odd f too
    rng = np.random.default_rng(1)
    for f in (1.0, 2.0, 0.7, 3.3):
        mask = ndi.binary_opening(rng.random((40, 50)) > 0.35, iterations=1)
        lab, n = ndi.label(mask)
        ids = [i for i in range(1, n + 1) if (lab == i).sum() >= 4]
        # skip objects with holes (outlines drop holes by design)
        ids = [i for i in ids if np.array_equal(ndi.binary_fill_holes(lab == i), lab == i)]
        polys = [clean_polygon(p) for p in polygons_level0(lab, ids, f)]
        got = rasterise(zip(ids, polys), Box(0, 0, *lab.shape), f)
        want = np.where(np.isin(lab, ids), lab, 0)
        assert np.array_equal(got, want), f


def _rand_polygon(rng, kind):
    k = int(rng.integers(3, 16))
    if kind == 0:                                    # integer vertices: pixel centres on edges and vertices
        return rng.integers(-3, 40, (k, 2)).astype(float)
    if kind == 1:                                    # half-integer grid
        return rng.integers(-6, 80, (k, 2)) / 2.0
    if kind == 2:                                    # 2-decimal, as written to GeoJSON
        return np.round(rng.uniform(-3, 43, (k, 2)), 2)
    c = rng.uniform(0, 40, 2)                        # star-shaped, arbitrary floats
    ang, rad = np.sort(rng.uniform(0, 2 * np.pi, k)), rng.uniform(0.3, 9, k)
    return np.column_stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)])


def _shoelace(xy):
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_rasterise_matches_skimage_polygon():
    # the vectorised scanline fill gives skimage.draw.polygon's pixels (edges and vertices included),
    # for self-intersecting rings, odd f and boxes that cut the polygons; overlaps as painted one by one
    from skimage.draw import polygon as sk_polygon

    rng = np.random.default_rng(7)
    for trial in range(400):
        f = (1.0, 2.0, 0.7, 3.3)[trial % 4]
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        y0, x0 = (int(v) for v in rng.integers(-5, 10, 2))
        pairs = [(int(rng.integers(1, 9)), _rand_polygon(rng, int(rng.integers(0, 4))) * f)
                 for _ in range(int(rng.integers(1, 5)))]
        want = np.zeros((h, w), np.uint32)
        for nid, xy in sorted(pairs, key=lambda t: (-_shoelace(t[1]), -t[0])):
            rr, cc = sk_polygon(xy[:, 1] / f - 0.5 - y0, xy[:, 0] / f - 0.5 - x0, shape=(h, w))
            want[rr, cc] = nid
        assert np.array_equal(rasterise(pairs, Box(y0, x0, y0 + h, x0 + w), f), want), trial


def test_polygon_areas():
    rng = np.random.default_rng(2)
    polys = [rng.normal(0, 10, (int(k), 2)) for k in rng.integers(0, 9, 200)]
    lens = [len(p) for p in polys]
    offsets = np.concatenate([[0], np.cumsum(lens)])
    got = polygon_areas(np.concatenate(polys), offsets)
    want = [_shoelace(p) if len(p) >= 3 else 0.0 for p in polys]
    assert np.allclose(got, want, rtol=1e-12, atol=1e-9)


def test_final_index_matches_brute_force():
    from wsi_nuc.stitch import number
    from wsi_nuc.writers.final_index import FinalIndex

    class Tile:  # the parts of TileNuclei that FinalIndex and stitch.number use
        def __init__(self, polys):
            self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in polys], dtype=np.int64)])
            self.coords = np.concatenate(polys) if polys else np.zeros((0, 2))
            self.columns = {"centroid_x_px": np.array([p[:, 0].mean() for p in polys]),
                            "centroid_y_px": np.array([p[:, 1].mean() for p in polys])}

        def polygon(self, i):
            return self.coords[self.offsets[i]:self.offsets[i + 1]]

    rng = np.random.default_rng(5)
    f = 2.0
    tiles = [Tile([_rand_polygon(rng, 3) * f + rng.uniform(0, 300, 2) for _ in range(n)])
             for n in rng.integers(0, 30, 6).tolist()]
    keep = [rng.random(len(t.offsets) - 1) < 0.8 for t in tiles]
    numbered = number(tiles, keep)
    final = {nid: tn.polygon(i) for nid, tn, i in numbered.nuclei()}
    index = FinalIndex(numbered, f)
    for y0, x0 in rng.integers(-20, 180, (40, 2)).tolist():
        y1, x1 = y0 + int(rng.integers(1, 60)), x0 + int(rng.integers(1, 60))
        want = [nid for nid, p in final.items()
                if p[:, 0].max() / f >= x0 and p[:, 0].min() / f <= x1
                and p[:, 1].max() / f >= y0 and p[:, 1].min() / f <= y1]
        got = list(index.query(Box(y0, x0, y1, x1)))
        assert [nid for nid, _ in got] == want
        assert all(np.array_equal(p, final[nid]) for nid, p in got)


def test_overlap_rule_and_chunk_independence():
    big = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], float)        # level-0, f = 2 -> 20x20 px
    small = np.array([[20, 20], [60, 20], [60, 50], [20, 50]], float)  # overlaps the big one
    twin = small + [0, 0]                                               # same area as small, higher id
    pairs = [(7, small), (3, big), (9, twin)]
    arrays = []
    for chunk in (5, 64):
        arr = np.zeros((30, 40), np.uint32)
        rasterise_blocks(arr, lambda box: pairs, 2.0, chunk)
        arrays.append(arr)
    assert np.array_equal(arrays[0], arrays[1])
    a = arrays[0]
    assert a[5, 5] == 3        # only the big one
    assert a[15, 15] == 7      # overlap: smaller area wins over 3; equal area 7 vs 9: lower id wins
    assert 9 not in a


def test_ome_zarr_without_nuclei(tmp_path):
    from wsi_nuc.stitch import number
    from wsi_nuc.writers.final_index import FinalIndex
    from wsi_nuc.writers.ome_zarr import read_labels, write_ome_zarr

    out = tmp_path / "e.ome.zarr"
    info = write_ome_zarr(out, (16, 16), FinalIndex(number([], []), 2.0), 2.0, 0.25, chunk=8, min_side=8)
    assert info["max_label"] == 0 and read_labels(out).shape == (16, 16) and read_labels(out).max() == 0


# ------------------------------------------------------------------ atomic ----

def test_atomic_dir(tmp_path):
    final = tmp_path / "slide"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "x.txt").write_text("half")
            raise RuntimeError("boom")
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    with atomic_dir(final) as d:
        (d / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"
    with atomic_dir(final) as d:                 # replaces an earlier result
        (d / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["slide"]


def test_safe_child(tmp_path):
    assert safe_child(tmp_path, "slide-01") == tmp_path / "slide-01"
    for bad in ["../evil", "..", ".", "", "a/b", "/etc", "a\\b"]:
        with pytest.raises(ValueError):
            safe_child(tmp_path, bad)
    assert safe_name("../evil") == "_evil"
    assert safe_child(tmp_path, safe_name("../../x y/z")).parent == tmp_path


# ---------------------------------------------------------------------- QC ----

def test_qc_png(tmp_path, real):
    rgb, labels, ids, polys = real
    scale = 8.0                                   # level-0 px per thumbnail px
    thumb = np.asarray(Image.fromarray(rgb).resize((250, 250)))  # tile = 2000 level-0 px (f = 2)
    tissue = np.zeros((50, 50), bool)
    tissue[5:45, 8:40] = True
    cent = np.array([[p[:, 0].mean(), p[:, 1].mean()] for p in polys])
    crop = rgb[100:228, 100:228]
    in_crop = [np.column_stack([p[:, 0] / F - 100, p[:, 1] / F - 100]) for p in polys
               if (p[:, 0] / F).min() >= 100 and (p[:, 0] / F).max() < 228
               and (p[:, 1] / F).min() >= 100 and (p[:, 1] / F).max() < 228]
    assert in_crop
    out = tmp_path / "qc.png"
    write_qc_png(out, thumb, scale, tissue, cent, [(crop, in_crop)] * 5, level0_mpp=LEVEL0_MPP, title=STEM)
    im = np.asarray(Image.open(out).convert("RGB"))
    assert im.shape[0] > 300 and im.shape[1] > 500
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 100


def test_qc_png_tiny_and_empty(tmp_path):
    out = tmp_path / "qc.png"
    thumb = np.full((16, 16, 3), 230, np.uint8)
    write_qc_png(out, thumb, 1.0, np.ones((4, 4), bool), np.zeros((0, 2)), [])
    im = np.asarray(Image.open(out).convert("RGB"))
    assert im.shape[0] >= 16 and len(np.unique(im.reshape(-1, 3), axis=0)) > 2


def test_qc_units_are_drawn_as_the_font_can():
    """qc.png writes "µm" and "mm²" with a font that has those glyphs (a system DejaVu Sans or Arial where
    installed), and "um" / "mm^2" with Pillow's own font, which draws a box for them."""
    from PIL import ImageFont

    from wsi_nuc.writers.qc_text import has_glyphs, qc_font, units_for

    plain = ImageFont.load_default()
    assert not has_glyphs(plain)
    assert units_for("20 µm, 5,112/mm²", plain) == "20 um, 5,112/mm^2"
    font = qc_font()
    if has_glyphs(font):
        assert units_for("20 µm, 5,112/mm²", font) == "20 µm, 5,112/mm²"
