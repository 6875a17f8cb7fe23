"""What a run prints: stage lines, tile lines every 10 % / 30 s for logs, a bar kept up on terminals."""
from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from wsi_nuc.cli import main
from wsi_nuc.progress import SlideProgress


def test_version(capsys):
    import wsi_nuc

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out.strip()
    from wsi_nuc.version import build_version, git_commit

    assert e.value.code == 0 and out == f"wsi-nuc {build_version()}" and out.startswith(f"wsi-nuc {wsi_nuc.__version__}")
    g = git_commit()
    if g is not None:                          # a checkout: the commit is part of the version
        assert f"+g{g['commit'][:7]}" in out


def test_version_is_pyprojects_and_summary_can_tell_builds_apart(tmp_path, monkeypatch):
    import tomllib

    import wsi_nuc
    from wsi_nuc import version as V

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == wsi_nuc.__version__ != "0.1.0"
    rec = V.software_record()
    assert rec["wsi_nuc"] == V.build_version() and len(rec["wsi_nuc_source_sha256"]) == 12
    # a changed source file gives another digest
    pkg = tmp_path / "wsi_nuc"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(V, "_PACKAGE", pkg)
    V.source_digest.cache_clear()
    d1 = V.source_digest()
    (pkg / "a.py").write_text("x = 2\n")
    V.source_digest.cache_clear()
    assert V.source_digest() != d1
    V.source_digest.cache_clear()


def test_log_lines_every_ten_percent_and_stages():
    buf = io.StringIO()
    p = SlideProgress("slide", stream=buf, tty=False)
    p.stage("tissue")
    p.start_tiles(200)
    for _ in range(200):
        p.update(1)
    for st in ("stitch", "write_geojson", "write_zarr"):
        p.stage(st)
    p.close("123 nuclei")
    lines = buf.getvalue().splitlines()
    assert all(re.match(r"\[ *\d+\.\d s\] slide: ", ln) for ln in lines)
    tiles = [ln for ln in lines if re.search(r"segmenting \d+/200 tiles \(\d+ %\)", ln)]
    assert len(tiles) == 10                                          # 10 %, 20 %, ... 100 %
    text = "\n".join(lines)
    for needle in ("opening", "finding tissue", "starting workers", "stitching", "writing nuclei.geojson",
                   "writing nuclei.ome.zarr", "123 nuclei"):
        assert needle in text, needle


def test_heartbeat_before_the_first_tile():
    buf = io.StringIO()
    p = SlideProgress("s", stream=buf, tty=False, every_s=0.2)
    p.start_tiles(3)
    time.sleep(0.7)
    p.update(3)
    p.close()
    assert buf.getvalue().count("still working") >= 2


def test_terminal_bar_stays_through_writing():
    buf = io.StringIO()
    p = SlideProgress("s", stream=buf, tty=True)
    p.start_tiles(4)
    p.update(4)
    p.stage("stitch")
    p.stage("write_qc")
    p.close("9 nuclei")
    out = buf.getvalue()
    assert "s: writing qc.png" in out and "4/4" in out and out.rstrip().endswith("tile/s]")
    assert "s: 9 nuclei" in out


def test_dashboard_line_without_bokeh(monkeypatch):
    import importlib.util

    from wsi_nuc.pipeline import _dashboard_line

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bokeh" else real(n, *a))
    assert "wsi-nuc[dashboard]" in _dashboard_line(SimpleNamespace(dashboard_link=None), None)
    assert "http://h:8787/status" in _dashboard_line(SimpleNamespace(dashboard_link="http://h:8787/status"),
                                                     "tcp://h:8786")


def test_each_stage_once_and_whole_lines_from_many_threads():
    """Writer threads announce stages at once (and the OME-Zarr writer twice): every line whole, each stage once."""
    import threading

    class Slow(io.StringIO):                  # a stream that yields between the parts of a write
        def write(self, s):
            for ch in s:
                super().write(ch)
                time.sleep(0)
            return len(s)

    buf = Slow()
    p = SlideProgress("mosaic-6k", stream=buf, tty=False)
    p.start_tiles(2)
    p.update(2)
    p.stage("stitch")
    keys = ["write_zarr", "write_geojson", "write_csv", "write_qc", "write_zarr"] * 20
    threads = [threading.Thread(target=p.stage, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close("9 nuclei")
    lines = buf.getvalue().splitlines()
    assert all(re.fullmatch(r"\[ *\d+\.\d s\] mosaic-6k: [^\[]+", ln) for ln in lines), lines
    for label in ("writing nuclei.ome.zarr", "writing nuclei.geojson", "writing nuclei.csv", "writing qc.png"):
        assert sum(ln.endswith(label) for ln in lines) == 1, label


def test_batch_line_has_totals_and_time_left():
    from wsi_nuc.cohort.progress import Progress

    t = iter([10.0, 20.0]).__next__
    p = Progress(4, io.StringIO())
    p.clock = t
    p.t0 = 0.0
    a = p.slide_progress()
    a.start_tiles(40)                          # the pipeline calls this once the tiles are planned
    a(10)                                      # first tiles at t = 10 s
    a.update(10)
    p.running = 1
    line = p.line()                            # t = 20 s: 20 tiles in 10 s since the first: 2 tiles/s
    assert "0/4 slides done" in line and "20/40 tiles of 1 slides started" in line
    # left: 20 tiles of this slide + 3 slides not started at 40 tiles each = 140 tiles at 2 tiles/s
    assert "about 70 s left" in line
