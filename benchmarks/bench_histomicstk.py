"""Whole-job wall time of `wsi-nuc run` against HistomicsTK 1.4's classical nucleus pipeline, interleaved.

    python benchmarks/bench_histomicstk.py [--slide S] [--rounds 3] [--env-avx2] \\
        [--htk-python /work/htk-venv/bin/python] [--json benchmarks/results/htk-vs-wsinuc-cmu.json]

Each round runs two fresh processes, one after the other, the order alternating from round to round so that
load on a shared machine falls on both alike:

- ``htk``: ``benchmarks/htk_job.py SLIDE`` under HistomicsTK's venv (``--htk-python``): the NucleiDetection
  CLI's defaults and steps (Reinhard, colour deconvolution, threshold, Kofahi, boundary outlines, overlap
  removal, annotation file) on the whole region at level 0 in memory, one thread; its docstring says
  exactly what runs and what is timed. HistomicsTK's venv (what its import and these functions need, no
  Dask, no girder; versions as measured here, Python 3.11):

      python3 -m venv /work/htk-venv
      /work/htk-venv/bin/pip install --no-deps histomicstk==1.4.0 large-image==1.35.6 girder-slicer-cli-web==5.0.21
      /work/htk-venv/bin/pip install numpy==2.4.6 scipy==1.17.1 scikit-image==0.26.0 shapely==2.2.0 \\
          ctk-cli==1.5 cachetools palettable typing-extensions large-image-source-openslide==1.35.6

- ``wsi-nuc``: ``wsi-nuc run SLIDE --out TMP --quiet`` with default settings (``--wsi-nuc``; default: this
  checkout's ``.venv/bin/wsi-nuc``), i.e. tissue detection, tiling, the default model and engine, all
  outputs.

Per run: wall time of the whole process measured outside it (interpreter start, imports and exit included),
CPU seconds (user + sys of the process and its children, ``RUSAGE_CHILDREN`` deltas), the nucleus count
(htk: after overlap removal, as the CLI writes; wsi-nuc: ``summary.json``'s ``nucleus_count``), the 1-min
load average before and after, and the ratio wsi-nuc wall / htk wall per round; the medians go into the
table and ``--json``. Also recorded: ``torch.backends.cpu.get_cpu_capability()`` of the wsi-nuc venv in
the same environment, the CPU model, the package versions of both venvs and the wsi-nuc commit.

``--env-avx2`` runs both with ``ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2
FBGEMM_ENABLE_INSTRUCTIONS=AVX2``, to emulate an AVX2-only CPU for PyTorch (ATen kernels, oneDNN, FBGEMM).
These do not force numpy's, scipy's, scikit-image's, OpenBLAS's or ONNX Runtime's kernels, which still
pick the widest ISA of this CPU (AVX-512 where it has it), on both sides: a real AVX2 machine can differ.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SLIDE = ROOT.parent / "shared/slides/CMU-1-Small-Region.svs"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
WSI_NUC_PKGS = ["wsi-nuc", "torch", "numpy", "scipy", "scikit-image", "onnxruntime", "dask", "distributed",
                "openslide-python", "tiffslide"]
VERSIONS = ("import json, sys\nfrom importlib.metadata import version, PackageNotFoundError\n"
            "def v(p):\n    try:\n        return version(p)\n    except PackageNotFoundError:\n        return None\n"
            "out = {p: v(p) for p in sys.argv[1:]}\n"
            "if 'torch' in out and out['torch']:\n    import torch\n"
            "    out['cpu_capability'] = torch.backends.cpu.get_cpu_capability()\n"
            "print(json.dumps(out))")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def timed_run(cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` to the end; wall, CPU (the process and its children) and load before/after."""
    load0 = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": round(wall, 3), "cpu": round(cpu, 3), "load_before": load0, "load_after": os.getloadavg()[0]}


def run_htk(python: str, slide: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="htk-") as tmp:
        job = Path(tmp) / "job.json"
        out = timed_run([python, str(ROOT / "benchmarks/htk_job.py"), slide, "--json", str(job),
                         "--anot", str(Path(tmp) / "nuclei.anot")], env)
        res = json.loads(job.read_text())
    return {**out, "nuclei": res["nuclei"], "nuclei_kofahi": res["nuclei_kofahi"], "seconds": res["seconds"],
            "in_process_wall": res["in_process_wall"], "in_process_cpu": res["cpu"],
            "max_rss_mib": res["max_rss_mib"], "_job": res}


