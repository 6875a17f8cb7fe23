"""Issue 24, cases that need a slide run (the 16 x 16 px synthetic slide: one tile): reruns that never delete a
user's file, resume after a kill while writing, odd file names, a corrupt SVS, signals, LC_ALL=C, a full
stdout; and the replacing of a result folder itself (:mod:`wsi_nuc.results_folder`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsi_nuc.cli import main
from wsi_nuc.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(slides, tmp_path) -> Path:
    p = tmp_path / "in" / "small.svs"
    p.parent.mkdir()
    shutil.copy(slides / "synthetic" / "small.svs", p)
    return p


def _console(args, env=None, **kw) -> subprocess.Popen:
    """``wsi-nuc ARGS`` as a console run (its own process: signals, streams, exit)."""
    return subprocess.Popen([sys.executable, "-m", "wsi_nuc.cli", *map(str, args)], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=kw.pop("stdout", subprocess.PIPE),
                            stderr=subprocess.PIPE, **kw)


# ---- reruns replace only what they wrote -------------------------------------------------------------------

def test_rerun_keeps_the_users_files_and_a_slide_kept_in_its_result_folder(small, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(small), "--out", str(out), "--quiet"]) == 0
    mine = out / "small" / "my_annotations.geojson"
    mine.write_text('{"mine": true}')
    kept = out / "small" / "small.svs"
    shutil.copy(small, kept)
    assert main(["run", str(kept), "--out", str(out), "--quiet"]) == 0      # run from inside its result folder
    assert mine.read_text() == '{"mine": true}' and kept.read_bytes() == small.read_bytes()
    summary = json.loads((out / "small" / "summary.json").read_text())
    assert "incomplete" not in summary and "my_annotations.geojson" not in summary["outputs"]
    assert sorted(p.name for p in out.iterdir()) == ["small"]        # no working files left behind


def test_rerun_refuses_to_replace_a_file_it_did_not_write(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(small), "--out", str(out), "--quiet"]) == 0
    foreign = out / "small" / "nuclei.parquet"
    foreign.write_text("my own table")
    assert main(["run", str(small), "--out", str(out), "--quiet", "--table", "both"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nuclei.parquet: not written by wsi-nuc" in err
    assert foreign.read_text() == "my own table"
    roi = out / "small" / "nuclei.geojson"           # an input among what the run replaces
    assert main(["run", str(small), "--out", str(out), "--quiet", "--roi", str(roi)]) == 2
    assert "is among the results this run replaces" in capsys.readouterr().err


def _folder(tmp_path: Path, outputs, files) -> Path:
    final = tmp_path / "out" / "s"
    final.mkdir(parents=True)
    for name in files:
        (final / name).write_text(f"old {name}")
    (final / "summary.json").write_text(json.dumps({"wsi_nuc_output": {}, "outputs": outputs}))
    return final


def _partial(tmp_path: Path, names) -> Path:
    partial = tmp_path / "out" / ".s.partial-x"
    partial.mkdir()
    for name in names:
        (partial / name).write_text(f"new {name}")
    (partial / "summary.json").write_text(json.dumps({"wsi_nuc_output": {}, "outputs": [*names, "summary.json"]}))
    return partial


def test_commit_replaces_listed_outputs_only_and_never_follows_names_out_of_the_folder(tmp_path):
    from wsi_nuc.results_folder import commit, is_complete

    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    final = _folder(tmp_path, ["nuclei.csv", "qc.png", "../precious.txt", "/etc/passwd", "summary.json"],
                    ["nuclei.csv", "qc.png", "notes.txt"])
    commit(_partial(tmp_path, ["nuclei.csv", "nuclei.geojson"]), final)
    assert sorted(p.name for p in final.iterdir()) == ["notes.txt", "nuclei.csv", "nuclei.geojson", "summary.json"]
    assert (final / "nuclei.csv").read_text() == "new nuclei.csv" and outside.read_text() == "keep"
    assert is_complete(final) and not (tmp_path / "out" / ".s.partial-x").exists()


def test_a_swap_cut_short_leaves_a_folder_that_is_not_complete_and_stays_replaceable(tmp_path, monkeypatch):
    import wsi_nuc.results_folder as rf

    final = _folder(tmp_path, ["nuclei.csv", "summary.json"], ["nuclei.csv"])
    real = os.replace
    calls = []

    def crash_on_second_move(src, dst):
        calls.append(dst)
        if len(calls) == 3:          # the pending summary, one new output; then the machine stops
            raise OSError("power cut")
        return real(src, dst)

    monkeypatch.setattr(rf.os, "replace", crash_on_second_move)
    with pytest.raises(OSError):
        rf.commit(_partial(tmp_path, ["nuclei.csv", "nuclei.parquet"]), final)
    monkeypatch.setattr(rf.os, "replace", real)
    assert not rf.is_complete(final)
    assert {"nuclei.csv", "nuclei.parquet"} <= rf.listed_outputs(final)    # the next run may replace both


# ---- resume, signals, streams (console runs) ---------------------------------------------------------------

def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - t0 > limit:
            proc.kill()
            raise AssertionError("never reached the checkpoint")
        time.sleep(0.1)


def test_kill_while_writing_then_rerun_resumes(small, tmp_path):
    """Killed while writing (every tile spooled): the rerun builds the model in the background preload and
    finishes without a traceback or an abort."""
    out, hold = tmp_path / "out", tmp_path / "hold"
    hold.mkdir()
    p = _console(["run", small, "--out", out], env={"WSI_NUC_TEST_HOLD": f"commit:{hold}"})
    _wait_for(hold / "held", p)
    p.kill()
    p.wait()
    assert not (out / "small").exists()
    r = _console(["run", small, "--out", out])
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err and (out / "small" / "summary.json").exists()


def test_sigterm_is_one_line_and_exit_143(small, tmp_path):
    out, hold = tmp_path / "out", tmp_path / "hold"
    hold.mkdir()
    p = _console(["run", small, "--out", out], env={"WSI_NUC_TEST_HOLD": f"commit:{hold}"})
    _wait_for(hold / "held", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    text = err.decode()
    assert p.returncode == 143, text[-2000:]
    assert text.strip().splitlines()[-1] == "wsi-nuc: terminated" and "Traceback" not in text
    assert "leaked" not in text and not (out / "small").exists()


def test_lc_all_c_without_utf8_mode_prints_the_result_line(small, tmp_path):
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}
    p = _console(["run", small, "--out", tmp_path / "out"], env=env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    assert b"mm" in out and b"Traceback" not in err


def test_a_full_stdout_is_named_as_stdout(slides, tmp_path):
    with open("/dev/full", "w") as full:
        p = _console(["info", slides / "synthetic" / "small.svs"], stdout=full)
        _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.decode().strip() == "wsi-nuc: error: stdout: cannot write (No space left on device)"


# ---- odd names and broken slides -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [b"esc\x1b[31mred\x1b]0;title\x07.svs", b"bad\xff\xfename.svs",
                                  b"L" * 240 + b".svs"])
def test_odd_file_names_run_and_never_reach_the_terminal_raw(slides, tmp_path, name, capfd):
    folder = os.fsencode(tmp_path)
    slide = os.path.join(folder, name)
    shutil.copy(slides / "synthetic" / "small.svs", slide)
    out = tmp_path / "out"
    assert main(["run", os.fsdecode(slide), "--out", str(out)]) == 0
    cap = capfd.readouterr()
    assert "\x1b" not in cap.err and "\x1b" not in cap.out and "\x07" not in cap.err
    (result,) = [p for p in out.iterdir()]
    assert (result / "nuclei.csv").read_text(encoding="utf-8").startswith("slide,")


def test_tile_offsets_past_the_end_of_an_svs_is_one_line(slides, tmp_path, capsys):
    import struct

    import tifffile

    p = tmp_path / "past.svs"
    shutil.copy(slides / "CMU-1-Small-Region.svs", p)
    size = p.stat().st_size
    with tifffile.TiffFile(p) as tf:
        tag = tf.pages[0].tags["TileOffsets"]
        n, where = tag.count, tag.valueoffset
    with open(p, "r+b") as fh:
        fh.seek(where)
        offsets = list(struct.unpack(f"<{n}I", fh.read(4 * n)))
        offsets[n // 2:] = [size + 1_000_000 + 1000 * i for i in range(n - n // 2)]
        fh.seek(where)
        fh.write(struct.pack(f"<{n}I", *offsets))
    code = main(["run", str(p), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "past.svs" in err
    assert not (tmp_path / "out" / "past").exists()
