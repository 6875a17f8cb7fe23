"""INT8 graph time of candidate (cheaper) network shapes before any training: what a distilled smaller student
would cost per tile on this CPU.

    python benchmarks/bench_arch.py [--variant NAME=JSON ...] [--rounds 5]

Each shape is built with random weights, FX-quantised as the shipped models are (``wsi_nuc.model.int8``:
prepare, three random calibration batches, convert for oneDNN) and timed on one 640² tile at one thread
(CPU ms, median). Random weights give other activation ranges than trained ones, not other kernels: the
times are the shapes'. Set ``ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2`` to see an AVX2-only CPU's.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

SHIPPED = dict(base=16, depth=4, max_channels=96, in_channels=3, heads=["fg", "boundary", "dist", "hv_x", "hv_y", "centre"],
               types=["other", "inflammatory", "epithelial", "spindle-shaped"], type_branch=32)
VARIANTS = {"shipped (base 16, max 96, branch 32)": {}, "base 12, max 96": {"base": 12},
            "base 8, max 64": {"base": 8, "max_channels": 64},
            "base 12, max 64, branch 16": {"base": 12, "max_channels": 64, "type_branch": 16},
            "no types (trunk)": {"types": [], "type_branch": 0}}


def graph_ms(arch: dict, rounds: int) -> tuple[int, float]:
    from wsi_nuc.model.int8 import convert, prepare
    from wsi_nuc.model.net import build_net

    net = build_net(arch).eval()
    pr = prepare(net)
    with torch.no_grad():
        for _ in range(3):
            pr(torch.randn(2, 3, 256, 256))
    q = convert(pr, net.cfg, net.stride, "onednn")
    x = torch.randn(1, 3, 640, 640)
    ts = []
    with torch.no_grad():
        q(x)
        for _ in range(rounds):
            t0 = time.process_time()
            q(x)
            ts.append(time.process_time() - t0)
    return sum(p.numel() for p in net.parameters()), 1000 * sorted(ts)[len(ts) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON of arch keys over the shipped shape")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    variants = dict(VARIANTS)
    for v in a.variant:
        name, js = v.split("=", 1)
        variants[name] = json.loads(js)
    cap = torch.backends.cpu.get_cpu_capability()
    for name, v in variants.items():
        params, ms = graph_ms(dict(SHIPPED, **v), a.rounds)
        print(f"{cap} {name:40s} params {params:8d}  INT8 graph {ms:6.1f} ms / 640² tile", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
