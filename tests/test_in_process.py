"""A small slide runs in this process (no LocalCluster, the model loaded once) with the cluster's outputs."""
from __future__ import annotations

import json

import pytest

from wsi_nuc.errors import InputError
from wsi_nuc.graph import IN_PROCESS_MAX_TILES, in_process
from wsi_nuc.pipeline import RunSettings, run_slide


def test_which_path():
    assert in_process(None, IN_PROCESS_MAX_TILES) and not in_process(None, IN_PROCESS_MAX_TILES + 1)
    assert in_process("auto", 1) and in_process("in-process", 10_000)
    assert not in_process("local", 1) and not in_process("tcp://h:8786", 1)
    assert not in_process(None, 1, client=object())          # a client given: that cluster


def test_small_slide_in_process_gives_the_cluster_nuclei(slides, tmp_path, monkeypatch, capsys):
    """CMU-1-Small-Region with 1024-px tiles (several tiles, so the two tile threads both work): once on a
    LocalCluster, once by default, which must not touch Dask; the outputs are byte for byte the same."""
    import wsi_nuc.graph as graph

    slide = slides / "CMU-1-Small-Region.svs"
    cl = run_slide(slide, tmp_path / "cluster", RunSettings(tile=1024, quiet=True, scheduler="local", workers=1))

    def no_dask(*a, **k):
        raise AssertionError("a small slide started Dask")

    monkeypatch.setattr(graph, "run_tiles", no_dask)
    capsys.readouterr()
    here = run_slide(slide, tmp_path / "here", RunSettings(tile=1024))
    err = capsys.readouterr().err                       # not a terminal: plain progress lines
    assert "loading the model" in err and "starting workers" not in err and "segmenting 0/" in err
    assert "model" in here["seconds"] and "model" not in cl["seconds"]
    assert here["nucleus_count"] == cl["nucleus_count"] > 1000
    a, b = tmp_path / "cluster" / "CMU-1-Small-Region", tmp_path / "here" / "CMU-1-Small-Region"
    assert (a / "nuclei.csv").read_bytes() == (b / "nuclei.csv").read_bytes()
    fa = json.loads((a / "nuclei.geojson").read_text())["features"]
    fb = json.loads((b / "nuclei.geojson").read_text())["features"]
    assert fa == fb


def test_batch_refuses_in_process(tmp_path, slides):
    from wsi_nuc.cohort import run_cohort

    with pytest.raises(InputError, match="in-process"):
        run_cohort(str(slides / "OS-1-detail.ome.tif"), tmp_path, RunSettings(scheduler="in-process"))
