"""The Snakemake workflow (workflows/snakemake/) on two real slides: a dry run, a real run, a resume."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflows" / "snakemake" / "Snakefile"
CONFIG = REPO / "workflows" / "snakemake" / "config.yaml"


def _snakemake() -> str:
    exe = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    if exe is None:
        pytest.skip("snakemake is not installed (pip install 'wsi-nuc[workflow]')")
    return exe


def _run(tmp_path, *args):
    cmd = [_snakemake(), "-s", str(SNAKEFILE), "--configfile", str(CONFIG), "--config",
           f"sheet={tmp_path / 'slides.csv'}", f"out={tmp_path / 'out'}", "--directory", str(tmp_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _sheet(tmp_path, slides):
    (tmp_path / "slides.csv").write_text("path,patient\n"
                                        f"{slides / 'CMU-1-Small-Region.svs'},P01\n"
                                        f"{slides / 'OS-1-detail.ome.tif'},P02\n")


def test_dry_run_plans_one_job_per_slide_and_the_table(slides, tmp_path):
    _sheet(tmp_path, slides)
    r = _run(tmp_path, "-n")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "segment" in out and "cohort_table" in out
    lines = [ln.split() for ln in out.splitlines()]
    counts = {ln[0]: int(ln[1]) for ln in lines if len(ln) == 2 and ln[1].isdigit()}
    assert counts.get("segment") == 2 and counts.get("cohort_table") == 1, counts


@pytest.mark.slow
def test_real_run_writes_the_cohort_table_and_resumes(slides, tmp_path):
    _sheet(tmp_path, slides)
    r = _run(tmp_path, "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "out" / "cohort_summary.csv", newline="") as fh:
        rows = {row["slide"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"CMU-1-Small-Region", "OS-1-detail"}
    assert rows["CMU-1-Small-Region"]["patient"] == "P01"            # sheet columns carried
    for row in rows.values():
        assert int(row["nucleus_count"]) > 100 and float(row["area_um2_median"]) > 5
    assert (tmp_path / "out" / "CMU-1-Small-Region" / "nuclei.geojson").exists()
    again = _run(tmp_path, "-n")                                    # resumable: nothing left to do
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
