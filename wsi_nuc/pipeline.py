"""One slide end to end: open, find tissue, tile, segment on Dask, stitch, write outputs atomically.

    run_slide("slide.svs", "out/", RunSettings())  ->  out/slide/{nuclei.geojson, nuclei.csv,
                                                        nuclei.ome.zarr, summary.json, qc.png}
"""
from __future__ import annotations

import json
import math
import platform
import sys
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, asdict, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .validate import check_output_dir  # noqa: F401 - re-exported (cohort, tests)

OUTPUT_FILES = ("nuclei.geojson", "nuclei.csv", "nuclei.ome.zarr", "summary.json", "qc.png")  # defaults


@dataclass(frozen=True)
class RunSettings:
    """Everything a slide run depends on (CLI flags map 1:1 onto these)."""

    model: str | None = None
    device: str = "auto"
    tile: int = 512                 # core edge, working px
    halo: int = 64                  # context on each side, working px (> largest nucleus radius)
    mpp: float | None = None        # override of the slide's level-0 mpp
    tissue_detection: bool = True
    workers: int | None = None
    scheduler: str | None = None
    batch: int | None = None        # tiles per forward pass; None: 1 on CPU (fastest there), 8 on CUDA
    tiles_per_task: int = 4
    margin: int = 8                 # ownership slack, px; duplicates in it are resolved by the stitcher
    quiet: bool = False
    geojson_gz: bool = False        # nuclei.geojson.gz instead of nuclei.geojson
    simplify: float = 0.5           # GeoJSON outline tolerance, working px (0: as traced)
    table: str = "csv"              # "csv" | "parquet" | "both"
    zarr_image: bool = False        # the slide itself as the OME-Zarr parent image (else a thumbnail)
    min_area_um2: float = 3.0       # smaller nuclei are dropped from every output
    dashboard: bool = False         # print the Dask dashboard link
    roi: str | None = None          # region of interest: QuPath GeoJSON or mask image (wsi_nuc/roi.py)
    types: bool = True              # per-nucleus type and type_prob when the model has a type head (--no-types)
    wait: bool = False              # output locked by another run: wait for it (else InputError at once)
    overwrite: bool = False         # replace wsi-nuc results of another slide with the same name


@dataclass
class Timer:
    stages: dict = field(default_factory=dict)
    on_stage: object = None         # callable(stage name), e.g. a SlideProgress's stage()

    def __call__(self, name):
        timer = self

        class _T:
            def __enter__(self):
                if timer.on_stage is not None:
                    timer.on_stage(name)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[name] = round(timer.stages.get(name, 0) + time.perf_counter() - self.t0, 3)

        return _T()


def slide_stem(path: str | Path) -> str:
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def is_complete(folder: Path) -> bool:
    """A slide folder is complete when every output its summary lists exists (outputs are moved into
    place together; older summaries without the list are checked against the default outputs)."""
    try:
        names = json.loads((folder / "summary.json").read_text()).get("outputs") or OUTPUT_FILES
    except (OSError, ValueError):
        return False
    return folder.is_dir() and all((folder / n).exists() for n in names)


