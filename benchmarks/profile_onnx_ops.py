"""Where an ONNX network's time goes, per operator type and per node: ONNX Runtime's own profiler.

    python benchmarks/profile_onnx_ops.py [MODEL_DIR_OR_ONNX ...] [--size 640] [--threads 1] [--runs 4]
        [--top 15] [--json F]

Each model (a model folder's ``model.int8.onnx``, else its ``model.onnx``, or an ``.onnx`` file; default:
the shipped default's) runs ``--runs`` times on one (1, 3, size, size) input after two warm-up runs, with the
CPU provider, ``--threads`` intra-op threads and every graph optimisation, as ``wsi-nuc run`` sets it up
(:class:`wsi_nuc.model.onnx_run.OnnxNet`). Printed: wall ms per run, the kernel time per operator type
(share of the total) and the costliest nodes with their output shapes.
The input is random: convolution time does not depend on the values.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def onnx_file(arg: str) -> Path:
    if arg.endswith(".onnx"):
        return Path(arg)
    from wsi_nuc.model.folders import resolve_model_dir

    d = Path(resolve_model_dir(arg))
    return d / "model.int8.onnx" if (d / "model.int8.onnx").is_file() else d / "model.onnx"


def profile(path: Path, size: int, threads: int, runs: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: np.random.default_rng(0).normal(0, 1, (1, 3, size, size)).astype(np.float32)}
    outs = [o.name for o in s.get_outputs()]
    for _ in range(2):
        s.run(outs, feed)
    t0 = time.perf_counter()
    for _ in range(runs):
        s.run(outs, feed)
    wall = (time.perf_counter() - t0) / runs * 1000
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op, by_node, shape = collections.Counter(), collections.Counter(), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            by_op[op] += e["dur"]
            by_node[(op, e["name"][:-len("_kernel_time")])] += e["dur"]
            shape[e["name"][:-len("_kernel_time")]] = e["args"].get("output_type_shape")
    n = runs + 2                       # the profiler counts the warm-up runs too
    return {"model": str(path), "wall_ms": round(wall, 1),
            "ops": [{"op": op, "ms": round(us / n / 1000, 2)} for op, us in by_op.most_common()],
            "nodes": [{"op": op, "node": name, "ms": round(us / n / 1000, 2), "output": shape.get(name)}
                      for (op, name), us in by_node.most_common()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["he-types-int8"])
    ap.add_argument("--size", type=int, default=640, help="input edge, px (640: a 512 core and 64-px halo)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch  # only for the CPU capability the figures belong to

    cap = torch.backends.cpu.get_cpu_capability()
    rows = []
    for m in a.models:
        r = profile(onnx_file(m), a.size, a.threads, a.runs)
        rows.append(r)
        total = sum(o["ms"] for o in r["ops"]) or 1.0
        print(f"{r['model']}: {r['wall_ms']:.1f} ms a run, {a.size}², {a.threads} thread(s), CPU capability {cap}")
        for o in r["ops"][:a.top]:
            print(f"  {o['op']:24s} {o['ms']:8.1f} ms  {100 * o['ms'] / total:5.1f} %")
        print("  costliest nodes:")
        for nd in r["nodes"][:a.top]:
            print(f"  {nd['ms']:8.1f} ms  {nd['op']:14s} {nd['node'][:48]:48s} {nd['output']}")
    if a.json:
        for r in rows:                 # every operator type, the 30 costliest nodes
            r["nodes"] = r["nodes"][:30]
        Path(a.json).write_text(json.dumps({"cpu_capability": cap, "size": a.size, "threads": a.threads,
                                            "runs": a.runs, "models": rows}, indent=1))


if __name__ == "__main__":
    main()
