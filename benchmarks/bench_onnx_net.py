"""The ONNX networks of model folders, per 640² tile, interleaved in one run; optionally where their time goes.

    python benchmarks/bench_onnx_net.py FOLDER[:fp32|:int8] ... [--threads 2] [--rounds 5] [--profile] [--json OUT]

Each argument is a model folder (a shipped name or a path) with ``model.onnx`` / ``model.int8.onnx``
(``python -m wsi_nuc.train.onnx_export``), ``:int8`` (the default) or ``:fp32`` picking the file, or an
``.onnx`` file. Every round
runs each network once on the same 640² input (A B C A B C ...), so load on a shared machine falls on all
alike: compare the ratios, not the milliseconds. ``--profile`` adds ONNX Runtime's own per-node profile of
each network at one thread: kernel ms and share per operator type and the ``--top`` costliest nodes with their
output shapes (where a network's time goes).
Network only: no recolouring, tiling or watershed (``bench_engines.py`` and ``bench_e2e.py`` have those).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

FILES = {"int8": "model.int8.onnx", "fp32": "model.onnx"}


def onnx_file(spec: str) -> Path:
    from wsi_nuc.model.io import resolve_model_dir

    if spec.endswith(".onnx"):
        return Path(spec)
    folder, _, kind = spec.partition(":")
    path = Path(resolve_model_dir(folder)) / FILES[kind or "int8"]
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (python -m wsi_nuc.train.onnx_export {folder})")
    return path


def session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix      # ONNX Runtime writes its trace here, not in the cwd
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def timings(paths: dict, threads: int, rounds: int, size: int = 640) -> dict:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    ms = {k: [] for k in sessions}
    for s in sessions.values():      # warm-up
        s.run(None, {s.get_inputs()[0].name: x})
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            ms[k].append(1000 * (time.perf_counter() - t))
    return {k: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1)} for k, v in ms.items()}


def profile(path: Path, runs: int = 3, size: int = 640, top: int = 10) -> dict:
    """ONNX Runtime's own profile at one thread: kernel ms per run and share per operator type, and the
    ``top`` costliest nodes with their output shapes. Every run is profiled (the first one included)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, 1, profile_prefix=str(Path(tmp) / "ort"))
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        for _ in range(runs):
            s.run(None, {s.get_inputs()[0].name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
    by_op, by_node, op_of, shape = Counter(), Counter(), {}, {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"].removesuffix("_kernel_time")
            op_of[node] = e["args"].get("op_name", "?")
            shape[node] = e["args"].get("output_type_shape")
            by_op[op_of[node]] += e["dur"]
            by_node[node] += e["dur"]
    total = sum(by_op.values()) or 1
    ms = lambda us: round(us / runs / 1000, 2)  # noqa: E731
    return {"ms_per_run": ms(total),
            "by_op": [{"op": k, "ms": ms(v), "share": round(v / total, 3)} for k, v in by_op.most_common()],
            "top_nodes": [{"node": k, "op": op_of[k], "ms": ms(v), "share": round(v / total, 3),
                           "output": shape[k]} for k, v in by_node.most_common(top)]}


def print_profile(name: str, p: dict, top: int) -> None:
    print(f"{name}: {p['ms_per_run']:.1f} ms of kernels a run at one thread")
    for o in p["by_op"][:top]:
        print(f"  {o['op']:24s} {o['ms']:8.1f} ms  {100 * o['share']:5.1f} %")
    print("  costliest nodes:")
    for n in p["top_nodes"]:
        print(f"  {n['ms']:8.1f} ms  {n['op']:14s} {n['node'][:48]:48s} {n['output']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="FOLDER[:int8|:fp32]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=10, help="operator types and nodes listed by --profile")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    import torch

    paths = {spec: onnx_file(spec) for spec in a.models}
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": a.threads, "tile": 640,
           "timings": timings(paths, a.threads, a.rounds)}
    for k, v in out["timings"].items():
        print(f"{k:50s} {v['median_ms']:8.1f} ms median  {v['min_ms']:8.1f} min")
    if a.profile:
        out["profiles"] = {k: profile(p, top=a.top) for k, p in paths.items()}
        for k, v in out["profiles"].items():
            print_profile(k, v, a.top)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
