"""Run a command and report its wall time and peak resident memory, summed over its process tree.

    python benchmarks/peak_rss.py -- wsi-nuc run slide.svs --out out

Samples every 0.2 s with psutil (a dependency of Dask distributed). The sum over the tree (driver, nanny
and worker processes) is what a cluster node must provide; the largest single process is printed too.
"""
from __future__ import annotations

import subprocess
import sys
import time

import psutil


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    root = psutil.Process(proc.pid)
    peak_sum = peak_one = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            peak_sum = max(peak_sum, sum(rss))
            peak_one = max(peak_one, max(rss, default=0))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    print(f"exit {proc.returncode}  wall {wall:.1f} s  peak RSS (process tree) {peak_sum / 2**30:.2f} GiB  "
          f"largest process {peak_one / 2**30:.2f} GiB", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
