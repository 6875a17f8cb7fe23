"""One slide, two source trees of wsi-nuc (a baseline commit and this one), interleaved, in one benchmark run.

    git archive 198e24d | tar -x -C /tmp/base        # main when the issues 13-15 were filed
    python benchmarks/bench_versions.py SLIDE --baseline-src /tmp/base [--rounds 1] [--isa avx2]
        [--baseline-qengine fbgemm] [--compare-labels] [--out DIR] [--json FILE] [--run-args "--roi R.geojson"]

Each run is a whole `wsi-nuc run SLIDE` process (default settings, `--quiet`) of that tree, through
``bench_outputs.run_tree``: wall time, CPU time of the process tree and peak RSS summed over it. Mpx/s is the
tissue area at the working scale (``summary.json``: tissue_area_mm2 / working_mpp²) per wall second.

``--isa avx2`` sets ``ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` for both
trees: PyTorch's ATen, oneDNN and fbgemm kernels then run AVX2 code on an AVX-512 CPU (numpy, OpenCV,
scikit-image and ONNX Runtime are not forced). PyTorch's x86 quantized engine picks its library by the CPU's
VNNI flag, which nothing hides: on an AVX2-only CPU it runs fbgemm, here oneDNN. ``--baseline-qengine
fbgemm`` makes the baseline tree do what it does on an AVX2-only CPU: its INT8 backend constant (``BACKEND``
in ``wsi_nuc/train/quantize.py`` or ``wsi_nuc/model/int8.py``, "x86") is rewritten to "fbgemm" in a copy of
the tree. The current tree chooses its engine itself (``--engine auto``).

``--compare-labels`` (small slides): F1 at IoU 0.5 between the two trees' level-0 label images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_outputs import _load, one_run  # noqa: E402

ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}}


def with_qengine(src: Path, qengine: str, dst: Path) -> Path:
    """A copy of the tree ``src`` whose INT8 backend constant is ``qengine``."""
    shutil.copytree(src / "wsi_nuc", dst / "wsi_nuc")
    hits = 0
    for rel in ("wsi_nuc/train/quantize.py", "wsi_nuc/model/int8.py"):
        f = dst / rel
        if f.is_file():
            text, n = re.subn(r'^BACKEND = "x86"', f'BACKEND = "{qengine}"', f.read_text(), flags=re.M)
            f.write_text(text)
            hits += n
    if not hits:
        raise SystemExit(f"{src}: no BACKEND = \"x86\" to rewrite")
    return dst


def labels_level0(folder: Path):
    import numpy as np
    import zarr

    for rel in ("nuclei.ome.zarr/labels/nuclei", "labels.zarr"):
        if (folder / rel).exists():
            return np.asarray(zarr.open_group(str(folder / rel), mode="r")["0"][:]).astype(np.int64)
    raise SystemExit(f"{folder}: no label image")


def row_of(label: str, res: dict) -> dict:
    s = json.loads((Path(res["folder"]) / "summary.json").read_text())
    mpx = s["tissue_area_mm2"] * 1e6 / (s["working_mpp"] ** 2) / 1e6
    return {"label": label, "wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "peak_rss_gib": res["peak_rss_gib"],
            "largest_process_gib": res["largest_process_gib"], "nuclei": res["nuclei"],
            "tissue_mpx": round(mpx, 1), "tissue_mpx_per_s": round(mpx / res["wall_s"], 3),
            "engine": (s.get("engine") or {}).get("name", "torch-int8 (x86 backend)"),
            "tiles": (s.get("tiles") or {}).get("count"), "seconds": res["seconds"],
            "load_avg_1m": res["load_avg_1m"], "folder": res["folder"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--baseline-src", type=Path, required=True)
    ap.add_argument("--baseline-qengine", choices=("fbgemm", "onednn"))
    ap.add_argument("--isa", choices=sorted(ISA_ENV))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--compare-labels", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--run-args", default="", help="more arguments for both trees' `wsi-nuc run`, one string "
                    "(e.g. \"--roi region.geojson --scheduler local\")")
    a = ap.parse_args(argv)
    import torch

    os.environ.update(ISA_ENV.get(a.isa, {}))
    out = a.out or Path(tempfile.mkdtemp(prefix="wsi-nuc-versions-"))
    base = a.baseline_src.resolve()
    if a.baseline_qengine:
        base = with_qengine(base, a.baseline_qengine, out / f"baseline-src-{a.baseline_qengine}")
    trees = [("baseline", base), ("current", HERE.parent)]
    rows = []
    for r in range(a.rounds):
        for label, src in trees:
            dst = out / f"{label}-{r}"
            if dst.exists():
                shutil.rmtree(dst)
            row = row_of(label, one_run(label, src, a.slide, dst, shlex.split(a.run_args)))
            row["round"] = r
            rows.append(row)
            print(f"round {r} {label:9s} {row['wall_s']:8.1f} s wall {row['cpu_s']:8.1f} CPU-s "
                  f"{row['tissue_mpx_per_s']:6.3f} Mpx/s  peak {row['peak_rss_gib']:.2f} GiB  "
                  f"{row['nuclei']} nuclei  {row['engine']}  load {row['load_avg_1m']}", flush=True)
    res = {"command": "python benchmarks/bench_versions.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "slide": str(a.slide), "baseline_src": str(a.baseline_src), "baseline_qengine": a.baseline_qengine,
           "isa_env": ISA_ENV.get(a.isa, {}), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu": platform.processor() or _cpu_model(), "cores": os.cpu_count(), "rows": rows}
    if a.compare_labels:
        from wsi_nuc.metrics import f1_at

        la, lb = (labels_level0(Path(next(x for x in rows if x["label"] == k)["folder"])) for k in ("baseline", "current"))
        res["f1_iou05_baseline_vs_current"] = round(float(f1_at(la, lb, 0.5)), 4)
        print("F1 at IoU 0.5, baseline vs current:", res["f1_iou05_baseline_vs_current"])
    for label in ("baseline", "current"):
        rr = [x for x in rows if x["label"] == label]
        res[f"{label}_median_mpx_per_s"] = sorted(x["tissue_mpx_per_s"] for x in rr)[len(rr) // 2]
    res["speedup"] = round(res["current_median_mpx_per_s"] / res["baseline_median_mpx_per_s"], 3)
    print(f"current / baseline: {res['speedup']:.2f}x ({res['current_median_mpx_per_s']} vs "
          f"{res['baseline_median_mpx_per_s']} Mpx/s of tissue); CPU capability {res['cpu_capability']}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
