"""Units of the safety rules (no cluster, no subprocess): locks, the data-only tile spool, what may be
replaced in an output folder, settings and model-folder checks, CSV cells, full disks."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from wsi_nuc import lock as L
from wsi_nuc import ownership as O
from wsi_nuc import spool as S
from wsi_nuc.errors import InputError, one_line
from wsi_nuc.pipeline import RunSettings


# ------------------------------------------------------------------------------------------- lock

def test_lock_busy_stale_and_foreign(tmp_path):
    lk = tmp_path / ".x.lock"
    with L.hold(lk, "OUT/x") as me:
        assert L.read_owner(lk) == me and me.pid == os.getpid()
        with pytest.raises(InputError, match=r"OUT/x: another wsi-nuc run is writing it \(pid \d+\); pass --wait"):
            with L.hold(lk, "OUT/x"):
                pass
    assert not lk.exists()
    # a dead process's lock, and a live pid whose process started at another time (pid reuse), are stale
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for text in (f"{socket.gethostname()} {dead} - t1\n", f"{socket.gethostname()} {os.getpid()} 1 t2\n"):
        lk.write_text(text)
        with L.hold(lk, "OUT/x"):
            assert L.read_owner(lk).token not in ("t1", "t2")
        assert not lk.exists()
    # another host's lock cannot be judged from here: respected
    lk.write_text("other-host.example 123 - t3\n")
    with pytest.raises(InputError, match="pid 123 on other-host.example"):
        with L.hold(lk, "OUT/x"):
            pass
    lk.write_text("garbage")
    with pytest.raises(InputError, match="is not a wsi-nuc lock file"):
        with L.hold(lk, "OUT/x"):
            pass
    assert lk.read_text() == "garbage"          # never removed by someone who does not own it


def test_lock_release_keeps_a_lock_it_does_not_own(tmp_path):
    lk = tmp_path / ".x.lock"
    with L.hold(lk, "x"):
        lk.write_text(f"{socket.gethostname()} {os.getpid()} - someone-else\n")
    assert lk.exists()


def test_wait_polls_until_free(tmp_path, monkeypatch):
    lk = tmp_path / ".x.lock"
    lk.write_text("other-host 1 - t\n")
    said, sleeps = [], []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) == 3:
            lk.unlink()

    monkeypatch.setattr(L.time, "sleep", sleep)
    with L.hold(lk, "OUT/x", wait=True, on_wait=said.append):
        pass
    assert len(sleeps) == 3 and said == ["OUT/x: waiting for another wsi-nuc run (pid 1 on other-host) to finish"]


# ------------------------------------------------------------------------------------------- spool

def _tile(key="r00001_c00002"):
    from wsi_nuc.segment import TileNuclei
    from wsi_nuc.tiling import Box

    rng = np.random.default_rng(0)
    return TileNuclei(key, 1, 2, Box(128, 256, 256, 384), rng.normal(size=(30, 2)), np.array([0, 10, 30]),
                      np.array([3.0, -1.0]), {"area_um2": np.array([12.5, 30.0]), "nucleus_id": np.array([1, 2]),
                                                 "type": np.array(["", "inflammatory"])})


def test_spool_round_trip_and_rejections(tmp_path):
    folder = tmp_path / ".s.tiles-k1"
    sp = S.load(folder, "k1")
    tn = _tile()
    S.save(sp, tn)
    back = S.load(folder, "k1").done[tn.key]
    assert back.key == tn.key and back.core == tn.core and (back.row, back.col) == (1, 2)
    assert np.array_equal(back.coords, tn.coords) and np.array_equal(back.offsets, tn.offsets)
    assert all(np.array_equal(back.columns[c], tn.columns[c]) for c in tn.columns)
    good = folder / f"{tn.key}{S.SUFFIX}"
    with pytest.raises(ValueError, match="other settings"):
        S.read_tile(good, "k2")
    renamed = folder / f"r00005_c00005{S.SUFFIX}"
    shutil.copy(good, renamed)
    with pytest.raises(ValueError, match="file name"):
        S.read_tile(renamed, "k1")
    # a flipped byte: the zip's CRC catches it; data changed consistently (CRC recomputed): our checksum
    b = bytearray(good.read_bytes())
    b[b.find(tn.coords.tobytes()[:16])] ^= 1
    (tmp_path / "other").mkdir()
    flipped = tmp_path / "other" / good.name
    flipped.write_bytes(bytes(b))
    with pytest.raises(Exception, match="CRC"):
        S.read_tile(flipped, "k1")
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["coords"][0, 0] += 1
    np.savez(flipped, **arrays)
    with pytest.raises(ValueError, match="checksum"):
        S.read_tile(flipped, "k1")


def test_spool_never_unpickles_and_never_deletes_foreign_files(tmp_path, capsys):
    folder = tmp_path / ".s.tiles-k1"
    folder.mkdir()
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "r00000_c00000.pkl").write_bytes(pickle.dumps(Evil()))
    np.savez(folder / f"r00000_c00001{S.SUFFIX}", meta=np.array([Evil()], dtype=object))
    (folder / "notes.txt").write_text("mine")
    sp = S.load(folder, "k1")
    assert not marker.exists() and not sp.done and len(sp.foreign) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ignored 3 files" in err and "not deleted" in err
    tn = _tile("r00000_c00001")
    S.save(sp, tn)                  # a foreign file holds this tile's name: left alone, tile not spooled
    S.save(sp, _tile("r00000_c00002"))
    S.finish(sp, ".s.tiles-")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "r00000_c00000.pkl",
                                                       f"r00000_c00001{S.SUFFIX}"]
    assert "left in place" in capsys.readouterr().err


def test_finish_removes_its_spool_and_reports_other_settings(tmp_path, capsys):
    a = S.load(tmp_path / ".s.tiles-k1", "k1")
    S.save(a, _tile())
    b = S.load(tmp_path / ".s.tiles-k2", "k2")
    S.save(b, _tile())
    (tmp_path / ".s.tiles-k1" / ".r00000_c00000.999999999.tmp").write_bytes(b"half")   # a dead writer's
    a = S.load(tmp_path / ".s.tiles-k1", "k1")
    S.finish(a, ".s.tiles-")
    assert not (tmp_path / ".s.tiles-k1").exists() and (tmp_path / ".s.tiles-k2").exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and ".s.tiles-k2: a tile spool of an unfinished run" in err[0]


# --------------------------------------------------------------------------------------- ownership

def test_check_slot(tmp_path):
    slide = tmp_path / "a.svs"
    slide.write_bytes(b"x" * 5000)
    ident = O.slide_identity(slide)
    final = tmp_path / "out" / "a"
    O.check_slot(final, ident)                                     # nothing there
    final.parent.mkdir()
    final.write_text("user")
    with pytest.raises(InputError, match="a file is in the way"):
        O.check_slot(final, ident, overwrite=True)
    final.unlink()
    final.symlink_to(tmp_path)
    with pytest.raises(InputError, match="a link is in the way"):
        O.check_slot(final, ident, overwrite=True)
    final.unlink()
    final.mkdir()
    with pytest.raises(InputError, match="did not write"):
        O.check_slot(final, ident, overwrite=True)
    (final / "summary.json").write_text(json.dumps({O.MARKER: O.marker(ident)}))
    O.check_slot(final, ident)                                     # ours, same slide
    moved = tmp_path / "moved.svs"
    shutil.copy(slide, moved)
    O.check_slot(final, O.slide_identity(moved))                   # same content elsewhere: same slide
    other = tmp_path / "b.svs"
    other.write_bytes(b"y" * 5000)
    with pytest.raises(InputError, match=f"another slide with the same name \\({slide}\\); pass --overwrite"):
        O.check_slot(final, O.slide_identity(other))
    O.check_slot(final, O.slide_identity(other), overwrite=True)
    # a result written before markers existed: wsi-nuc's, the slide known by its path
    (final / "summary.json").write_text(json.dumps({"software": {"wsi_nuc": "0.1"}, "slide": {"path": str(slide)}}))
    O.check_slot(final, ident)
    with pytest.raises(InputError, match="another slide"):
        O.check_slot(final, O.slide_identity(other))


def test_atomic_dir_veto_and_unique_partials(tmp_path):
    from wsi_nuc.writers.atomic import atomic_dir

    final = tmp_path / "a"
    final.mkdir()
    (final / "keep").write_text("1")

    def veto(p):
        raise InputError("not ours")

    with pytest.raises(InputError):
        with atomic_dir(final, before_replace=veto) as d1:
            with atomic_dir(final) as d2:           # a concurrent writer gets its own partial folder
                assert d1 != d2 and d1.exists()
                (d2 / "new").write_text("2")
            (d1 / "x").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and (final / "new").exists()


def test_clean_stale_work_only_touches_our_names(tmp_path):
    for n in (".a.partial-" + "0" * 32, ".a.old-" + "1" * 32, ".a.partial", ".ab.partial", "a", ".a.notes"):
        (tmp_path / n).mkdir()
    for n in (".a.lock." + "2" * 32 + ".tmp", ".a.lock." + "3" * 32 + ".stale", ".a.lock.mine.tmp"):
        (tmp_path / n).write_text("x")
    O.clean_stale_work(tmp_path, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock.mine.tmp", ".a.notes", ".ab.partial", "a"]


def test_reserved_stems():
    assert O.reserved("cohort.csv") and O.reserved("Cohort_Summary.CSV") and not O.reserved("cohort")
    with pytest.raises(InputError, match="reserved"):
        O.check_stem("x/cohort.csv.svs", "cohort.csv")


# ---------------------------------------------------------------------------------------- settings

def test_validate_settings():
    from wsi_nuc.validate import validate_settings

    st, notes = validate_settings(RunSettings(tile=100, halo=1))
    assert (st.tile, st.halo) == (112, 16) and notes == [
        "--tile 100 rounded up to 112 (tiles are cut on the model's 16-px grid)",
        "--halo 1 rounded up to 16 (tiles are cut on the model's 16-px grid)"]
    assert validate_settings(RunSettings()) == (RunSettings(), [])
    for kw, msg in (({"tile": 7}, "--tile 7"), ({"tile": 100000}, "--tile 100000"), ({"halo": -1}, "--halo -1"),
                    ({"halo": 10000}, "--halo 10000"), ({"batch": 0}, "--batch 0"), ({"workers": 0}, "--workers 0"),
                    ({"tile": 2.5}, "--tile 2.5"), ({"halo": 0}, "--halo 0: must be more than the 8-px ownership"),
                    ({"halo": 16, "margin": 16}, "--halo 16: must be more than the 16-px"), ({"margin": -1}, "margin -1"),
                    ({"table": "xls"}, "--table 'xls': must be one of csv"), ({"device": "tpu"}, "--device 'tpu'"),
                    ({"simplify": -1.0}, "--simplify -1.0"), ({"min_area_um2": float("nan")}, "--min-area-um2 nan"),
                    ({"tiles_per_task": 0}, "tiles_per_task 0")):
        with pytest.raises(InputError, match=msg):
            validate_settings(RunSettings(**kw))


def test_run_slide_validates_too(tmp_path):
    from wsi_nuc.pipeline import run_slide

    with pytest.raises(InputError, match="--halo -1"):
        run_slide(tmp_path / "none.svs", tmp_path / "out", RunSettings(halo=-1))


# ------------------------------------------------------------------------------------------- model

def test_shipped_models_pass_and_shapes_match_the_network():
    from wsi_nuc.model.io import check_model_dir, expected_shapes, resolve_model_dir, shipped_models
    from wsi_nuc.model.net import NetConfig, UNet

    for name in shipped_models():
        cfg = check_model_dir(resolve_model_dir(name))
        if cfg["arch"].get("kind") == "mobileunet":     # header checked; shapes against the built network
            from safetensors import safe_open

            from wsi_nuc.model.net import build_net

            sd = build_net(cfg["arch"]).state_dict()
            with safe_open(str(resolve_model_dir(name) / "model.safetensors"), "pt") as fh:
                assert {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()} == \
                    {k: tuple(v.shape) for k, v in sd.items()}
        elif not cfg.get("quantized"):
            sd = UNet(NetConfig.from_dict(cfg["arch"])).state_dict()
            assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(cfg["arch"])
    typed = NetConfig(base=8, depth=3, types=("other", "inflammatory")).to_dict()     # with a type head
    sd = UNet(NetConfig.from_dict(typed)).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(typed)


def test_damaged_model_folders(tmp_path):
    from wsi_nuc.model.io import check_model_dir, resolve_model_dir

    src = resolve_model_dir("he-student-int8")

    def copy(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    d = copy("trailing")
    with open(d / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(InputError, match="trailing bytes"):
        check_model_dir(d)
    d = copy("header")
    w = d / "model.safetensors"
    w.write_bytes((10 ** 12).to_bytes(8, "little") + w.read_bytes()[8:])
    with pytest.raises(InputError, match="no valid safetensors header"):
        check_model_dir(d)
    d = copy("lts")
    (d / "lts.safetensors").write_bytes(b"abc")
    with pytest.raises(InputError, match="lts.safetensors: damaged"):
        check_model_dir(d)
    d = copy("list-config")
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a model config"):
        check_model_dir(d)
    d = copy("stain")
    cfg = json.loads((d / "config.json").read_text())
    cfg["stain_norm"]["std"] = [1, 0, 1]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="stain_norm"):
        check_model_dir(d)
    d = copy("int8-arch")
    cfg = json.loads((d / "config.json").read_text())
    cfg["arch"]["max_channels"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="do not match config.json's arch"):
        check_model_dir(d)


# ----------------------------------------------------------------------------------- stain / colour

def test_check_colour():
    from wsi_nuc.stainnorm import LabStats, check_colour

    check_colour(LabStats((52.8, 29.2, -13.2), (18.7, 9.6, 8.2)), "he.svs")       # the models' own target
    check_colour(None, "glass.svs")
    with pytest.raises(InputError, match="looks greyscale"):
        check_colour(LabStats((49.6, 0.0, 0.0), (19.2, 0.0004, 0.0008)), "grey.tif")
    with pytest.raises(InputError, match="does not look like H&E"):
        check_colour(LabStats((60.0, 20.0, 10.0), (15.0, 0.2, 0.3)), "sepia.tif")  # tinted greyscale


# ------------------------------------------------------------------------------------ errors / CSV

def test_one_line_escapes_control_characters():
    assert one_line("a\nb\r\tc\x1b[0m\u2028d") == "a\\nb\\r\\tc\\x1b[0m\\u2028d"
    assert one_line("µm – ok") == "µm – ok"


def test_csv_cells_neutralised_and_restored(tmp_path):
    import csv

    from wsi_nuc.writers.table import restore_cell, write_csv

    vals = ["=1+2", "+A1", "-2+3", "@SUM(A1)", "\tx", "'quoted", "-1.5", "+3", "1e-3", "plain", ""]
    write_csv(tmp_path / "t.csv", ["v", "=h"], [{"v": v, "=h": 1} for v in vals])
    rows = list(csv.reader(open(tmp_path / "t.csv", newline="")))
    assert rows[0] == ["v", "'=h"]
    got = [r[0] for r in rows[1:]]
    assert got[:6] == ["'" + v for v in vals[:6]] and got[6:] == vals[6:]
    assert [restore_cell(g) for g in got] == vals


def test_quiet_libraries():
    import logging
    import warnings

    from wsi_nuc.errors import quiet_libraries

    with warnings.catch_warnings():
        quiet_libraries()
        assert logging.getLogger("tifffile").getEffectiveLevel() == logging.CRITICAL
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("default")
            quiet_libraries()
            warnings.warn_explicit("odd tag", UserWarning, "tifffile.py", 1, module="tifffile")
        assert not w


# ---------------------------------------------------------------------------------------- full disk

def test_no_space_is_one_line_naming_the_folder(tmp_path):
    from wsi_nuc.validate import is_no_space, no_space

    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "nuclei.csv"))
    wrapped = RuntimeError("zarr failed")
    wrapped.__cause__ = e
    assert is_no_space(wrapped) and not is_no_space(RuntimeError("x"))
    msg = str(no_space(tmp_path, wrapped))
    assert msg.startswith(f"{tmp_path}: no space left on device (writing nuclei.csv)")


def test_check_output_dir_needs_some_room(tmp_path, monkeypatch):
    from collections import namedtuple

    from wsi_nuc import validate as V

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(V.shutil, "disk_usage", lambda p: usage(10, 10, 4096))
    with pytest.raises(InputError, match="no space left on device \\(4 KiB free\\)"):
        V.check_output_dir(tmp_path)


def test_other_networks_pass_the_header_check_and_set_the_tile_grid(tmp_path):
    from wsi_nuc.model.io import check_model_dir, save_model
    from wsi_nuc.model.net import build_net
    from wsi_nuc.validate import tile_align, validate_settings

    d = save_model(build_net({"kind": "mobileunet"}), tmp_path / "mu", {"name": "mu", "mpp": 0.5})
    cfg = check_model_dir(d)
    assert tile_align(cfg) == 32
    st, notes = validate_settings(RunSettings(tile=100, halo=64), tile_align(cfg))
    assert (st.tile, st.halo) == (128, 64) and notes == [
        "--tile 100 rounded up to 128 (tiles are cut on the model's 32-px grid)"]
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4])
    with pytest.raises(InputError, match="truncated"):
        check_model_dir(d)
