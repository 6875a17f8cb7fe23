"""Issue 24, bad input refused at its root, without running a slide: one JSON reader (depth, finite numbers),
one guarded image decode, one validation of every scale, ROI geometry, dataset files, settings, locks, cohorts,
exit codes. Each case names the defect it covers."""
from __future__ import annotations

import errno
import json
import math
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace as S

import numpy as np
import pytest

from wsi_nuc.cli import main
from wsi_nuc.errors import InputError

DEEP = "[" * 5000 + "]" * 5000


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


# ---- one JSON reader ---------------------------------------------------------------------------------------

def test_json_reader_refuses_deep_nesting_non_finite_numbers_and_big_files(tmp_path):
    from wsi_nuc.json_in import read_json, read_json_or_none

    with pytest.raises(InputError, match="nested more than"):
        read_json(_write(tmp_path / "deep.json", DEEP), "config")
    for bad in ('{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}', '{"a": -1e400}'):
        with pytest.raises(InputError, match="not a finite number"):
            read_json(_write(tmp_path / "x.json", bad), "config")
    with pytest.raises(InputError, match="MiB"):
        read_json(_write(tmp_path / "big.json", '{"a": "' + "x" * 3000 + '"}'), "config", max_bytes=1000)
    assert read_json(_write(tmp_path / "ok.json", '{"a": "[[[[", "b": [1, 2.5]}')) == {"a": "[[[[", "b": [1, 2.5]}
    assert read_json_or_none(tmp_path / "deep.json") is None and read_json_or_none(tmp_path / "absent") is None


def test_deep_json_in_model_config_is_one_line(tmp_path, capsys):
    from wsi_nuc.model.io import DEFAULT_MODEL, resolve_model_dir

    model = tmp_path / "model"
    shutil.copytree(resolve_model_dir(DEFAULT_MODEL), model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(cfg)[:-1] + ', "x": ' + DEEP + "}")
    code = main(["run", "nowhere.svs", "--model", str(model), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "config.json" in err and "nested" in err


def test_wrong_typed_postprocess_values_are_refused(tmp_path):
    from wsi_nuc.validate import check_postprocess

    for bad in ({"fg_threshold": "0.5"}, {"min_area_px": 2.5}, {"marker": "blob"}, {"min_marker_px": True},
                {"fg_threshold": None}, "dist"):
        with pytest.raises(InputError, match="config.json: postprocess"):
            check_postprocess({"postprocess": bad}, tmp_path)
    check_postprocess({"postprocess": {"fg_threshold": 0.4, "min_area_px": 8, "marker": "centre"}}, tmp_path)


def test_a_users_deep_summary_json_is_not_ours_and_not_a_crash(tmp_path):
    from wsi_nuc.ownership import check_slot, read_marker

    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "summary.json").write_text('{"software": {"wsi_nuc": "1"}, "x": ' + DEEP + "}")
    assert read_marker(folder) is None
    with pytest.raises(InputError, match="did not write"):
        check_slot(folder, {"path": "/x", "size": 1, "sha256_first_mib": "0"})


# ---- ROI: guarded decode, clipping, finite coordinates, mask scale -----------------------------------------

INFO = S(width=2220, height=2967)


def _polygon(coords) -> str:
    return json.dumps({"type": "Polygon", "coordinates": [coords]})


def test_roi_larger_than_the_slide_is_clipped_to_it(tmp_path):
    from wsi_nuc.roi import load_roi

    big = [[-1e6, -1e6], [1e6, -1e6], [1e6, 1e6], [-1e6, 1e6], [-1e6, -1e6]]
    r = load_roi(_write(tmp_path / "big.geojson", _polygon(big)), INFO)
    assert r.area_px == pytest.approx(2220 * 2967)
    assert r.area_mm2(0.5) == pytest.approx(2220 * 2967 * 0.25e-6)     # density per mm² of the slide, not 1e12 px²


@pytest.mark.parametrize("text, needle", [
    ('{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [9, 9], [0, 0]]]}', "not a finite number"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1e999, 0], [9, 9], [0, 0]]]}', "not a finite number"),
    ('{"type": "Polygon", "coordinates": ' + DEEP + "}", "nested"),
])
def test_roi_with_nan_huge_or_deep_values_is_one_line(tmp_path, text, needle):
    from wsi_nuc.roi import load_roi

    with pytest.raises(InputError, match=needle):
        load_roi(_write(tmp_path / "r.geojson", text), INFO)


