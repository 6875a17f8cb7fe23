"""Tile core sizes end to end: whole `wsi-nuc run` processes of this tree, one per core size, interleaved.

    python benchmarks/bench_tile_size.py SLIDE [--tiles 512 1024] [--rounds 2] [--isa avx2]
        [--run-args "--roi region.geojson --scheduler local"] [--json FILE]

Each run: wall, CPU time of the process tree, peak RSS summed over it (``bench_outputs.run_tree``), the
nuclei and the segmenting stage's seconds from ``summary.json``; Mpx/s of tissue as ``bench_versions.py``
reports it. ``--isa avx2`` forces PyTorch's AVX2 code paths (``bench_versions.ISA_ENV``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_outputs import run_tree  # noqa: E402
from bench_versions import ISA_ENV, _cpu_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--tiles", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--isa", choices=sorted(ISA_ENV))
    ap.add_argument("--run-args", default="")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    import torch

    env = {**os.environ, **ISA_ENV.get(a.isa, {})}
    out = a.out or Path(tempfile.mkdtemp(prefix="wsi-nuc-tiles-"))
    rows = []
    for r in range(a.rounds):
        for tile in a.tiles:
            dst = out / f"tile{tile}-{r}"
            shutil.rmtree(dst, ignore_errors=True)
            res = run_tree([sys.executable, "-m", "wsi_nuc.cli", "run", str(a.slide), "--out", str(dst), "--quiet",
                            "--tile", str(tile), *shlex.split(a.run_args)], env=env)
            if res["exit"] != 0:
                raise SystemExit(f"--tile {tile}: exit {res['exit']}: {res['stderr']}")
            summary = json.loads(next(dst.glob("*/summary.json")).read_text())
            mpx = summary["tissue_area_mm2"] / summary["working_mpp"] ** 2
            row = {"tile": tile, "round": r, **{k: res[k] for k in ("wall_s", "cpu_s", "peak_rss_gib",
                                                                   "largest_process_gib")},
                   "segment_s": summary["seconds"]["segment"], "tiles": summary["tiles"]["count"],
                   "nuclei": summary["nucleus_count"], "tissue_mpx_per_s": round(mpx / res["wall_s"], 3),
                   "engine": summary.get("engine", {}).get("name")}
            rows.append(row)
            print(f"round {r} tile {tile:5d}: {row['wall_s']:7.1f} s wall {row['cpu_s']:7.1f} CPU-s segment "
                  f"{row['segment_s']:7.1f} s {row['tissue_mpx_per_s']:.3f} Mpx/s peak {row['peak_rss_gib']:.2f} "
                  f"GiB {row['nuclei']} nuclei ({row['tiles']} tiles)", flush=True)
    res = {"command": "python benchmarks/bench_tile_size.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "isa_env": ISA_ENV.get(a.isa, {}), "cpu_capability_forced": a.isa,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": platform.processor() or _cpu_model(),
           "cores": os.cpu_count(), "rows": rows}
    for tile in a.tiles:
        rr = sorted(x["wall_s"] for x in rows if x["tile"] == tile)
        res[f"median_wall_s_{tile}"] = rr[len(rr) // 2]
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
