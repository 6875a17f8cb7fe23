"""Issue 27: the CPU engines of an INT8 model folder, per 640² tile, interleaved in one run.

    python benchmarks/bench_engines.py [--model he-types-int8] [--threads 2 1] [--rounds 5] [--json OUT]
    ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_engines.py

Per engine and thread count: ``Predictor.maps`` on one real 640² window of CMU-1-Small-Region (recolouring,
network, calibration, activations: what ``run`` calls per tile) and the network call alone, ms wall, median of
``--rounds`` rounds; each round runs every engine once (A B C A B C ...), so load on a shared machine falls on
all alike and the ratios hold better than the absolute figures. Also the load time of each engine (model
folder to a callable network) and the CPU capability torch reports.

Engines: the package's (``onnx-int8`` = ONNX Runtime on the folder's prebuilt QDQ file, the default;
``torch-int8`` = the FX INT8 graph on PyTorch's x86 engine, i.e. fbgemm on a CPU without AVX512-VNNI;
``torch-int8-onednn``; ``torch-fp32``; ``onnx-fp32``) and, when ``openvino`` is importable (``--openvino-path``
adds a folder to ``sys.path``), OpenVINO's CPU plugin compiling the same ``model.int8.onnx`` (network only:
it reads the QDQ file as FakeQuantize INT8; not an engine of the package). ONNX Runtime's and OpenVINO's
kernels pick this CPU's ISA themselves: the environment variables above force only PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared/slides/CMU-1-Small-Region.svs"
ENGINES = ["onnx-int8", "torch-int8", "torch-int8-onednn", "torch-fp32", "onnx-fp32"]


def window(size: int = 640) -> np.ndarray:
    from wsi_nuc.slide import open_slide, read_region

    r = open_slide(str(SLIDE))
    f = 0.5 / r.info.mpp
    img = read_region(r, max(0.0, r.info.width / 2 - size * f / 2), max(0.0, r.info.height / 2 - size * f / 2),
                      size * f, size * f, size, size)
    r.close()
    return img


class OpenVinoNet:
    """OpenVINO's CPU plugin on an ONNX file (network call only)."""

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        self.compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"})
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.compiled.outputs[0]]


def build(model: str, engines: list[str], threads: int, openvino: bool) -> dict:
    from wsi_nuc.model.engines import build_engine
    from wsi_nuc.model.io import read_model_config, resolve_model_dir
    from wsi_nuc.model.onnx_run import to_input_np
    from wsi_nuc.predict import Predictor
    from wsi_nuc.refine import load_lts

    torch.set_num_threads(threads)
    d = resolve_model_dir(model)
    cfg = dict(read_model_config(d), path=str(d))
    cfg.setdefault("name", d.name)
    out = {}
    for e in engines:
        t0 = time.perf_counter()
        net = build_engine(e, d, cfg, torch.device("cpu"), threads=threads)
        load_s = time.perf_counter() - t0
        lts = None if getattr(net, "post", False) else load_lts(d, cfg)
        p = Predictor(net, cfg, torch.device("cpu"), lts, e)
        if getattr(net, "post", False):
            call = (lambda n: lambda x: n.raw_np(x))(net)
        else:
            call = (lambda n: lambda x: n(torch.from_numpy(x)))(net)
        out[e] = {"predictor": p, "net": call, "load_s": load_s}
    if openvino:
        t0 = time.perf_counter()
        ov = OpenVinoNet(d / "model.int8.onnx", threads)
        out["openvino-int8"] = {"predictor": None, "net": ov.raw, "load_s": time.perf_counter() - t0,
                                "version": ov.version}
    for v in out.values():
        v["to_input"] = lambda im, c=cfg: to_input_np(im, c.get("norm"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="he-types-int8")
    ap.add_argument("--engines", nargs="+", default=ENGINES)
    ap.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--openvino-path", help="a folder with the openvino package (pip install --target)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.openvino_path:
        sys.path.insert(0, a.openvino_path)
    try:
        import openvino  # noqa: F401
        have_ov = True
    except ImportError:
        have_ov = False
    from wsi_nuc.stainnorm import lab_stats, normalise

    img = window()
    stain = lab_stats(img)
    res = {"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")
                   if k in os.environ}, "load_start": os.getloadavg(), "rows": []}
    import onnxruntime

    res["onnxruntime"] = onnxruntime.__version__
    for t in a.threads:
        cands = build(a.model, a.engines, t, have_ov)
        some = next(v["predictor"] for v in cands.values() if v["predictor"] is not None)
        x = cands[a.engines[0]]["to_input"](normalise(img, stain, some.stain_target)[None])
        times = {e: {"maps": [], "net": []} for e in cands}
        for e, c in cands.items():       # warm-up
            c["net"](x)
            if c["predictor"] is not None:
                c["predictor"].maps(img[None], stain)
        for _ in range(a.rounds):
            for e, c in cands.items():
                if c["predictor"] is not None:
                    t0 = time.perf_counter()
                    c["predictor"].maps(img[None], stain)
                    times[e]["maps"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                c["net"](x)
                times[e]["net"].append(time.perf_counter() - t0)
        for e, c in cands.items():
            row = {"engine": e, "threads": t, "load_s": round(c["load_s"], 3),
                   "maps_ms": round(1000 * statistics.median(times[e]["maps"]), 1) if times[e]["maps"] else None,
                   "net_ms": round(1000 * statistics.median(times[e]["net"]), 1)}
            if "version" in c:
                row["version"] = c["version"]
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    res["load_end"] = os.getloadavg()
    print(f"capability {res['capability']}, load {res['load_start']} -> {res['load_end']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
