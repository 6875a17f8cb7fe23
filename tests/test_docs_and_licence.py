"""The README a newcomer reads (short, the test command CI runs, links that resolve) and the weights' licence
wherever a result is reported (wsi-nuc models, pyproject)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && "
                "python -m pytest -q")


def test_readme_is_short_and_keeps_the_ci_test_command():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    i = lines.index("<!-- test-command -->")
    assert lines[i + 1] == "```bash" and lines[i + 2] == TEST_COMMAND       # .ci/run reads this line


def test_readme_first_screen_names_the_licences_and_links_resolve():
    text = (REPO / "README.md").read_text()
    first = "\n".join(text.splitlines()[:15])
    assert "CC BY-NC-SA 4.0" in first and "research use only" in first and "Apache-2.0" in first
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (REPO / target).exists(), target
    for page in ("outputs", "models-and-training", "performance", "reliability", "development"):
        assert (REPO / "docs" / f"{page}.md").is_file()
        assert f"docs/{page}.md" in text


def test_no_work_sessions_in_the_docs():
    for p in [REPO / "README.md", REPO / "workflows" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        hits = re.findall(r"\b[Ss]essions? \d", p.read_text())
        assert not hits, (p.name, hits)


def test_models_lists_each_licence(capsys):
    from wsi_nuc.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if "he-types-int8" in ln)
    assert row.rstrip().endswith("CC BY-NC-SA 4.0 (MoNuSeg) + research use only (CoNSeP)")
    fluo = next(ln for ln in out.splitlines() if "fluo-nuclei" in ln)
    assert fluo.rstrip().endswith("CC0 1.0")
    assert "Apache-2.0" in out


def test_pyproject_says_the_weights_licence_and_drops_geojson():
    with open(REPO / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    lic = project["license"]["text"]
    assert "Apache-2.0" in lic and "CC BY-NC-SA 4.0" in lic and "research use only" in lic
    assert not any(d.startswith("geojson") for d in project["dependencies"])
    assert any(d.startswith("snakemake") for d in project["optional-dependencies"]["workflow"])