def test_roi_mask_bomb_is_refused_before_decoding(tmp_path):
    import tifffile

    from wsi_nuc.roi import load_roi

    tile = np.zeros((1024, 1024), np.uint8)
    p = tmp_path / "bomb.tif"
    with tifffile.TiffWriter(p) as tw:     # 12288 x 12288 claimed (151 Mpx) in a file of some kB
        tw.write((tile for _ in range(144)), shape=(12288, 12288), dtype=np.uint8, tile=(1024, 1024),
                 compression="zlib")
    assert p.stat().st_size < 1_000_000
    with pytest.raises(InputError, match="claims 12288x12288 pixels"):
        load_roi(p, INFO)


def test_tiny_masks_refused_and_each_axis_its_own_scale(tmp_path, make_image):
    from wsi_nuc.roi import load_roi

    with pytest.raises(InputError, match="too small"):
        load_roi(make_image("one.png", np.full((1, 1), 255, np.uint8)), INFO)
    with pytest.raises(InputError, match="aspect ratio"):
        load_roi(make_image("wide.png", np.full((10, 40), 255, np.uint8)), INFO)
    m = np.zeros((47, 35), np.uint8)         # 1:64 of 2220 x 2967, each side rounded its own way
    m[:, 34] = 255                           # the last column: must reach the slide's right edge
    r = load_roi(make_image("m.png", m), INFO)
    assert r.scale == (2220 / 35, 2967 / 47)
    assert r.contains([2219.5], [2966.5]).tolist() == [True]


# ---- one guarded decode and checks of dataset files; one validation of every scale -------------------------

def _dataset(tmp_path: Path, meta: dict, label=None, image=None) -> Path:
    from PIL import Image
    import tifffile

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(image if image is not None else np.full((32, 32, 3), 200, np.uint8)).save(root / "images" / "a.png")
    lab = np.zeros((32, 32), np.int32) if label is None else label
    tifffile.imwrite(root / "labels" / "a.tif", lab)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("meta, needle", [
    ({"mpp": 40}, "too coarse"), ({"mpp": -0.25}, "invalid resolution"), ({"mpp": "0.25um"}, "not a number"),
    ({"images": {"a": {"mpp": 0.0}}}, "invalid resolution"), ({"mpp": 0.001}, "implausible"),
    ({"split": {"val": "a"}}, "split"),
])
def test_dataset_scales_checked_by_the_slide_rules(tmp_path, meta, needle):
    from wsi_nuc.dataset import read_index

    with pytest.raises(InputError, match=needle):
        read_index(_dataset(tmp_path, meta))


def test_eval_refuses_bad_dataset_scale_empty_split_and_file_as_predictions_folder(tmp_path, capsys):
    root = _dataset(tmp_path, {"mpp": 40})
    assert main(["eval", str(root)]) == 2
    assert "too coarse" in capsys.readouterr().err
    (root / "dataset.json").write_text(json.dumps({"mpp": 0.25, "split": {"val": ["zzz"], "train": ["a"]}}))
    assert main(["eval", str(root), "--split", "val"]) == 2
    assert "names none of the images" in capsys.readouterr().err
    (root / "dataset.json").write_text(json.dumps({"mpp": 0.25}))
    f = tmp_path / "file.txt"
    f.write_text("mine")
    assert main(["eval", str(root), "--save-predictions", str(f)]) == 2
    err = capsys.readouterr().err
    assert "names a file" in err and f.read_text() == "mine"
    assert main(["eval", str(root), "--save-predictions", str(root / "labels")]) == 2
    assert "dataset's own files" in capsys.readouterr().err