def run_slide(path: str | Path, out: str | Path, settings: RunSettings = RunSettings(), client=None,
              progress=None) -> dict:
    """Segment every nucleus of one slide and write its outputs to ``out/<slide stem>/``.

    ``client``: an existing ``distributed.Client`` (else one is made from the settings).
    ``progress``: callable(n_tiles_done) for cohort progress; default a tqdm bar unless ``quiet``.
    Returns the summary dict (also written as ``summary.json``).

    Everything that can be checked is checked before any cluster starts (settings, model folder, slide,
    output folder); then the slide's output is locked (``out/.<stem>.lock``; busy: InputError, or wait
    with ``settings.wait``), and what is already at ``out/<stem>`` is checked (see
    :mod:`wsi_nuc.ownership`: only wsi-nuc results of the same slide are replaced, another slide's only
    with ``settings.overwrite``). A full disk is one InputError naming the folder.
    """
    from .lock import hold
    from .model.io import check_model_dir, resolve_model_dir
    from .ownership import check_slot, check_stem, clean_stale_work, slide_identity
    from .slide import open_slide
    from .validate import is_no_space, no_space, tile_align, validate_settings
    from .writers.atomic import safe_child

    t_start = time.perf_counter()
    path = Path(path)
    out = Path(out)
    settings, _ = validate_settings(settings)
    timer = Timer()
    with timer("open"):       # the input checks: before any progress line, so bad input is one line
        model_dir = resolve_model_dir(settings.model, settings.device)
        mcfg = check_model_dir(model_dir)
        settings, _ = validate_settings(settings, tile_align(mcfg))
        reader = open_slide(path, settings.mpp)
    status = None
    try:
        with timer("open"):
            stem = slide_stem(path)
            check_stem(path, stem)
            check_output_dir(out)
            try:
                final = safe_child(out, stem)
            except ValueError as e:
                raise InputError(f"{path}: {e}") from None
            identity = slide_identity(path)
        with hold(out / f".{final.name}.lock", str(final), "run", settings.wait,
                  None if settings.quiet else _say):
            check_slot(final, identity, settings.overwrite)
            clean_stale_work(out, final.name)
            if progress is None and not settings.quiet:
                from .progress import SlideProgress

                status = SlideProgress(stem)
                timer.on_stage = status.stage
            try:
                summary = _run_open_slide(reader, path, out, final, identity, settings, client,
                                          progress or status, model_dir, mcfg, timer, t_start)
            except Exception as e:
                if not isinstance(e, InputError) and is_no_space(e):
                    raise no_space(out, e) from e
                raise
        if status is not None:
            status.close(f"{summary['nucleus_count']} nuclei, {summary['seconds']['total']:.1f} s")
        return summary
    except BaseException:
        if status is not None and status.tty and status.bar is None:
            status.stream.write("\r\033[K")     # clear the status line: the error gets a line of its own
            status.stream.flush()
        raise
    finally:
        if status is not None and status.bar is not None:
            status.bar.close()
        reader.close()


def _say(message: str) -> None:
    from .errors import one_line

    print(f"wsi-nuc: {one_line(message)}", file=sys.stderr, flush=True)


