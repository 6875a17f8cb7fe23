"""--roi with what QuPath writes: arrays of Features, mixed exports (annotations, Ignore*, detections),
--roi-class; the region drawn on qc.png (real CMU slide)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from wsi_nuc.errors import InputError
from wsi_nuc.roi import load_roi

W, H = 2220, 2967            # CMU-1-Small-Region level 0
INFO = SimpleNamespace(width=W, height=H)
TUMOR = [[300, 1200], [1500, 1200], [1500, 2200], [300, 2200], [300, 1200]]         # 1200 x 1000
IGNORE = [[1200, 1900], [1800, 1900], [1800, 2600], [1200, 2600], [1200, 1900]]     # overlaps TUMOR 300 x 300
STROMA = [[1600, 200], [1900, 200], [1900, 500], [1600, 500], [1600, 200]]          # 300 x 300
DETECTION = [[100, 100], [400, 100], [400, 400], [100, 400], [100, 100]]            # 300 x 300, outside TUMOR


def feature(ring, object_type="annotation", cls=None, legacy_id=None):
    props = {"objectType": object_type} if object_type else {}
    if cls:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    f = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
    if legacy_id:
        f["id"] = legacy_id
    return f


def mixed_export():
    """What "Export objects -> All objects" writes from a project with a Tumor annotation, an Ignore* annotation,
    a Stroma annotation and a detection."""
    return [feature(TUMOR, cls="Tumor"), feature(IGNORE, cls="Ignore*"), feature(STROMA, cls="Stroma"),
            feature(DETECTION, "detection", cls="Nucleus"),
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [DETECTION]},
             "properties": {"objectType": "cell"}, "nucleusGeometry": {"type": "Polygon", "coordinates": [DETECTION]}}]


def write(tmp_path, doc, name="roi.geojson"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_bare_array_of_features_is_read(tmp_path):
    roi = load_roi(write(tmp_path, [feature(TUMOR, cls="Tumor")]), INFO)
    assert roi.area_px == pytest.approx(1200 * 1000)


@pytest.mark.parametrize("shape", ["collection", "array"])
def test_mixed_export_is_annotations_minus_ignore(tmp_path, shape):
    doc = mixed_export() if shape == "array" else {"type": "FeatureCollection", "features": mixed_export()}
    roi = load_roi(write(tmp_path, doc), INFO)
    assert roi.area_px == pytest.approx(1200 * 1000 - 300 * 300 + 300 * 300)   # Tumor - Ignore + Stroma
    assert roi.contains([1400, 1000, 250, 1700], [2100, 1500, 250, 300]).tolist() == [False, True, False, True]
    assert roi.parts == {"polygons": 2, "ignore_polygons": 1, "skipped_objects": {"cell": 1, "detection": 1}}


def test_roi_class_picks_annotations_and_still_subtracts_ignore(tmp_path):
    p = write(tmp_path, mixed_export())
    roi = load_roi(p, INFO, "Tumor")
    assert roi.area_px == pytest.approx(1200 * 1000 - 300 * 300)
    assert not roi.contains([1700], [300]).any()          # Stroma left out
    with pytest.raises(InputError, match=r"no annotation of class 'Necrosis' \(classes there: Ignore\*, Stroma, Tumor\)"):
        load_roi(p, INFO, "Necrosis")


def test_qupath_02_ids_and_detection_only_exports(tmp_path):
    old = [feature(TUMOR, None, legacy_id="PathAnnotationObject"),
           feature(DETECTION, None, legacy_id="PathDetectionObject")]
    assert load_roi(write(tmp_path, old), INFO).area_px == pytest.approx(1200 * 1000)
    with pytest.raises(InputError, match="only other objects .*2 detection"):
        load_roi(write(tmp_path, [feature(DETECTION, "detection")] * 2, "det.geojson"), INFO)


def test_ignore_alone_is_the_slide_minus_it(tmp_path):
    roi = load_roi(write(tmp_path, [feature(IGNORE, cls="Ignore*")]), INFO)
    assert roi.area_px == pytest.approx(W * H - 600 * 700)


def test_mask_with_roi_class_is_refused(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((H // 8, W // 8), 255, np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(InputError, match="needs a GeoJSON"):
        load_roi(tmp_path / "m.png", INFO, "Tumor")


def test_run_with_a_mixed_export_and_roi_class(slides, tmp_path):
    """End to end on CMU: the region is Tumor minus Ignore*; summary.json says what was used; qc.png draws it."""
    from PIL import Image

    from wsi_nuc.cli import main

    p = write(tmp_path, mixed_export())
    code = main(["run", str(slides / "CMU-1-Small-Region.svs"), "--out", str(tmp_path / "out"), "--roi", str(p),
                 "--roi-class", "Tumor", "--quiet", "--table", "parquet"])
    assert code == 0
    d = tmp_path / "out" / "CMU-1-Small-Region"
    s = json.loads((d / "summary.json").read_text())
    r = s["roi"]
    assert r["roi_class"] == "Tumor" and r["ignore_polygons"] == 1 and r["skipped_objects"]["detection"] == 1
    assert r["area_mm2"] == pytest.approx((1200 * 1000 - 300 * 300) * s["slide"]["mpp"] ** 2 / 1e6, abs=1e-4)
    assert s["settings"]["roi_class"] == "Tumor"
    lic = s["model"]["licence"]                          # the weights' terms travel with the results
    assert lic["weights"] == "CC BY-NC-SA 4.0 (MoNuSeg) + research use only (CoNSeP)" and lic["code"] == "Apache-2.0"
    import wsi_nuc

    assert s["software"]["wsi_nuc"].startswith(wsi_nuc.__version__) and len(s["software"]["wsi_nuc_source_sha256"]) == 12
    import pyarrow.parquet as pq

    t = pq.read_table(d / "nuclei.parquet", columns=["centroid_x_px", "centroid_y_px"]).to_pydict()
    x, y = np.array(t["centroid_x_px"]), np.array(t["centroid_y_px"])
    assert len(x) == s["nucleus_count"] > 100
    assert not ((x > 1200) & (y > 1900)).any()           # nothing in the Ignore* square
    assert ((x >= 300) & (x <= 1500) & (y >= 1200) & (y <= 2200)).all()
    qc = np.asarray(Image.open(d / "qc.png").convert("RGB"))
    magenta = (qc[..., 0] == 210) & (qc[..., 1] == 0) & (qc[..., 2] == 210)
    assert magenta.sum() > 200                           # the region's outline (and its note) on the page
