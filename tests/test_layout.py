"""The shape of the code: what a Dask worker imports, and how big modules and functions are (issue 13)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "wsi_nuc"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# One real tile task in a fresh interpreter, as a worker runs it (the function arrives by reference, so the
# worker imports wsi_nuc.graph and whatever the task imports); then the wsi_nuc modules it loaded.
WORKER = r"""
import json, sys
from wsi_nuc.graph import Geometry, TaskSettings, process_tiles
from wsi_nuc.model.io import read_model_config, resolve_model_dir
from wsi_nuc.tiling import Scale, make_grid

slide, mpp = sys.argv[1], 0.499
model = resolve_model_dir(None, "cpu")
cfg = read_model_config(model)
grid = make_grid(256, 256, 128, 32, margin=8)
geom = Geometry(slide, None, Scale(mpp, 0.5))
ts = TaskSettings(str(model), "cpu", 1, None, dict(cfg.get("postprocess") or {}), None, True)
tn = process_tiles(geom, [next(iter(grid))], ts)
print(json.dumps({"nuclei": int(tn[0].n), "modules": sorted(m for m in sys.modules if m.startswith("wsi_nuc"))}))
"""


def test_a_worker_imports_neither_training_nor_writers(slides):
    p = subprocess.run([sys.executable, "-c", WORKER, str(slides / "CMU-1-Small-Region.svs")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["nuclei"] > 0                      # the task really ran
    assert "wsi_nuc.graph" in got["modules"] and "wsi_nuc.predict" in got["modules"]
    bad = [m for m in got["modules"] if m.startswith(("wsi_nuc.train", "wsi_nuc.writers"))]
    assert not bad, f"a worker loads {bad}"


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "models" not in p.relative_to(PKG).parts[:1])


def test_no_module_over_400_lines():
    big = {str(p.relative_to(PKG)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def long_functions(limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``module:line name`` -> lines, for every function (or method) of wsi_nuc longer than ``limit`` lines."""
    out = {}
    for p in _modules():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit:
                out[f"{p.relative_to(PKG)}:{n.lineno} {n.name}"] = n.end_lineno - n.lineno + 1
    return out


# Functions over the limit when the test was written; the list may only shrink (remove a name when it is split).
KNOWN_LONG: set[str] = set()     # every function over the limit has been split


def test_no_new_function_over_60_lines():
    new = {k: v for k, v in long_functions().items() if k.split()[-1] not in KNOWN_LONG}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines: {new}"
