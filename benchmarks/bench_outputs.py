"""Outputs at scale: one slide through the new writers (and, optionally, an older checkout's writers), with
end-to-end time, peak memory, GeoJSON size (plain and gzip) and napari's first view of the labels.

    python benchmarks/bench_outputs.py SLIDE --out /tmp/bench-outputs \
        [--baseline-src DIR]            # an older source tree (e.g. `git archive main | tar -x -C DIR`)
        [--napari-python PY]            # a Python with napari + napari-ome-zarr (+ a Qt binding)
        [--json benchmarks/results/outputs-<name>.json]

Each run is ``wsi-nuc run SLIDE --out OUT --quiet`` in a child process (the source tree's package first on
PYTHONPATH); wall time and peak RSS are summed over the process tree (driver + Dask workers, sampled
every 0.2 s, as ``peak_rss.py``). napari: a fresh process opens the OME-Zarr (image + label pyramid) with
napari-ome-zarr, renders one canvas screenshot, and reports seconds and its peak RSS (headless: under
``xvfb-run`` with Mesa, ``apt-get install xvfb libgl1-mesa-dri`` and Qt's xcb libraries).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

NAPARI_SCRIPT = r'''
import os, resource, sys, time
t0 = time.perf_counter()
import napari
path = sys.argv[1]
v = napari.Viewer(show=False)
t1 = time.perf_counter()
layers = v.open(path, plugin="napari-ome-zarr")
t_open = time.perf_counter() - t1
img = v.screenshot(canvas_only=True)
t_view = time.perf_counter() - t1
labels = [l for l in v.layers if l.__class__.__name__ == "Labels"]
print({"seconds_napari_start": round(t1 - t0, 2), "seconds_open": round(t_open, 2),
       "seconds_first_view": round(t_view, 2),
       "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
       "layers": [f"{l.__class__.__name__}:{l.name}" for l in v.layers],
       "label_levels": len(labels[0].data) if labels and labels[0].multiscale else 1,
       "screenshot": list(img.shape)})
'''


def run_tree(argv, env=None) -> dict:
    """Wall time and peak RSS (sum over the process tree, largest process) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_sum = peak_one = 0
    while proc.poll() is None:
        try:
            rss = []
            for p in [root] + root.children(recursive=True):
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            peak_sum, peak_one = max(peak_sum, sum(rss)), max(peak_one, max(rss, default=0))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_gib": round(peak_sum / 2**30, 3), "largest_process_gib": round(peak_one / 2**30, 3),
            "stdout": out[-2000:], "stderr": err[-2000:]}


def gz_size(path: Path) -> int:
    """Bytes of ``path`` gzip-compressed at level 6 (what --geojson-gz writes)."""
    n = 0
    with open(path, "rb") as fh, tempfile.TemporaryFile() as tmp:
        with gzip.GzipFile(fileobj=tmp, mode="wb", compresslevel=6) as gz:
            for block in iter(lambda: fh.read(1 << 20), b""):
                gz.write(block)
        n = tmp.tell()
    return n


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# the driver imports wsi_nuc from ``src`` even when another checkout is installed in editable mode (its
# import hook comes before sys.path); the Dask workers run the installed tile code, which the writers
# being compared do not touch
_DRIVER = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
           "sys.path.insert(0, sys.argv.pop(1)); import wsi_nuc, wsi_nuc.cli; "
           "print('wsi_nuc from', wsi_nuc.__file__, file=sys.stderr); sys.exit(wsi_nuc.cli.main(sys.argv[1:]))")


def one_run(label: str, src: Path, slide: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = run_tree([sys.executable, "-c", _DRIVER, str(src), "run", str(slide), "--out", str(out), "--quiet",
                    *extra], env=env)
    if res["exit"] != 0:
        raise SystemExit(f"{label}: exit {res['exit']}: {res['stderr']}")
    folder = out / slide.name.rsplit(".", 1)[0]
    summary = json.loads((folder / "summary.json").read_text())
    n = summary["nucleus_count"]
    gj = folder / "nuclei.geojson"
    used = [ln for ln in res["stderr"].splitlines() if ln.startswith("wsi_nuc from")]
    row = {"label": label, "src": str(src), "package": used[0][13:] if used else None, "nuclei": n, **{k: res[k] for k in ("wall_s", "peak_rss_gib",
                                                                                 "largest_process_gib")},
           "seconds": summary.get("seconds")}
    if gj.exists():
        size = gj.stat().st_size
        row.update(geojson_bytes=size, geojson_bytes_per_nucleus=round(size / max(n, 1), 1),
                   geojson_gz_bytes=gz_size(gj))
    for z in ("nuclei.ome.zarr", "labels.zarr"):
        if (folder / z).exists():
            row["zarr"] = z
            row["zarr_bytes"] = dir_size(folder / z)
    row["folder"] = str(folder)
    return row


def napari_first_view(python: str, zarr_path: Path) -> dict:
    """napari in a fresh process: under ``xvfb-run`` (a virtual X server with Mesa's software OpenGL) when
    there is no display and it is installed, else Qt's offscreen platform (which has no OpenGL on
    machines without a GPU driver, where napari cannot draw)."""
    import shutil

    env = dict(os.environ)
    cmd = [python, "-c", NAPARI_SCRIPT, str(zarr_path)]
    if not env.get("DISPLAY") and shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + cmd
    else:
        env["QT_QPA_PLATFORM"] = "offscreen"
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    import ast

    res = ast.literal_eval(p.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-outputs")
    ap.add_argument("--baseline-src", type=Path, help="an older source tree to compare with")
    ap.add_argument("--napari-python", help="a Python interpreter with napari and napari-ome-zarr")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("extra", nargs="*", help="more `wsi-nuc run` options for the new writers (after --)")
    a = ap.parse_args(argv)
    rows = []
    if a.baseline_src:
        rows.append(one_run("baseline", a.baseline_src, a.slide, a.out / "baseline", []))
        print(json.dumps(rows[-1], indent=1), flush=True)
    rows.append(one_run("new", REPO, a.slide, a.out / "new", a.extra))
    print(json.dumps(rows[-1], indent=1), flush=True)
    res = {"slide": str(a.slide), "cpu": _cpu(), "runs": rows}
    if a.napari_python:
        for row in rows:
            z = Path(row["folder"]) / row.get("zarr", "")
            if row.get("zarr"):
                row["napari"] = napari_first_view(a.napari_python, z)
                print(row["label"], "napari", row["napari"], flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


def _cpu() -> dict:
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        cap = None
    return {"cores": os.cpu_count(), "torch_cpu_capability": cap}


if __name__ == "__main__":
    sys.exit(main())
