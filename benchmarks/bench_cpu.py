"""What this CPU does with wsi-nuc: network throughput per model and engine, thread x worker layouts,
the per-tile stages after the network, and the tile size. One run, candidates interleaved.

    python benchmarks/bench_cpu.py                       # the table, with the CPU capability and load
    python benchmarks/bench_cpu.py --json                # also benchmarks/results/cpu-<capability>.json
    ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/bench_cpu.py --json --tag forced-avx2   # the AVX2 code paths, where they can be forced

Every figure is a median over ``--rounds`` rounds; each round runs every candidate once (A B C A B C ...), so
a machine shared with other work slows all candidates alike and the ratios hold better than the absolute
figures. Inputs are real: windows of CMU-1-Small-Region at the model's 0.5 µm/px, recoloured with the
window's stain statistics as ``run`` recolours with the slide's.

- *network*: ``Predictor.maps`` on one 640² window (512 core + 64 halo), as ``run`` calls it: recolouring,
  the network, LTS calibration and activations; ``net`` is the network call alone. Per thread count.
  Engines: torch-int8 with PyTorch's x86 quantized engine (what ships; oneDNN convolutions where the CPU
  has AVX512-VNNI, fbgemm elsewhere) and torch-int8-onednn / -fbgemm; torch-fp32 (BatchNorm folded,
  channels-last); onnx-int8 / onnx-fp32 (ONNX Runtime CPU provider; a model folder without the ONNX files
  gets them exported into a temporary copy: fp32 always, INT8 only with ``--dataset``).
- *layouts*: whole tiles (maps + watershed + outlines + measurements) per second with 1 worker x 2 torch
  threads vs 2 worker processes x 1 thread (two processes started once, working at the same time).
- *post*: ms per tile of each stage after the network (the functions ``run`` calls).
- *tiles*: ms per Mpx of tile *core* for cores 512 / 768 / 1024 (halo 64): the halo's share of the work.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SLIDE = SHARED / "slides" / "CMU-1-Small-Region.svs"
HALO = 64


# ------------------------------------------------------------------------------------------- machine

def machine() -> dict:
    flags, name = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import onnxruntime

    keep = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {"cpu": name, "cores": os.cpu_count(), "capability": torch.backends.cpu.get_cpu_capability(),
            "flags": [f for f in keep if f in flags], "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA",
                                                 "FBGEMM_ENABLE_INSTRUCTIONS") if k in os.environ}}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------------------- inputs

def windows(sizes, seed: int = 0) -> dict[int, np.ndarray]:
    """One real window of CMU per size, at 0.5 µm/px, from the tissue in the middle of the slide."""
    from wsi_nuc.slide import open_slide, read_region

    r = open_slide(str(SLIDE))
    f = 0.5 / r.info.mpp
    out = {}
    for s in sizes:
        x0 = max(0.0, r.info.width / 2 - s * f / 2)
        y0 = max(0.0, r.info.height / 2 - s * f / 2)
        out[s] = read_region(r, x0, y0, s * f, s * f, s, s)
    r.close()
    return out


# ------------------------------------------------------------------------------------------- engines

def with_onnx(model: str, tmp: Path, dataset: str | None) -> Path:
    """The model folder if it has its ONNX files, else a temporary copy with them exported."""
    from wsi_nuc.model.engines import ONNX_FILES
    from wsi_nuc.model.io import read_model_config, resolve_model_dir

    src = resolve_model_dir(model, "cpu")
    if all((src / f).is_file() for f in ONNX_FILES.values()):
        return src
    dst = tmp / src.name
    if not dst.exists():
        shutil.copytree(src, dst)
        cfg = read_model_config(dst)
        if dataset:
            from wsi_nuc.train.onnx_export import export_onnx

            export_onnx(dst, dataset, log=None)
        else:
            from wsi_nuc.model.engines import folded_fp32
            from wsi_nuc.train.onnx_export import export_fp32

            export_fp32(folded_fp32(dst, cfg), dst / "model.onnx")
    return dst


def candidates(models, engines, threads: int, tmp: Path, dataset) -> dict:
    """{label: Predictor} for every (model, engine) that runs here, built for ``threads`` torch/ORT threads."""
    from wsi_nuc.model.engines import QENGINES, build_engine, ONNX_FILES
    from wsi_nuc.model.io import read_model_config
    from wsi_nuc.predict import Predictor
    from wsi_nuc.refine import load_lts

    torch.set_num_threads(threads)
    out = {}
    for m in models:
        d = with_onnx(m, tmp, dataset)
        cfg = dict(read_model_config(d), path=str(d))
        cfg.setdefault("name", d.name)
        lts = load_lts(d, cfg)
        int8 = cfg.get("quantized") == "int8"
        for e in engines:
            if (e in QENGINES and not int8) or (e in ONNX_FILES and not (d / ONNX_FILES[e]).is_file()):
                continue
            net = build_engine(e, d, cfg, torch.device("cpu"))     # ONNX Runtime sessions take `threads`
            out[f"{m} {e}"] = Predictor(net, cfg, torch.device("cpu"), lts, e)
    return out


def _stain(pred, img):
    from wsi_nuc.stainnorm import lab_stats

    return lab_stats(img) if pred.stain_target is not None else None


def _net_input(pred, img):
    from wsi_nuc.stainnorm import normalise

    norm = pred.config.get("norm", {"mean": 0.5, "std": 0.25})
    if pred.stain_target is not None:
        img = normalise(img, _stain(pred, img), pred.stain_target)
    x = torch.from_numpy(np.array(img[None], copy=True)).permute(0, 3, 1, 2).float()
    return x.div_(255.0).sub_(norm["mean"]).div_(norm["std"])


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads, spinning included)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _ms(pair) -> tuple[float, float]:
    return round(1000 * pair[0], 2), round(1000 * pair[1], 2)


# ------------------------------------------------------------------------------------------- parts

def bench_network(models, engines, threads_list, rounds, img, tmp, dataset) -> dict:
    """ms per 640² window: maps() (as run) and the network call alone; interleaved over candidates."""
    preds = {t: candidates(models, engines, t, tmp, dataset) for t in threads_list}
    stain = {t: {k: _stain(p, img) for k, p in ps.items()} for t, ps in preds.items()}
    xs = {t: {k: _net_input(p, img) for k, p in ps.items()} for t, ps in preds.items()}
    samples = {(t, k, w): [] for t, ps in preds.items() for k in ps for w in ("maps", "net", "maps cpu", "net cpu")}
    for t, ps in preds.items():                      # warm-up (allocations, kernel selection)
        torch.set_num_threads(t)
        for k, p in ps.items():
            for _ in range(2):
                p.maps(img[None], stain[t][k])
    for r in range(rounds):
        for t, ps in preds.items():
            torch.set_num_threads(t)
            for k, p in ps.items():
                with torch.inference_mode():
                    for w, fn in (("maps", lambda: p.maps(img[None], stain[t][k])), ("net", lambda: p.net(xs[t][k]))):
                        wall, cpu = _ms(_timed(fn))
                        samples[(t, k, w)].append(wall)
                        samples[(t, k, w + " cpu")].append(cpu)
        print(f"  network round {r + 1}/{rounds} load {load()}", file=sys.stderr, flush=True)
    return {f"{k} @{t}t {w}": s for (t, k, w), s in samples.items()}


def tile_work(pred, img, stain, params):
    """One tile as a worker does it: maps, watershed, ownership, outlines, measurements."""
    from wsi_nuc.segment import tile_nuclei
    from wsi_nuc.tiling import Box, Tile

    h = img.shape[0]
    t = Tile(0, 0, Box(HALO, HALO, h - HALO, h - HALO), Box(0, 0, h, h))
    maps = pred.maps(img[None], stain)[0]
    return tile_nuclei(t, img, maps, params, 1.0, 0.5, 0.5, 8)


def _layout_worker(conn, models, engines, tmp, dataset, img):
    """A 1-thread worker process of the 2x1 layout: builds the candidates once, runs tiles on request."""
    from wsi_nuc.instances import InstanceParams

    preds = candidates(models, engines, 1, Path(tmp), dataset)
    stain = {k: _stain(p, img) for k, p in preds.items()}
    for k, p in preds.items():
        tile_work(p, img, stain[k], InstanceParams.from_dict(p.config.get("postprocess")))
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        k, n = msg
        p = preds[k]
        params = InstanceParams.from_dict(p.config.get("postprocess"))
        t0, c0 = time.time(), time.process_time()
        for _ in range(n):
            tile_work(p, img, stain[k], params)
        conn.send((t0, time.time(), time.process_time() - c0))


def bench_layouts(models, engines, rounds, img, tmp, dataset, n_tiles: int = 3) -> dict:
    """Whole tiles per second: 1 worker x 2 threads (this process) vs 2 workers x 1 thread (two processes)."""
    from wsi_nuc.instances import InstanceParams

    preds = candidates(models, engines, 2, tmp, dataset)
    stain = {k: _stain(p, img) for k, p in preds.items()}
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(2):
        a, b = ctx.Pipe()
        pr = ctx.Process(target=_layout_worker, args=(b, models, engines, str(tmp), dataset, img), daemon=True)
        pr.start()
        pipes.append(a)
        procs.append(pr)
    for a in pipes:
        assert a.recv() == "ready"
    out = {f"{k} {lay}": [] for k in preds for lay in ("1x2", "2x1", "1x2 cpu", "2x1 cpu")}
    try:
        for r in range(rounds):
            for k, p in preds.items():
                torch.set_num_threads(2)
                params = InstanceParams.from_dict(p.config.get("postprocess"))
                tile_work(p, img, stain[k], params)
                wall, cpu = _timed(lambda: [tile_work(p, img, stain[k], params) for _ in range(n_tiles)])
                out[f"{k} 1x2"].append(round(1000 * wall / n_tiles, 2))
                out[f"{k} 1x2 cpu"].append(round(1000 * cpu / n_tiles, 2))
                for a in pipes:
                    a.send((k, n_tiles))
                spans = [a.recv() for a in pipes]
                wall = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
                out[f"{k} 2x1"].append(round(1000 * wall / (2 * n_tiles), 2))
                out[f"{k} 2x1 cpu"].append(round(1000 * sum(c for _, _, c in spans) / (2 * n_tiles), 2))
            print(f"  layouts round {r + 1}/{rounds} load {load()}", file=sys.stderr, flush=True)
    finally:
        for a in pipes:
            a.send(None)
        for pr in procs:
            pr.join(30)
    return out


def bench_post(pred, img, rounds) -> dict:
    """ms per 640² tile of each stage around the network (the functions a worker calls), one thread."""
    from wsi_nuc.instances import InstanceParams, centroids, labels_from_maps, polygons_level0
    from wsi_nuc.outlines import clean_polygons
    from wsi_nuc.morphometry import measure_nuclei
    from wsi_nuc.refine import calibrated_fg
    from wsi_nuc.segment import owned_nuclei
    from wsi_nuc.slide import open_slide, read_region
    from wsi_nuc.stainnorm import normalise
    from wsi_nuc.tiling import Box, Tile

    torch.set_num_threads(1)
    h = img.shape[0]
    tile = Tile(0, 0, Box(HALO, HALO, h - HALO, h - HALO), Box(0, 0, h, h))
    params = InstanceParams.from_dict(pred.config.get("postprocess"))
    stain = _stain(pred, img)
    reader = open_slide(str(SLIDE))
    f = 0.5 / reader.info.mpp
    x = _net_input(pred, img)
    with torch.inference_mode():
        raw = pred.net(x).float().contiguous()
    maps = pred.maps(img[None], stain)[0]
    labels = labels_from_maps(maps, params)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    polys = clean_polygons(polygons_level0(labels, ids, 1.0))
    ok = [p is not None for p in polys]
    ids_ok, polys_ok = ids[np.array(ok, bool)], [p for p in polys if p is not None]
    stages = {
        "read_region": lambda: read_region(reader, 400 * f, 400 * f, h * f, h * f, h, h),
        "recolour": lambda: normalise(img, stain, pred.stain_target),
        "network": lambda: pred.net(x),
        "calibration+activations": lambda: (calibrated_fg(raw[:, 0], pred.lts, x), torch.sigmoid(raw[:, [1, 2, 5]]),
                                            torch.tanh(raw[:, 3:5])),
        "watershed (labels_from_maps)": lambda: labels_from_maps(maps, params),
        "owned_nuclei (all below)": lambda: owned_nuclei(tile, labels, img, maps[0], 1.0, 0.5, 0.5, 8),
        "  centroids": lambda: centroids(labels, ids),
        "  outlines (polygons_level0)": lambda: polygons_level0(labels, ids, 1.0),
        "  clean_polygons": lambda: clean_polygons(polygons_level0(labels, ids, 1.0)) and None,
        "  measure_nuclei": lambda: measure_nuclei(labels, img, ids_ok, 0.5, 0.5, (0, 0), confidence=maps[0],
                                                   outlines=polys_ok),
    }
    out = {k: [] for k in stages}
    with torch.inference_mode():
        for fn in stages.values():
            fn()
        for _ in range(rounds):
            for k, fn in stages.items():
                out[k].append(_ms(_timed(fn))[1])      # CPU ms: one thread, robust to a busy machine
    out["  clean_polygons"] = [round(a - b, 2) for a, b in zip(out["  clean_polygons"],
                                                                out["  outlines (polygons_level0)"])]
    reader.close()
    return {"nuclei_in_window": int(len(ids)), "ms": out}


def bench_tiles(model, engines, cores, rounds, tmp, dataset, threads: int) -> dict:
    """ms per Mpx of tile core (maps() on core + 2 x halo), per engine and core size, interleaved."""
    imgs = windows([c + 2 * HALO for c in cores])
    preds = candidates([model], engines, threads, tmp, dataset)
    stain = {(k, s): _stain(p, im) for k, p in preds.items() for s, im in imgs.items()}
    for k, p in preds.items():
        for s, im in imgs.items():
            p.maps(im[None], stain[(k, s)])
    out = {f"{k} core {s - 2 * HALO}{w}": [] for k in preds for s in imgs for w in ("", " cpu")}
    for r in range(rounds):
        for k, p in preds.items():
            for s, im in imgs.items():
                core = s - 2 * HALO
                wall, cpu = _ms(_timed(lambda: p.maps(im[None], stain[(k, s)])))
                out[f"{k} core {core}"].append(round(wall / (core * core / 1e6), 1))
                out[f"{k} core {core} cpu"].append(round(cpu / (core * core / 1e6), 1))
        print(f"  tiles round {r + 1}/{rounds} load {load()}", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------------------------- report

def med(v) -> float:
    return round(statistics.median(v), 1) if v else float("nan")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}x" if a == a and b == b and b else "    -"


def print_report(res: dict) -> None:
    """Wall ms (what a user waits on a quiet machine) and CPU ms (this process's CPU time, all threads:
    on a busy machine the steadier figure, for one thread the same as wall on a quiet one)."""
    m, net = res["machine"], res.get("network")
    print(f"\nCPU: {m['cpu']} ({m['cores']} cores), torch capability {m['capability']}, flags {' '.join(m['flags'])}")
    print(f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, env {m['env'] or '-'}; "
          f"load (1/5/15 min) at start {res['load_start']}, end {res['load_end']}; {res['rounds']} rounds, medians")
    if m["env"] and "avx512_vnni" in m["flags"]:
        print("NOTE: ISA forced on a VNNI CPU. PyTorch's x86 quantized engine picks oneDNN by the CPU's VNNI flag, "
              "which no variable hides, so here torch-int8 = torch-int8-onednn at the forced ISA; an AVX2-only CPU's "
              "torch-int8 runs fbgemm: read torch-int8-fbgemm for it. ONNX Runtime (MLAS) cannot be forced: its "
              "rows are this CPU's own ISA.")
    if net:
        print("\nNetwork, one 640² window: maps() as run calls it (recolour + network + calibration + activations) "
              "and the network call alone; ms wall / CPU; 'vs default' = default model torch-int8 maps CPU / this (torch-int8-onednn where torch-int8 was not run)")
        rows = sorted({k.split(" @")[0] + " @" + k.split(" @")[1].split()[0] for k in net})
        ref = {}
        for eng in ("torch-int8-onednn", "torch-int8:onednn", "torch-int8"):   # the reference: torch-int8 if run
            ref.update({r.split(" @")[1]: med(net[f"{r} maps cpu"]) for r in rows
                        if r.split(" @")[0] == f"{res['default_model']} {eng}"})
        print(f"  {'model engine @threads':44s} {'maps wall':>9s} {'maps cpu':>9s} {'net wall':>9s} {'net cpu':>9s} "
              f"{'vs default':>10s}")
        for r in rows:
            v = [med(net[f"{r} {w}"]) for w in ("maps", "maps cpu", "net", "net cpu")]
            print(f"  {r:44s} " + " ".join(f"{x:9.1f}" for x in v)
                  + f" {_ratio(ref.get(r.split(' @')[1], float('nan')), v[1]):>10s}")
    if "layouts" in res:
        lay = res["layouts"]
        print("\nWhole tiles (maps + watershed + outlines + measurements), 640² window, ms per tile: wall (tiles "
              "done / wall time) and CPU (summed over processes and threads, per tile)")
        for k in sorted({k.split(" 1x2")[0].split(" 2x1")[0] for k in lay}):
            a, b = med(lay[f"{k} 1x2"]), med(lay[f"{k} 2x1"])
            ac, bc = med(lay[f"{k} 1x2 cpu"]), med(lay[f"{k} 2x1 cpu"])
            print(f"  {k:36s} 1 worker x 2 threads {a:7.1f} wall {ac:7.1f} cpu | 2 workers x 1 thread "
                  f"{b:7.1f} wall {bc:7.1f} cpu | 2x1 faster by {_ratio(a, b)} wall, {_ratio(ac, bc)} cpu")
    if "post" in res:
        print(f"\nPer-tile stages, one thread, 640² window ({res['post']['nuclei_in_window']} nuclei), median CPU ms:")
        for k, v in res["post"]["ms"].items():
            print(f"  {k:34s} {med(v):8.1f}")
    if "tiles" in res:
        print(f"\nTile size (halo {HALO}): ms per Mpx of tile core, maps() at {res['tiles_threads']} thread(s), "
              "median wall / CPU:")
        for k in sorted({k.split(" core")[0] for k in res["tiles"]}):
            cores = sorted({int(c.split("core ")[1].split()[0]) for c in res["tiles"] if c.startswith(k + " core")})
            cells = [f"{c}: {med(res['tiles'][f'{k} core {c}']):7.1f} / {med(res['tiles'][f'{k} core {c} cpu']):7.1f}"
                     for c in cores]
            print(f"  {k:36s} " + "   ".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["he-student-int8", "he-student", "he-teacher"])
    ap.add_argument("--engines", nargs="+", default=["torch-int8", "torch-int8-onednn", "torch-int8-fbgemm",
                                                     "torch-fp32", "onnx-int8", "onnx-fp32"])
    ap.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--parts", nargs="+", default=["network", "layouts", "post", "tiles"],
                    choices=["network", "layouts", "post", "tiles"])
    ap.add_argument("--layout-engines", nargs="+", default=["torch-int8", "torch-int8-fbgemm", "onnx-int8"],
                    help="engines of the layout and tile-size parts (default: the INT8 ones)")
    ap.add_argument("--cores", nargs="+", type=int, default=[512, 768, 1024])
    ap.add_argument("--tile-threads", type=int, default=1, help="threads for the tile-size part (default 1, "
                                                                 "as each of 2 workers runs)")
    ap.add_argument("--dataset", default=str(SHARED / "data" / "monuseg2018-train"),
                    help="calibration crops for ONNX INT8 of folders that lack it ('' to skip)")
    ap.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                    help="save the samples (default benchmarks/results/cpu-<capability>[-TAG].json)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--show", nargs="+", metavar="JSON", help="print the tables of saved results and stop")
    a = ap.parse_args(argv)
    if a.show:
        for path in a.show:
            print(f"\n=== {path}")
            print_report(json.loads(Path(path).read_text()))
        return 0
    dataset = a.dataset if a.dataset and Path(a.dataset).is_dir() else None
    default = a.models[0]
    res = {"machine": machine(), "load_start": load(), "rounds": a.rounds, "default_model": default,
           "argv": sys.argv[1:]}
    print(f"capability {res['machine']['capability']}, load {res['load_start']}", file=sys.stderr)
    img = windows([512 + 2 * HALO])[512 + 2 * HALO]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "network" in a.parts:
            res["network"] = bench_network(a.models, a.engines, a.threads, a.rounds, img, tmp, dataset)
        if "layouts" in a.parts:
            res["layouts"] = bench_layouts([default], a.layout_engines, a.rounds, img, tmp, dataset)
        if "post" in a.parts:
            pred = candidates([default], ["torch-int8"], 1, tmp, dataset)[f"{default} torch-int8"]
            res["post"] = bench_post(pred, img, a.rounds)
        if "tiles" in a.parts:
            res["tiles_threads"] = a.tile_threads
            res["tiles"] = bench_tiles(default, a.layout_engines, a.cores, a.rounds, tmp, dataset, a.tile_threads)
    res["load_end"] = load()
    print_report(res)
    if a.json is not None:
        cap = res["machine"]["capability"].lower()
        path = Path(a.json) if a.json else ROOT / "benchmarks" / "results" / f"cpu-{cap}{'-' + a.tag if a.tag else ''}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