def run_wsi_nuc(exe: str, slide: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="wsi-nuc-") as tmp:
        out = timed_run([exe, "run", slide, "--out", tmp, "--quiet"], env)
        summary = json.loads(next(Path(tmp).glob("*/summary.json")).read_text())
    return {**out, "nuclei": summary["nucleus_count"], "seconds": summary.get("seconds"),
            "engine": summary.get("engine")}


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def report(res: dict, ratios: list[float]) -> dict:
    print(f"\n{'':<10}{'wall s':>9}{'CPU s':>9}{'nuclei':>9}   (medians of {len(ratios)} rounds)")
    med = {}
    for name, runs in res.items():
        med[name] = {k: median(runs, k) for k in ("wall", "cpu", "nuclei")}
        print(f"{name:<10}{med[name]['wall']:>9.2f}{med[name]['cpu']:>9.2f}{med[name]['nuclei']:>9.0f}")
    med["ratio_wall"] = round(statistics.median(ratios), 3)
    print(f"wsi-nuc wall / htk wall: median {med['ratio_wall']:.3f} (rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")
    htk = res["htk"]
    keys = list(htk[0]["seconds"])
    print("htk steps (median s): " + ", ".join(f"{k} {statistics.median(r['seconds'][k] for r in htk):.2f}"
                                               for k in keys))
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--htk-python", default="/work/htk-venv/bin/python", help="python of HistomicsTK's venv")
    ap.add_argument("--wsi-nuc", default=str(ROOT / ".venv/bin/wsi-nuc") if (ROOT / ".venv/bin/wsi-nuc").exists()
                    else shutil.which("wsi-nuc"), help="the wsi-nuc executable (its venv's python is beside it)")
    ap.add_argument("--env-avx2", action="store_true", help="both with PyTorch held to AVX2 (see the docstring)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    env = dict(os.environ, **(AVX2_ENV if a.env_avx2 else {}))
    wsi_python = str(Path(a.wsi_nuc).parent / "python")
    wsi_versions = json.loads(subprocess.run([wsi_python, "-c", VERSIONS, *WSI_NUC_PKGS], env=env, check=True,
                                             capture_output=True, text=True).stdout)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"{Path(a.slide).name}: {a.rounds} rounds, {cpu_model()}, {os.cpu_count()} cores, PyTorch capability "
          f"{wsi_versions.get('cpu_capability')}{' (forced AVX2 env)' if a.env_avx2 else ''}, wsi-nuc {commit}")
    variants = [("htk", lambda: run_htk(a.htk_python, a.slide, env)),
                ("wsi-nuc", lambda: run_wsi_nuc(a.wsi_nuc, a.slide, env))]
    res: dict[str, list[dict]] = {name: [] for name, _ in variants}
    ratios = []
    for r in range(a.rounds):
        for name, fn in (variants if r % 2 == 0 else variants[::-1]):
            out = fn()
            res[name].append(out)
            print(f"round {r + 1} {name:<8}: wall {out['wall']:.2f} s, CPU {out['cpu']:.2f} s, "
                  f"{out['nuclei']} nuclei, load {out['load_before']:.2f} -> {out['load_after']:.2f}", flush=True)
        ratios.append(round(res["wsi-nuc"][-1]["wall"] / res["htk"][-1]["wall"], 3))
    med = report(res, ratios)
    htk_job = res["htk"][0].get("_job", {})
    for run in res["htk"]:
        run.pop("_job", None)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({
            "slide": Path(a.slide).name, "rounds": a.rounds, "cpu_model": cpu_model(), "cores": os.cpu_count(),
            "env_avx2": a.env_avx2, "env_forced": AVX2_ENV if a.env_avx2 else {},
            "torch_cpu_capability": wsi_versions.pop("cpu_capability", None), "wsi_nuc_commit": commit,
            "versions": {"wsi-nuc venv": wsi_versions, "htk venv": htk_job.get("versions"),
                         "htk python": htk_job.get("python")},
            "htk": {"image": htk_job.get("image"), "params": htk_job.get("params"),
                    "threads_env": htk_job.get("threads_env")},
            "medians": med, "ratio_wall_per_round": ratios, "runs": res,
            "load_average_end": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