def _run_open_slide(reader, path, out, final, identity, settings, client, progress, model_dir, mcfg, timer,
                    t_start) -> dict:
    from . import spool as spool_io
    from .cluster import dask_client
    from .graph import Geometry, TaskSettings, run_tiles, spool_key
    from .lock import checkpoint
    from .ownership import check_slot, marker
    from .stainnorm import check_colour, slide_stats
    from .stitch import deduplicate
    from .tiling import make_grid
    from .tissue import detect_tissue, full_mask
    from .validate import tile_align
    from .writers.atomic import atomic_dir

    info = reader.info
    roi = None
    if settings.roi:
        from .roi import load_roi

        roi = load_roi(settings.roi, info)
    work_mpp = float(mcfg.get("mpp") or info.mpp)
    f = work_mpp / info.mpp
    H, W = max(1, math.ceil(info.height / f)), max(1, math.ceil(info.width / f))
    with timer("tissue"):
        tissue = detect_tissue(reader) if settings.tissue_detection else full_mask(info)
    grid = make_grid(H, W, settings.tile, settings.halo, align=tile_align(mcfg),
                     keep=lambda c: tissue.fraction_in_box(c.x0 * f, c.y0 * f, c.x1 * f, c.y1 * f) > 0
                     and (roi is None or roi.meets_box(c.x0 * f, c.y0 * f, c.x1 * f, c.y1 * f)))
    geom = Geometry(str(path.resolve()), settings.mpp, float(info.mpp), work_mpp, f)
    stain = None
    if mcfg.get("stain_norm"):
        with timer("stain"):
            st = slide_stats(reader, tissue, f, H, W)
            check_colour(st, path)
            stain = st.to_dict() if st is not None else None
    ts = TaskSettings(str(model_dir), settings.device, None, settings.batch, settings.margin,
                      dict(mcfg.get("postprocess") or {}), stain, settings.types)
    key = spool_key(geom, ts, grid.tile, grid.halo)
    spool = spool_io.load(spool_io.folder_for(out, final.name, key), key)
    try:
        if hasattr(progress, "start_tiles"):      # our own SlideProgress (a cohort passes a plain callable)
            progress.start_tiles(len(grid))
            progress = progress.update
        ctx = nullcontext(client) if client is not None else dask_client(settings.scheduler, settings.workers)
        stack = ExitStack()
        closer = None
        try:
            with timer("segment"):
                cl = stack.enter_context(ctx)
                if settings.dashboard and client is None:
                    print(_dashboard_line(cl, settings.scheduler), file=sys.stderr, flush=True)
                resources = {"GPU": 1} if settings.device == "cuda" and _has_gpu_resource(cl) else None
                tiles = run_tiles(cl, geom, list(grid), ts, spool=spool, per_task=settings.tiles_per_task,
                                  on_done=progress, resources=resources)
            # a cluster of our own shuts down (about 1 s) while the driver stitches and writes
            closer = threading.Thread(target=_close_quietly, args=(stack,), name="wsi-nuc-cluster-close",
                                      daemon=True)
            closer.start()
            with timer("stitch"):
                keep = deduplicate(tiles, band=2 * settings.margin + 1)
            with atomic_dir(final, before_replace=lambda p: check_slot(p, identity, settings.overwrite)) as tmp:
                summary = write_outputs(tmp, reader, info, tiles, keep, tissue, geom, grid, timer, settings,
                                        mcfg, model_dir, roi=roi)
                summary["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
                if stain is not None:
                    summary["stain_normalisation"] = {"slide": stain, "target": mcfg["stain_norm"]}
                summary["wsi_nuc_output"] = marker(identity)
                (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
                checkpoint("commit")
        finally:
            if closer is None:
                stack.close()
            else:
                closer.join()
    except BaseException:
        spool_io.drop_if_empty(spool)    # a failed run leaves only what a resume needs
        raise
    spool_io.finish(spool, f".{final.name}.tiles-")
    summary["output"] = str(final)
    return summary


def _dashboard_line(client, scheduler: str | None) -> str:
    """Where to watch the run: the Dask dashboard link, or how to get one (a LocalCluster serves it only
    when bokeh is installed; an external scheduler serves its own)."""
    import importlib.util

    if scheduler is None and importlib.util.find_spec("bokeh") is None:
        return "wsi-nuc: no Dask dashboard: it needs bokeh (pip install 'wsi-nuc[dashboard]')"
    link = getattr(client, "dashboard_link", None)
    return f"wsi-nuc: Dask dashboard: {link}" if link else "wsi-nuc: the cluster reports no dashboard"


def _close_quietly(stack: ExitStack) -> None:
    """Shut the run's own cluster down; a failure to stop cleanly must not fail a finished slide."""
    try:
        stack.close()
    except Exception:
        pass


def _has_gpu_resource(client) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return any("GPU" in (w.get("resources") or {}) for w in workers.values())


def write_outputs(tmp: Path, reader, info, tiles, keep, tissue, geom, grid, timer, settings, mcfg,
                  model_dir, roi=None) -> dict:
    """GeoJSON, table and zarr from the same surviving nuclei (so ids agree), then QC image and summary.
    What each writes: ``writers/slide_outputs.py``."""
    from . import __version__
    from .slide import read_thumbnail
    from .writers import slide_outputs as so
    from .writers.geojson import coordinate_decimals, write_geojson
    from .writers.ome_zarr import PROPERTIES_MAX, write_ome_zarr
    from .writers.table import write_csv, write_parquet

    stem = slide_stem(info.path)
    keep = so.apply_min_area(tiles, keep, settings.min_area_um2)
    if roi is not None:
        keep = so.apply_roi(tiles, keep, roi)
    typed = so.has_types(tiles, keep)
    outputs = []
    with timer("write_geojson"):
        gj = "nuclei.geojson.gz" if settings.geojson_gz else "nuclei.geojson"
        dec = coordinate_decimals(geom.f) if settings.simplify > 0 else 2
        n = write_geojson(tmp / gj, so.geojson_features(tiles, keep, settings.simplify * geom.f, typed, dec),
                          clean=False, compact=True)  # cleaned per tile, rounded by simplify_rings
        outputs.append(gj)
    cols = so.table_columns(typed)
    if settings.table in ("csv", "both"):
        with timer("write_csv"):
            write_csv(tmp / "nuclei.csv", cols, so.table_chunks(tiles, keep, stem, typed))
            outputs.append("nuclei.csv")
    if settings.table in ("parquet", "both"):
        with timer("write_parquet"):
            write_parquet(tmp / "nuclei.parquet", cols, so.table_chunks(tiles, keep, stem, typed))
            outputs.append("nuclei.parquet")
    with timer("write_zarr"):
        index = FinalIndex(tiles, keep, geom.f)
        thumb = read_thumbnail(reader, 2048)
        zinfo = write_ome_zarr(tmp / "nuclei.ome.zarr", (grid.height, grid.width), index, geom.f,
                               geom.level0_mpp, thumbnail=None if settings.zarr_image else thumb,
                               image_reader=reader if settings.zarr_image else None,
                               properties=so.zarr_properties(tiles, keep, typed) if n <= PROPERTIES_MAX else None,
                               colors=so.zarr_colors(tiles, keep) if typed and n <= PROPERTIES_MAX else None,
                               slide_name=stem)
        zinfo["properties"] = n <= PROPERTIES_MAX
        outputs.append("nuclei.ome.zarr")
    tissue_mm2 = float(tissue.area_mm2(info.mpp))
    roi_info = None
    if roi is not None:                # analysed tissue = tissue inside the region
        px_mm2 = (tissue.scale * float(info.mpp) / 1000.0) ** 2
        tissue_mm2 = float(np.count_nonzero(tissue.mask & roi.fraction_of(tissue.mask, tissue.scale))) * px_mm2
        roi_mm2 = roi.area_mm2(info.mpp)
        roi_info = {"path": roi.path, "kind": "polygons" if roi.geometry is not None else "mask",
                    "area_mm2": round(roi_mm2, 4), "tissue_area_mm2": round(tissue_mm2, 4),
                    "nucleus_count": n, "nuclei_per_mm2": round(n / roi_mm2, 2) if roi_mm2 > 0 else None}
    with timer("write_qc"):
        write_qc(tmp / "qc.png", reader, tissue, tiles, keep, info.mpp,
                 title=f"{stem}  |  model {mcfg.get('name', model_dir.name)} v{mcfg.get('version', '?')}"
                       f"  |  wsi-nuc {__version__}",
                 typed=typed, thumb=thumb, f=geom.f, min_area_um2=settings.min_area_um2)
        outputs.append("qc.png")
    summary = {
        "slide": {**info.to_dict(), "path": str(info.path)},
        "working_mpp": geom.work_mpp,
        "level0_per_working_px": geom.f,
        "tiles": {"core_px": grid.tile, "halo_px": grid.halo, "count": len(grid)},
        "tissue_area_mm2": round(tissue_mm2, 4),
        "tissue_detection": settings.tissue_detection,
        "nucleus_count": n,
        "nuclei_per_mm2": round(n / tissue_mm2, 2) if tissue_mm2 > 0 else None,
        "min_area_um2": settings.min_area_um2,
        "ome_zarr": {**zinfo, "resolution": "working", "scale_um": geom.work_mpp,
                     "level0_px_per_label_px": geom.f},
        "seconds": dict(timer.stages),
        "model": {"name": mcfg.get("name", model_dir.name), "version": mcfg.get("version"),
                  "path": str(model_dir)},
        "software": {"wsi_nuc": __version__, "python": platform.python_version(), **_versions()},
        "settings": {k: v for k, v in asdict(settings).items()
                     if k not in ("quiet", "dashboard", "wait", "overwrite")},
        "outputs": outputs + ["summary.json"],
    }
    if roi_info is not None:
        summary["roi"] = roi_info
    if typed:
        summary["types"] = so.type_summary(so.type_counts(tiles, keep), tissue_mm2)
    return summary


def _versions() -> dict:
    """Installed versions of the packages a result depends on (from package metadata: nothing is
    imported, so the driver never loads torch just to name its version)."""
    from importlib.metadata import version, PackageNotFoundError

    out = {}
    for pkg in ("torch", "openslide-python", "openslide-bin", "tiffslide", "dask", "distributed", "zarr",
                "scikit-image", "shapely", "kornia", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class FinalIndex:
    """Surviving outlines that touch a working-pixel box, found through their tile (no global tree).

    For every tile with survivors it keeps the outlines' bounding boxes in working pixels (level-0 / f),
    one (n, 4) array per tile, and the box around them all; a query picks the tiles, then the outlines,
    with boolean masks. An outline counts when its box touches [y0, y1] x [x0, x1] (edges included).
    Ids and order are those of ``final_order``.
    """

    def __init__(self, tiles, keep, f):
        from .graph import final_order

        self.f = f
        self.tiles = []
        for tn, idx, first in final_order(tiles, keep):
            if len(idx):
                self.tiles.append((tn, idx, first, _outline_boxes(tn)[idx] / f))
        self.boxes = np.array([(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
                               for *_, b in self.tiles]).reshape(-1, 4)

    def __call__(self, y0, x0, y1, x1):
        for t in np.flatnonzero(_touching(self.boxes, y0, x0, y1, x1)):
            tn, idx, first, boxes = self.tiles[t]
            for j in np.flatnonzero(_touching(boxes, y0, x0, y1, x1)).tolist():
                yield first + j, tn.polygon(idx[j])

    query = __call__


def _outline_boxes(tn) -> np.ndarray:
    """(x_min, y_min, x_max, y_max) of every outline of a tile, level-0; NaN for an empty outline."""
    starts, lens = tn.offsets[:-1], np.diff(tn.offsets)
    out = np.full((len(lens), 4), np.nan)
    ok = lens > 0
    if ok.any():
        x, y = tn.coords[:tn.offsets[-1], 0], tn.coords[:tn.offsets[-1], 1]
        s = starts[ok]
        out[ok] = np.column_stack([np.minimum.reduceat(x, s), np.minimum.reduceat(y, s),
                                   np.maximum.reduceat(x, s), np.maximum.reduceat(y, s)])
    return out


def _touching(boxes: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    """Which (x_min, y_min, x_max, y_max) boxes touch [y0, y1] x [x0, x1] (False for NaN boxes)."""
    return (boxes[:, 2] >= x0) & (boxes[:, 0] <= x1) & (boxes[:, 3] >= y0) & (boxes[:, 1] <= y1)


def write_qc(path: Path, reader, tissue, tiles, keep, level0_mpp: float, title: str | None = None,
             typed: bool = False, thumb=None, f: float = 1.0, min_area_um2: float | None = None) -> None:
    """qc.png from the surviving nuclei: zoom windows picked by ``writers.qc_data.pick_zooms``."""
    from .slide import read_thumbnail
    from .writers.qc import write_qc_png
    from .writers.qc_data import qc_inputs

    thumb, scale = thumb if thumb is not None else read_thumbnail(reader, 1024)
    kw = qc_inputs(reader, tiles, keep, level0_mpp, f, typed)
    write_qc_png(path, thumb, scale, tissue.mask, level0_mpp=level0_mpp, title=title,
                 min_area_um2=min_area_um2, **kw)