@pytest.mark.parametrize("label, needle", [
    (np.zeros((16, 32), np.int32), "must match"),
    (np.zeros((32, 32, 3), np.uint8), "2-D"),
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.full((32, 32), -1, np.int32), "negative"),
    (np.full((32, 32), 1.5, np.float32), "fractional"),
])
def test_eval_labels_of_another_shape_rgb_nan_or_negative(tmp_path, label, needle):
    from wsi_nuc.dataset import load_sample

    root = _dataset(tmp_path, {"mpp": 0.25}, label=label)
    with pytest.raises(InputError, match=needle):
        load_sample(root, "a")


def test_dataset_image_bomb_refused_before_decoding(tmp_path, monkeypatch):
    import wsi_nuc.image_in as image_in
    from wsi_nuc.dataset import load_sample

    root = _dataset(tmp_path, {"mpp": 0.25})
    monkeypatch.setattr(image_in, "MAX_PIXELS", 100)     # the limit read before decoding; 32 x 32 is over it
    with pytest.raises(InputError, match="claims 32x32 pixels"):
        load_sample(root, "a")


def test_anisotropic_pixels_refused_unless_mpp_given_and_openslide_reads_ome_size(tmp_path):
    import tifffile

    from wsi_nuc.slide import open_slide

    rgb = np.full((512, 512, 3), 180, np.uint8)
    rgb[100:200, 100:200] = 60
    meta = {"axes": "YXS", "PhysicalSizeX": 0.499, "PhysicalSizeY": 0.998}
    aniso, tiled = tmp_path / "aniso.ome.tif", tmp_path / "tiled.ome.tif"
    tifffile.imwrite(aniso, rgb, ome=True, tile=(256, 256), photometric="rgb", metadata=meta)
    tifffile.imwrite(tiled, rgb, ome=True, tile=(256, 256), photometric="rgb",
                     metadata={**meta, "PhysicalSizeY": 0.499})
    with pytest.raises(InputError, match=r"not square \(0.499 x 0.998"):
        open_slide(aniso)
    with open_slide(aniso, 0.5) as r:
        assert r.info.mpp == 0.5
    with open_slide(tiled) as r:
        assert r.info.mpp == pytest.approx(0.499)    # OpenSlide's generic-TIFF view kept the OME size


# ---- settings, exit codes, locks ----------------------------------------------------------------------------

def test_settings_refused_up_front(tmp_path, capsys):
    from wsi_nuc.run_context import RunSettings
    from wsi_nuc.validate import validate_settings

    with pytest.raises(InputError, match="finite"):
        validate_settings(RunSettings(min_area_um2=math.inf))
    with pytest.raises(InputError, match="did you mean in-process"):
        validate_settings(RunSettings(scheduler="inprocess"))
    validate_settings(RunSettings(scheduler="tcp://10.0.0.1:8786"))
    for argv in (["--min-area-um2", "inf"], ["--simplify", "nan"], ["--scheduler", "inprocess"]):
        try:
            code = main(["run", "x.svs", "--out", str(tmp_path), *argv])
        except SystemExit as e:      # argparse's own checks
            code = e.code
        assert code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_file_size_limit_is_a_full_disk_and_bad_input_exceptions_map_to_exit_2(tmp_path):
    from wsi_nuc.exit_codes import as_input_error
    from wsi_nuc.validate import is_no_space

    e = OSError(errno.EFBIG, "File too large", str(tmp_path / "nuclei.csv"))
    assert is_no_space(e) and "file too large" in str(as_input_error(e, tmp_path))
    assert "nested too deeply" in str(as_input_error(RecursionError("x"), tmp_path))
    e = OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300)
    assert "File name too long" in str(as_input_error(e, tmp_path))
    assert as_input_error(ValueError("a bug"), tmp_path) is None


def test_a_link_at_the_lock_name_is_refused_not_spun_on(tmp_path):
    from wsi_nuc.lock import hold

    lock = tmp_path / ".small.lock"
    lock.symlink_to(tmp_path / "nowhere")
    done = []

    def take():
        try:
            with hold(lock, "OUT/small"):
                pass
        except InputError as e:
            done.append(str(e))

    t = threading.Thread(target=take, daemon=True)
    t.start()
    t.join(10)
    assert done and "a link (dangling)" in done[0]
    assert lock.is_symlink()


