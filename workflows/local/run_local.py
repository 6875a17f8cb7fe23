"""A cohort from Python on this machine (a LocalCluster), then the per-slide table for statistics.

    python workflows/local/run_local.py COHORT OUT [--workers N] [--model M] [--mpp X] [--tile T]

Exactly what ``wsi-nuc batch COHORT --out OUT --workers N`` does, as library calls you can adapt.
"""
from __future__ import annotations

import argparse
import csv
import sys

from wsi_nuc.cohort import run_cohort
from wsi_nuc.errors import InputError
from wsi_nuc.pipeline import RunSettings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cohort")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model")
    p.add_argument("--mpp", type=float)
    p.add_argument("--tile", type=int, default=512)
    a = p.parse_args()

    settings = RunSettings(model=a.model, mpp=a.mpp, tile=a.tile, workers=a.workers)
    try:
        # no client given: run_cohort starts (and stops) a LocalCluster with `workers` processes.
        # To reuse a cluster you already have: run_cohort(..., client=my_distributed_client)
        result = run_cohort(a.cohort, a.out, settings)
    except InputError as e:  # bad cohort, model or output folder: nothing was started
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in result.rows:
        print(f"{row['slide']:<30} {row['status']:<8} {row.get('nucleus_count', ''):>8}  {row['reason']}")
    with open(result.summary, newline="") as fh:  # one row per finished slide: count, density, median/IQR
        for r in csv.DictReader(fh):
            print(f"{r['slide']:<30} median area {r['area_um2_median']} µm² (IQR {r['area_um2_iqr']})")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
