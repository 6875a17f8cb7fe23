"""Outputs at scale: one slide through the new writers (and, optionally, an older checkout's writers), with
end-to-end time, peak memory, GeoJSON size (plain and gzip) and napari's first view of the labels.

    python benchmarks/bench_outputs.py SLIDE --out /tmp/bench-outputs \
        [--baseline-src DIR]            # an older source tree (e.g. `git archive main | tar -x -C DIR`)
        [--napari-python PY]            # a Python with napari + napari-ome-zarr (+ a Qt binding)
        [--napari-max-gib 4]            # napari is killed when its RSS passes this (a one-level gigapixel
                                        # label image would take ~20 GB and the machine with it)
        [--screenshots DIR]             # save napari's first view of each run as DIR/<label>.png
        [--geojson-gz]                  # the new run writes nuclei.geojson.gz (the size of the real file;
                                        # plain bytes by streaming it back); the baseline always plain
        [--json benchmarks/results/outputs-<name>.json]

Each run is ``wsi-nuc run SLIDE --out OUT --quiet`` in a child process (the source tree's package first on
PYTHONPATH); wall time and peak RSS are summed over the process tree (driver + Dask workers, sampled
every 0.2 s, as ``peak_rss.py``), with the 1-minute load average before and after each run. napari: a fresh process opens the OME-Zarr (image + label pyramid) with
napari-ome-zarr, renders one canvas screenshot as opened (napari-ome-zarr opens label layers hidden), makes
the labels visible and renders again: ``seconds_first_view`` (from the open call) is that second frame, and
its peak RSS (headless: under ``xvfb-run`` with Mesa, ``apt-get install xvfb libgl1-mesa-dri`` and Qt's
xcb libraries; the viewer window is shown on the virtual display, as a hidden one renders black).
``screenshot_mean_rgb`` > 0 says something was drawn.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
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
# a shown window: with show=False the canvas under Xvfb/Mesa renders all black (nothing is drawn)
v = napari.Viewer(show=bool(os.environ.get("DISPLAY")))
t1 = time.perf_counter()
layers = v.open(path, plugin="napari-ome-zarr")
t_open = time.perf_counter() - t1
img = v.screenshot(canvas_only=True)              # as opened: napari-ome-zarr opens labels hidden
t_image = time.perf_counter() - t1
labels = [l for l in v.layers if l.__class__.__name__ == "Labels"]
hidden = [l.name for l in labels if not l.visible]
for l in labels:
    l.visible = True
img2 = v.screenshot(canvas_only=True)             # the first view of the labels
t_view = time.perf_counter() - t1
if len(sys.argv) > 2:
    from napari.utils.io import imsave
    imsave(sys.argv[2], img2)
    if labels:
        for l in v.layers:
            l.visible = l in labels
        imsave(sys.argv[2][:-4] + "-labels-only.png", v.screenshot(canvas_only=True))
print({"seconds_napari_start": round(t1 - t0, 2), "seconds_open": round(t_open, 2),
       "seconds_first_view_as_opened": round(t_image, 2), "seconds_first_view": round(t_view, 2),
       "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
       "layers": [f"{l.__class__.__name__}:{l.name}" for l in v.layers],
       "blending": [getattr(l, "blending", None) for l in v.layers],
       "labels_opened_hidden": hidden,
       "label_levels": len(labels[0].data) if labels and labels[0].multiscale else 1,
       "label_level_shapes": [list(d.shape) for d in labels[0].data] if labels and labels[0].multiscale else None,
       "screenshot": list(img2.shape), "screenshot_mean_rgb": round(float(img2[..., :3].mean()), 1),
       "screenshot_as_opened_mean_rgb": round(float(img[..., :3].mean()), 1)})
'''


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_tree(argv, env=None) -> dict:
    """Wall time, peak RSS (sum over the process tree, largest process) and CPU time (user + system of the
    whole tree: every descendant that was waited for, which a clean run's workers are) of a command. On a
    shared machine the CPU time is the steadier figure: wall time grows with the other load."""
    cpu0 = _children_cpu_s()
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
            "cpu_s": round(_children_cpu_s() - cpu0, 1),
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


def gunzip_size(path: Path) -> int:
    """Bytes of ``path`` decompressed (streamed)."""
    n = 0
    with gzip.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += len(block)
    return n


def _load() -> float:
    return round(os.getloadavg()[0], 2)


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
    load_before = _load()
    res = run_tree([sys.executable, "-c", _DRIVER, str(src), "run", str(slide), "--out", str(out), "--quiet",
                    *extra], env=env)
    if res["exit"] != 0:
        raise SystemExit(f"{label}: exit {res['exit']}: {res['stderr']}")
    folder = out / slide.name.rsplit(".", 1)[0]
    summary = json.loads((folder / "summary.json").read_text())
    n = summary["nucleus_count"]
    gj = folder / "nuclei.geojson"
    gjz = folder / "nuclei.geojson.gz"
    used = [ln for ln in res["stderr"].splitlines() if ln.startswith("wsi_nuc from")]
    row = {"label": label, "src": str(src), "package": used[0][13:] if used else None, "nuclei": n, **{k: res[k] for k in ("wall_s", "cpu_s", "peak_rss_gib",
                                                                                 "largest_process_gib")},
           "load_avg_1m": {"before": load_before, "after": _load()}, "seconds": summary.get("seconds")}
    if gjz.exists():    # --geojson-gz: the real file's size, and its plain size streamed back
        size = gunzip_size(gjz)
        row.update(geojson_written="nuclei.geojson.gz", geojson_bytes=size,
                   geojson_bytes_per_nucleus=round(size / max(n, 1), 1), geojson_gz_bytes=gjz.stat().st_size,
                   geojson_gz_bytes_per_nucleus=round(gjz.stat().st_size / max(n, 1), 1))
    elif gj.exists():
        size = gj.stat().st_size
        gz = gz_size(gj)
        row.update(geojson_written="nuclei.geojson", geojson_bytes=size,
                   geojson_bytes_per_nucleus=round(size / max(n, 1), 1), geojson_gz_bytes=gz,
                   geojson_gz_bytes_per_nucleus=round(gz / max(n, 1), 1), geojson_gz="estimated: gzip -6 of the plain file")
    for z in ("nuclei.ome.zarr", "labels.zarr"):
        if (folder / z).exists():
            row["zarr"] = z
            row["zarr_bytes"] = dir_size(folder / z)
    row["folder"] = str(folder)
    return row


def napari_first_view(python: str, zarr_path: Path, max_gib: float = 4.0, screenshot: Path | None = None) -> dict:
    """napari in a fresh process: under ``xvfb-run`` (a virtual X server with Mesa's software OpenGL) when
    there is no display and it is installed, else Qt's offscreen platform (which has no OpenGL on
    machines without a GPU driver, where napari cannot draw). The process tree is killed when its RSS
    passes ``max_gib`` (reported as an error with the time and size it reached)."""
    import ast
    import shutil
    import signal

    env = dict(os.environ)
    cmd = [python, "-c", NAPARI_SCRIPT, str(zarr_path)] + ([str(screenshot)] if screenshot else [])
    if not env.get("DISPLAY") and shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + cmd
    else:
        env["QT_QPA_PLATFORM"] = "offscreen"
    load_before = _load()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    root = psutil.Process(p.pid)
    peak, killed = 0, None
    while p.poll() is None:
        try:
            rss = 0
            for q in [root] + root.children(recursive=True):
                try:
                    rss += q.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        el = time.perf_counter() - t0
        if peak > max_gib * 2**30 or el > 600:
            killed = (f"killed: process tree RSS {peak / 2**30:.2f} GiB > cap {max_gib} GiB after {el:.1f} s"
                      if peak > max_gib * 2**30 else f"killed: no first view after {el:.0f} s")
            os.killpg(p.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    out, err = p.communicate()
    base = {"process_wall_s": round(time.perf_counter() - t0, 2), "tree_peak_rss_gib": round(peak / 2**30, 3),
            "load_avg_1m": {"before": load_before, "after": _load()}}
    if killed:
        return {"error": killed, **base}
    if p.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}", **base}
    res = ast.literal_eval(out.strip().splitlines()[-1])
    res.update(base)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-outputs")
    ap.add_argument("--baseline-src", type=Path, help="an older source tree to compare with")
    ap.add_argument("--napari-python", help="a Python interpreter with napari and napari-ome-zarr")
    ap.add_argument("--napari-max-gib", type=float, default=4.0,
                    help="kill napari when its process tree passes this RSS (GiB)")
    ap.add_argument("--screenshots", type=Path, help="save napari's first view as DIR/<label>.png")
    ap.add_argument("--geojson-gz", action="store_true", help="the new run writes nuclei.geojson.gz")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("extra", nargs="*", help="more `wsi-nuc run` options for the new writers (after --)")
    a = ap.parse_args(argv)
    rows = []
    res = {"slide": str(a.slide), "cpu": _cpu(), "new_options": a.extra + (["--geojson-gz"] if a.geojson_gz else []),
           "runs": rows}

    def save():     # after every step, so a late failure keeps what was measured
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(res, indent=1) + "\n")

    if a.baseline_src:
        rows.append(one_run("baseline", a.baseline_src, a.slide, a.out / "baseline", []))
        print(json.dumps(rows[-1], indent=1), flush=True)
        save()
    rows.append(one_run("new", REPO, a.slide, a.out / "new", res["new_options"]))
    print(json.dumps(rows[-1], indent=1), flush=True)
    save()
    if a.napari_python:
        for row in rows:
            z = Path(row["folder"]) / row.get("zarr", "")
            if row.get("zarr"):
                shot = None
                if a.screenshots:
                    a.screenshots.mkdir(parents=True, exist_ok=True)
                    shot = a.screenshots / f"{row['label']}.png"
                row["napari"] = napari_first_view(a.napari_python, z, a.napari_max_gib, shot)
                print(row["label"], "napari", row["napari"], flush=True)
                save()
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