def test_long_stems_get_short_working_names():
    from wsi_nuc.ownership import work_name

    long = "L" * 240
    assert work_name("CMU-1") == "CMU-1"
    w = work_name(long)
    assert len(f".{w}.partial-{'0' * 32}".encode()) < 255 and w != work_name("L" * 239 + "M")


def test_model_building_is_one_at_a_time(monkeypatch):
    """Two threads asking for the same model (the background preload and the tile threads on resume) build
    it once: FX tracing is not thread-safe."""
    import time

    import wsi_nuc.model.engines as engines
    import wsi_nuc.predict as predict

    calls, inside = [], []

    def slow_build(*a, **k):
        inside.append(1)
        assert len(inside) == 1, "two builds at once"
        time.sleep(0.3)
        calls.append(1)
        inside.pop()
        raise RuntimeError("stop here")

    monkeypatch.setattr(engines, "build_engine", slow_build)
    errors = []

    def ask():
        try:
            predict.get_predictor(None, "cpu", None, "torch-fp32")
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == ["stop here"] * 3 and len(calls) == 3


# ---- cohorts -------------------------------------------------------------------------------------------------

def test_cohort_columns_never_overwrite_output_columns_and_roi_in_any_case(tmp_path, slides):
    from wsi_nuc.cohort.inputs import read_cohort

    csv = tmp_path / "c.csv"
    (tmp_path / "r.geojson").write_text("{}")
    csv.write_text(f"Path,slide,input_slide,ROI,MPP\n{slides / 'synthetic' / 'small.svs'},mine,also mine,"
                   f"r.geojson,0.5\n")
    c = read_cohort(csv)
    extra = c.slides[0].extra
    assert extra["input_slide"] == "mine" and extra["input_input_slide"] == "also mine"
    assert extra["roi"] == str(tmp_path / "r.geojson") and c.slides[0].mpp == 0.5


def test_batch_never_replaces_its_input_csv_nor_a_users_cohort_files(tmp_path, slides, capsys):
    out = tmp_path / "out"
    out.mkdir()
    cohort = out / "cohort.csv"
    cohort.write_text(f"path\n{slides / 'synthetic' / 'small.svs'}\n")
    assert main(["batch", str(cohort), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is where this batch writes its cohort.csv" in err and cohort.read_text().startswith("path\n")
    mine = tmp_path / "mine.csv"
    shutil.copy(cohort, mine)
    cohort.unlink()
    (out / "cohort_summary.csv").write_text("my,own,table\n1,2,3\n")
    assert main(["batch", str(mine), "--out", str(out), "--quiet"]) == 2
    assert "cohort_summary.csv: not a cohort_summary.csv that wsi-nuc wrote" in capsys.readouterr().err
    assert (out / "cohort_summary.csv").read_text() == "my,own,table\n1,2,3\n" and not cohort.exists()


def test_eval_predictions_never_replace_a_users_file_but_replace_its_own(shared, tmp_path, capsys):
    """--save-predictions into a folder holding a user's <stem>.tif: refused by name, the file untouched;
    files eval itself wrote there are replaced on the next eval."""
    from wsi_nuc.dataset import list_stems
    from wsi_nuc.dataset_checks import PREDICTIONS_LIST

    root = shared / "data" / "monuseg2018-train"
    stem = list_stems(root, "val")[0]
    out = tmp_path / "pred"
    out.mkdir()
    mine = out / f"{stem}.tif"
    mine.write_bytes(b"my own annotation")
    assert main(["eval", str(root), "--split", "val", "--save-predictions", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{stem}.tif" in err and "did not write" in err
    assert mine.read_bytes() == b"my own annotation"
    mine.unlink()
    assert main(["eval", str(root), "--split", "val", "--save-predictions", str(out)]) == 0
    written = json.loads((out / PREDICTIONS_LIST).read_text())["files"]
    assert f"{stem}.tif" in written and mine.stat().st_size > 100
    assert main(["eval", str(root), "--split", "val", "--save-predictions", str(out)]) == 0
