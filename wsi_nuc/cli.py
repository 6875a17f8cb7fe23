"""The ``wsi-nuc`` command: parse, call one function, map errors to exit codes.

Heavy packages are imported inside each command so that ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import sys

from .errors import InputError, one_line
from .model.engine_choice import CHOICES as _ENGINES


def _train(a) -> int:
    from .config import load_config
    from .train.loop import train

    cfg = load_config(a.config, a.set)
    out = a.out or f"runs/{cfg.get('name', 'model')}"
    model_dir = train(cfg, out, log=lambda m: print(m, flush=True))
    print(f"model written to {model_dir}")
    return 0


def _distill(a) -> int:
    from .config import load_config
    from .train.distill import distill

    cfg = load_config(a.config, a.set)
    out = a.out or f"runs/{cfg.get('name', 'model')}"
    model_dir = distill(cfg, out, log=lambda m: print(m, flush=True))
    print(f"model written to {model_dir}")
    return 0


def _quantize(a) -> int:
    from .train.quantize import quantize_model

    out = quantize_model(a.model, a.dataset, a.out, n_crops=a.crops, batch=a.batch, reduce_range=not a.full_range,
                         observers_from=a.observers_from, log=lambda m: print(m, flush=True))
    print(f"INT8 model written to {out}")
    return 0


def _calibrate(a) -> int:
    from .train.calibrate import calibrate_model

    cal = calibrate_model(a.model, a.dataset, a.split, use_rgb=a.rgb, steps=a.steps)
    print(f"LTS fitted on {cal['n_images']} {a.split} images of {len(a.dataset)} source(s): ECE {cal['ece_before']:.4f} -> "
          f"{cal['ece_after']:.4f}, NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}")
    return 0


def _settings(a):
    """RunSettings from the flags, checked (one owner: ``validate_settings``); roundings are noted."""
    from .pipeline import RunSettings
    from .validate import validate_settings

    st = RunSettings(model=a.model, device=a.device, tile=a.tile, halo=a.halo, mpp=a.mpp,
                     tissue_detection=not a.no_tissue_detection, workers=a.workers, scheduler=a.scheduler,
                     batch=a.batch, quiet=a.quiet, types=not a.no_types, wait=a.wait, overwrite=a.overwrite,
                     geojson_gz=a.geojson_gz, simplify=a.simplify, table=a.table, zarr_image=a.zarr_image,
                     min_area_um2=a.min_area_um2, dashboard=a.dashboard, roi=getattr(a, "roi", None),
                     roi_class=a.roi_class,
                     tta=a.tta, engine=a.engine, type_threshold=a.type_threshold, type_check=not a.no_type_check)
    validate_settings(st)                      # bounds first: cheap, and independent of the model
    from .model.io import read_model_config, resolve_model_dir
    from .validate import tile_align

    from .model.engine_choice import resolve_engine

    model_dir = resolve_model_dir(st.model, st.device)
    mcfg = read_model_config(model_dir)
    resolve_engine(st.engine, model_dir, mcfg, st.device)     # an engine that cannot run here: one line, exit 2
    st, notes = validate_settings(st, tile_align(mcfg))
    for n in notes:
        if not a.quiet:
            print(f"wsi-nuc: note: {one_line(n)}", file=sys.stderr)
    return st


def _run(a) -> int:
    from .pipeline import run_slide

    st = _settings(a)
    summary = run_slide(a.slide, a.out, st)
    if not a.quiet:
        secs = summary["seconds"]["total"]
        print(f"{summary['nucleus_count']} nuclei in {summary['tissue_area_mm2']:.2f} mm² of tissue, "
              f"{secs:.1f} s -> {one_line(summary['output'])}")
    return 0


def _batch(a) -> int:
    from .cohort import run_cohort

    st = _settings(a)
    res = run_cohort(a.cohort, a.out, st, force=a.force, parallel_slides=a.parallel_slides, debug=a.debug)
    if not a.quiet:
        n, done, skipped, failed = len(res.rows), res.count("done"), res.count("skipped"), res.count("failed")
        print(f"{done + skipped}/{n} slides done ({skipped} skipped), {failed} failed, {res.seconds:.1f} s "
              f"-> {one_line(res.manifest)}")
    return res.exit_code


def _type_threshold(v: str) -> float:
    import argparse

    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {v}")
    return x


def _add_type_trust_options(p) -> None:
    """--type-threshold and --no-type-check (wsi_nuc.type_trust; docs/types.md)."""
    p.add_argument("--type-threshold", type=_type_threshold, metavar="P", default=None,
                   help="give a nucleus its type only when the calibrated probability is at least P, for every "
                        "type (default: the model's per-type thresholds, set for precision 0.8 on CoNSeP val; "
                        "0 keeps all that pass the tissue check)")
    p.add_argument("--no-type-check", action="store_true",
                   help="keep every type the model gives (no threshold, no tissue or stain check): the "
                        "behaviour before types could be withheld")


def _eval(a) -> int:
    import json

    from .evaluate import evaluate

    def log(sc):
        if not a.json:
            scale = f"  mpp {sc['mpp']:.3f} ({sc['mpp_source']})" if sc.get("mpp_source") == "estimated" else ""
            print(f"{sc['image']:<40} aji {sc['aji']:.4f}  pq {sc['pq']:.4f}  f1 {sc['f1']:.4f}  "
                  f"dice {sc['dice']:.4f}  map_dsb {sc['map_dsb']:.4f}  f_d {sc['f_d']:.4f}{scale}", flush=True)

    res = evaluate(a.dataset, a.model, a.split, a.device, a.save_predictions, log=log,
                   auto_scale=a.scale == "auto", tta=a.tta, type_threshold=a.type_threshold,
                   abstain=not a.no_type_check)
    agg = res["aggregate"]
    if a.json:
        print(json.dumps({**agg, "split": res["split"], "model": res["model"]}))
    elif agg:
        print(f"{'mean over ' + str(agg['n_images']) + ' images':<40} aji {agg['aji']:.4f}  "
              f"pq {agg['pq']:.4f}  f1 {agg['f1']:.4f}  dice {agg['dice']:.4f}  map_dsb {agg['map_dsb']:.4f}")
        print(f"{'':<40} aji_pooled {agg['aji_pooled']:.4f}  dq {agg['dq']:.4f}  sq {agg['sq']:.4f}")
        fc = "  ".join(f"{k} {v:.4f}" if v is not None else f"{k} –" for k, v in agg.items()
                       if k.startswith("f_c_"))
        print(f"{'':<40} f_d {agg['f_d']:.4f}" + (f"  {fc}" if fc else ""))
        if agg.get("typed_fraction") is not None:   # untyped nuclei count as wrong types in f_c (docs/types.md)
            print(f"{'':<40} typed fraction {agg['typed_fraction']:.4f} "
                  f"({'types withheld where not confident' if agg.get('abstain') else 'every type kept'})")
        conf = agg.get("type_confusion")
        if conf:
            print(f"{'type confusion (rows true, cols predicted)':<40} " + " | ".join(conf["types"]))
            for name, row in zip(conf["types"], conf["matrix"]):
                print(f"{'  ' + name:<40} " + " ".join(f"{v:>6d}" for v in row))
    else:
        print("no labelled images: predictions only")
    return 0


def _info(a) -> int:
    import json

    from .slide import open_slide

    with open_slide(a.slide, a.mpp, check=False) as r:
        d = r.info.to_dict()
    if a.json:
        print(json.dumps(d))
    else:
        for k, v in d.items():
            print(f"{k:<18} {one_line(v)}")
    return 0


def _models(a) -> int:
    from .licence import short_licence
    from .model.io import CUDA_DEFAULT_MODEL, DEFAULT_MODEL, read_model_config, resolve_model_dir, shipped_models

    def num(v, width: int, fmt: str = "") -> str:
        return format(format(v, fmt) if isinstance(v, (int, float)) else "–", f">{width}")

    print(f"  {'model':<18} {'version':<8} {'mpp':>4} {'a-AJI':>6} {'PQ':>6} {'F1':>6} {'DSB-HE':>6} "
          f"{'params':>8} {'GMAC/Mpx':>9} {'ms/256²':>8} {'Mpx/s':>6}  {'stain':<8}  licence of the weights")
    for name in shipped_models():
        cfg = read_model_config(resolve_model_dir(name))
        val = cfg.get("metrics", {}).get("val", {})
        other = cfg.get("metrics", {}).get("dsb_he_val", {})
        speed = cfg.get("speed", {})
        mark = "*" if name == DEFAULT_MODEL else ("+" if name == CUDA_DEFAULT_MODEL else " ")
        print(f"{mark} {name:<18} v{cfg.get('version', '?'):<7} {num(cfg.get('mpp'), 4)} "
              f"{num(val.get('aji'), 6, '.3f')} {num(val.get('pq'), 6, '.3f')} {num(val.get('f1'), 6, '.3f')} "
              f"{num(other.get('aji'), 6, '.3f')} "
              f"{num(cfg.get('params', 0) / 1e6, 6, '.2f')} M {num(cfg.get('gmac_per_mpx'), 9, '.1f')} "
              f"{num(speed.get('ms_per_256_tile'), 8, '.1f')} {num(speed.get('mpx_per_s'), 6, '.2f')}  "
              f"{'Reinhard' if cfg.get('stain_norm') else '–':<8}  {short_licence(cfg)}")
    print("a-AJI/PQ/F1: MoNuSeg 2018 val (H&E models), DSB 2018 val (fluo-nuclei); DSB-HE: a-AJI on the 11 "
          "H&E-like DSB val images (another source); speeds: network only, 2 threads, this machine (see each "
          "model's card.md)")
    print("* default on CPU   + default on CUDA\nLicences: CC BY-NC-SA 4.0 = non-commercial, share-alike (MoNuSeg 2018); research use only = CoNSeP's "
          "terms; the wsi-nuc code is Apache-2.0. Full terms: each model's config.json 'licence' and card.md")
    return 0


def _positive_int(v: str) -> int:
    n = int(v)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return n


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _non_negative(v: str) -> float:
    x = float(v)
    if not 0 <= x < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {v}")
    return x


def _slide_options() -> argparse.ArgumentParser:
    """The options ``run`` and ``batch`` share (one parent parser: one set of flags, one set of defaults, the
    RunSettings defaults)."""
    from .run_context import RunSettings

    d = RunSettings()
    p = _Parser(add_help=False)
    p.add_argument("--model", help="shipped model name or model folder (default: the shipped default)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="cuda: tile tasks ask for workers started with --resources GPU=1 when there are any")
    p.add_argument("--tile", type=int, default=d.tile, help=f"tile core edge, working px (64-4096, default {d.tile})")
    p.add_argument("--halo", type=int, default=d.halo,
                   help=f"context around each tile, working px (more than the {d.margin}-px ownership margin, "
                        f"up to 512; default {d.halo})")
    p.add_argument("--mpp", type=float, help="microns per level-0 pixel, when a slide has none or a wrong one "
                                             "(batch: a CSV 'mpp' column overrides it per slide)")
    p.add_argument("--no-tissue-detection", action="store_true", help="tile the whole slide, glass included")
    p.add_argument("--workers", type=_positive_int,
                   help="LocalCluster worker processes, or tile threads in process (default: 2)")
    p.add_argument("--scheduler", help="where the tiles run: auto (default; run: in this process up to 256 "
                                       "tiles, else a LocalCluster), in-process (run only), local (a "
                                       "LocalCluster), or the address of an existing Dask scheduler "
                                       "(tcp://host:8786)")
    p.add_argument("--batch", type=_positive_int, default=d.batch,
                   help="tiles per forward pass (default 1 on CPU, 8 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--wait", action="store_true", help="when another wsi-nuc run is writing the same output, "
                                                       "wait for it (default: stop at once with exit 2)")
    p.add_argument("--overwrite", action="store_true", help="replace wsi-nuc results of another slide with the "
                                                            "same name (never files wsi-nuc did not write)")
    p.add_argument("--engine", choices=_ENGINES, default=d.engine,
                   help="what runs the network (default auto: the fastest here for the model; see docs/performance.md)")
    p.add_argument("--tta", type=int, choices=(1, 4, 8), default=d.tta, help="test-time augmentation: maps "
                   "averaged over 4 flips or 8 flips/rotations, that many times the network's cost")
    p.add_argument("--no-types", action="store_true",
                   help="plain nuclei: no per-nucleus type even when the model has a type head")
    _add_type_trust_options(p)
    p.add_argument("--geojson-gz", action="store_true", help="write nuclei.geojson.gz (gzip) instead of "
                                                             "nuclei.geojson")
    p.add_argument("--simplify", type=_non_negative, default=d.simplify, metavar="PX",
                   help=f"GeoJSON outline tolerance in working px (default {d.simplify}; 0 keeps the traced outline)")
    p.add_argument("--table", choices=("csv", "parquet", "both"), default=d.table,
                   help=f"per-nucleus table: nuclei.csv, nuclei.parquet or both (default {d.table})")
    p.add_argument("--zarr-image", action="store_true",
                   help="OME-Zarr parent image: the slide pyramid itself (default: a thumbnail)")
    p.add_argument("--min-area-um2", type=_non_negative, default=d.min_area_um2, metavar="A",
                   help=f"drop nuclei smaller than A µm² from every output (default {d.min_area_um2:g})")
    p.add_argument("--roi-class", metavar="NAME", help="with a QuPath GeoJSON region: only the annotations of "
                   "this class (Ignore* annotations are always subtracted)")
    p.add_argument("--dashboard", action="store_true",
                   help="print the Dask dashboard link (a local cluster needs bokeh: pip install "
                        "'wsi-nuc[dashboard]')")
    return p


def _add_run_and_batch(sub, slide_options) -> None:
    r = sub.add_parser("run", parents=[slide_options], help="segment every nucleus of one slide")
    r.add_argument("slide")
    r.add_argument("--out", default="wsi-nuc-out", help="output folder; results go to OUT/<slide stem>/")
    r.add_argument("--roi", metavar="FILE", help="process only this region: a QuPath annotation GeoJSON "
                                                 "(level-0 px) or a binary mask image at any downsample")
    r.set_defaults(func=_run)

    b = sub.add_parser("batch", parents=[slide_options],
                       help="segment every slide of a cohort (CSV, folder or glob) on a Dask cluster")
    b.add_argument("cohort", help="CSV with a 'path' column (other columns are carried), a folder of slides "
                                  "(not recursive), a quoted glob, or one slide")
    b.add_argument("--out", default="wsi-nuc-out",
                   help="output folder: OUT/<slide stem>/ per slide, OUT/cohort.csv, OUT/cohort_summary.csv")
    b.add_argument("--parallel-slides", type=_positive_int, metavar="K",
                   help="slides in flight at once (default: 2, up to 8 on clusters with many threads)")
    b.add_argument("--force", action="store_true", help="redo slides that are already done")
    b.set_defaults(func=_batch)


def _add_eval_info_models(sub) -> None:
    e = sub.add_parser("eval", help="score a model on an annotated dataset folder")
    e.add_argument("dataset")
    e.add_argument("--model")
    e.add_argument("--split", choices=("val", "train", "all"),
                   help="default: val when dataset.json has a split, else all")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--json", action="store_true", help="print the aggregate metrics as one JSON object")
    e.add_argument("--save-predictions", metavar="DIR",
                   help="write DIR/<stem>.tif instance labels (and DIR/<stem>.classes.png nucleus types, "
                        "in the dataset's numbering, when the model has a type head)")
    e.add_argument("--scale", choices=("auto", "native"), default="auto",
                   help="images whose dataset.json gives no mpp: estimate their scale from the nuclei "
                        "found at their own pixels (auto, default), or segment them as working pixels "
                        "(native)")
    e.add_argument("--tta", type=int, choices=(1, 4, 8), default=1, help="test-time augmentation (as run)")
    _add_type_trust_options(e)
    e.set_defaults(func=_eval)

    i = sub.add_parser("info", help="what the reader sees in a slide")
    i.add_argument("slide")
    i.add_argument("--mpp", type=float)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_info)

    m = sub.add_parser("models", help="list the shipped models")
    m.set_defaults(func=_models)


def _add_training(sub) -> None:
    for name, what, func in (("train", "train a model from a YAML config", _train),
                             ("distill", "distil a teacher model into a small student from a YAML config",
                              _distill)):
        t = sub.add_parser(name, help=what)
        t.add_argument("config")
        t.add_argument("--out", help="run folder (default runs/<name>); re-running resumes it")
        t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        t.set_defaults(func=func)

    q = sub.add_parser("quantize", help="INT8 post-training static quantisation of a model folder")
    q.add_argument("model", help="shipped model name or model folder")
    q.add_argument("--out", required=True, help="folder for the INT8 model")
    q.add_argument("--dataset", required=True, help="annotated dataset folder (its train split calibrates)")
    q.add_argument("--crops", type=_positive_int, default=80, help="calibration crops (default 80)")
    q.add_argument("--batch", type=_positive_int, default=8, help="calibration batch (default 8)")
    q.add_argument("--full-range", action="store_true",
                   help="8-bit activations (needs AVX512-VNNI or newer CPUs; default 7-bit reduce_range)")
    q.add_argument("--observers-from", metavar="INT8", help="keep this INT8 model's observers where the graphs agree")
    q.set_defaults(func=_quantize)

    c = sub.add_parser("calibrate", help="fit Local Temperature Scaling of the fg head, stored in the model")
    c.add_argument("model", help="shipped model name or model folder (written to)")
    c.add_argument("--dataset", required=True, action="append", help="annotated dataset folder[:MODALITY]; repeat: sources weigh the same")
    c.add_argument("--split", choices=("val", "train", "all"), default="val")
    c.add_argument("--rgb", action="store_true", help="the temperature head also sees the RGB input")
    c.add_argument("--steps", type=_positive_int, default=30, help="L-BFGS iterations (default 30)")
    c.set_defaults(func=_calibrate)


def build_parser() -> argparse.ArgumentParser:
    """The ``wsi-nuc`` parser: every subcommand also takes ``--debug``; ``run`` and ``batch`` share one parent."""
    from .version import build_version

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p = _Parser(prog="wsi-nuc", description=__doc__.splitlines()[0], parents=[common])
    p.add_argument("--version", action="version", version=f"wsi-nuc {build_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add = sub.add_parser

    def add_parser(name, parents=(), **kw):
        return add(name, parents=[common, *parents], **kw)

    sub.add_parser = add_parser
    _add_run_and_batch(sub, _slide_options())
    _add_eval_info_models(sub)
    _add_training(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from_console = argv is None
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    from .errors import quiet_libraries
    from .exit_codes import run

    quiet_libraries()
    return run(args.func, args, from_console)     # exceptions -> exit codes and one line: one owner


if __name__ == "__main__":
    sys.exit(main())
