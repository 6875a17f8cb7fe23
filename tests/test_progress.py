"""What a run prints: stage lines, tile lines every 10 % / 30 s for logs, a bar kept up on terminals."""
from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest

from wsi_nuc.cli import main
from wsi_nuc.progress import SlideProgress


def test_version(capsys):
    import wsi_nuc

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"wsi-nuc {wsi_nuc.__version__}"


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
