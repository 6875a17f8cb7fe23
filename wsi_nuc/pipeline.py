"""One slide end to end: open, find tissue, tile, segment on Dask, stitch, write outputs atomically.

    run_slide("slide.svs", "out/", RunSettings())  ->  out/slide/{nuclei.geojson, nuclei.csv,
                                                        labels.zarr, summary.json, qc.png}
"""
from __future__ import annotations

import json
import math
import platform
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, asdict, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .validate import check_output_dir  # noqa: F401 - re-exported (cohort, tests)

OUTPUT_FILES = ("nuclei.geojson", "nuclei.csv", "labels.zarr", "summary.json", "qc.png")


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
    geojson_gz: bool = False
    wait: bool = False              # output locked by another run: wait for it (else InputError at once)
    overwrite: bool = False         # replace wsi-nuc results of another slide with the same name
    types: bool = True              # per-nucleus type and type_prob when the model has a type head (--no-types)


@dataclass
class Timer:
    stages: dict = field(default_factory=dict)

    def __call__(self, name):
        timer = self

        class _T:
            def __enter__(self):
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
    """A slide folder is complete when every output exists (outputs are moved into place together)."""
    return folder.is_dir() and all((folder / n).exists() for n in OUTPUT_FILES)


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

    timer = Timer()
    t_start = time.perf_counter()
    path = Path(path)
    out = Path(out)
    settings, _ = validate_settings(settings)
    with timer("open"):
        model_dir = resolve_model_dir(settings.model, settings.device)
        mcfg = check_model_dir(model_dir)
        settings, _ = validate_settings(settings, tile_align(mcfg))
        reader = open_slide(path, settings.mpp)
    try:
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
            try:
                return _run_open_slide(reader, path, out, final, identity, settings, client, progress,
                                       model_dir, mcfg, timer, t_start)
            except Exception as e:
                if not isinstance(e, InputError) and is_no_space(e):
                    raise no_space(out, e) from e
                raise
    finally:
        reader.close()


def _say(message: str) -> None:
    import sys

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
    from .validate import tile_align
    from .tiling import make_grid
    from .tissue import detect_tissue, full_mask
    from .writers.atomic import atomic_dir

    info = reader.info
    work_mpp = float(mcfg.get("mpp") or info.mpp)
    f = work_mpp / info.mpp
    H, W = max(1, math.ceil(info.height / f)), max(1, math.ceil(info.width / f))
    with timer("tissue"):
        tissue = detect_tissue(reader) if settings.tissue_detection else full_mask(info)
    grid = make_grid(H, W, settings.tile, settings.halo, align=tile_align(mcfg),
                     keep=lambda c: tissue.fraction_in_box(c.x0 * f, c.y0 * f, c.x1 * f, c.y1 * f) > 0)
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
        bar = None
        if progress is None and not settings.quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(grid), unit="tile", desc=final.name, leave=False)
            progress = bar.update
        ctx = nullcontext(client) if client is not None else dask_client(settings.scheduler, settings.workers)
        stack = ExitStack()
        closer = None
        try:
            with timer("segment"):
                cl = stack.enter_context(ctx)
                resources = {"GPU": 1} if settings.device == "cuda" and _has_gpu_resource(cl) else None
                tiles = run_tiles(cl, geom, list(grid), ts, spool=spool, per_task=settings.tiles_per_task,
                                  on_done=progress, resources=resources)
            # a cluster of our own shuts down (about 1 s) while the driver stitches and writes
            closer = threading.Thread(target=_close_quietly, args=(stack,), name="wsi-nuc-cluster-close",
                                      daemon=True)
            closer.start()
            if bar is not None:
                bar.close()
            with timer("stitch"):
                keep = deduplicate(tiles, band=2 * settings.margin + 1)
            with atomic_dir(final, before_replace=lambda p: check_slot(p, identity, settings.overwrite)) as tmp:
                summary = write_outputs(tmp, reader, info, tiles, keep, tissue, geom, grid, timer, settings,
                                        mcfg, model_dir)
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
                  model_dir) -> dict:
    """GeoJSON, CSV and zarr from the same surviving nuclei (so ids agree), then QC image and summary."""
    from . import __version__
    from .morphometry import COLUMNS
    from .writers.geojson import write_geojson
    from .writers.labels_zarr import write_labels_zarr
    from .writers.table import write_csv

    meas_cols = [c for c in COLUMNS if c not in ("nucleus_id",)]
    with timer("write_geojson"):
        gj = tmp / ("nuclei.geojson.gz" if settings.geojson_gz else "nuclei.geojson")
        n = write_geojson(gj, _final_features(tiles, keep, meas_cols), id_namespace=Path(info.path).name,
                          clean=False)  # cleaned per tile
    with timer("write_csv"):
        write_csv(tmp / "nuclei.csv", COLUMNS, _final_column_chunks(tiles, keep, meas_cols))
    with timer("write_zarr"):
        index = FinalIndex(tiles, keep, geom.f)
        write_labels_zarr(tmp / "labels.zarr", (grid.height, grid.width), index, geom.f, geom.level0_mpp)
    tissue_mm2 = float(tissue.area_mm2(info.mpp))
    with timer("write_qc"):
        write_qc(tmp / "qc.png", reader, tissue, tiles, keep, info.mpp)
    return {
        "slide": {**info.to_dict(), "path": str(info.path)},
        "working_mpp": geom.work_mpp,
        "level0_per_working_px": geom.f,
        "tiles": {"core_px": grid.tile, "halo_px": grid.halo, "count": len(grid)},
        "tissue_area_mm2": round(tissue_mm2, 4),
        "tissue_detection": settings.tissue_detection,
        "nucleus_count": n,
        "nuclei_per_mm2": round(n / tissue_mm2, 2) if tissue_mm2 > 0 else None,
        "labels_zarr": {"resolution": "working", "scale_um": geom.work_mpp,
                        "level0_px_per_label_px": geom.f},
        "seconds": dict(timer.stages),
        "model": {"name": mcfg.get("name", model_dir.name), "version": mcfg.get("version"),
                  "path": str(model_dir)},
        "software": {"wsi_nuc": __version__, "python": platform.python_version(), **_versions()},
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("quiet", "wait", "overwrite")},
    }


def _final_features(tiles, keep, meas_cols):
    """(nucleus id, outline, measurements) of every surviving nucleus, in id order (see ``iter_final``);
    each tile's measurement columns are converted to Python floats in one go."""
    from .graph import final_order

    for tn, idx, first in final_order(tiles, keep):
        cols = [tn.columns[c][idx].tolist() for c in meas_cols]
        for j, (i, vals) in enumerate(zip(idx.tolist(), zip(*cols))):
            yield first + j, tn.polygon(i), dict(zip(meas_cols, vals))


def _final_column_chunks(tiles, keep, meas_cols):
    """One CSV column chunk per tile: the surviving nuclei's ids and measurements, in id order."""
    from .graph import final_order

    for tn, idx, first in final_order(tiles, keep):
        chunk = {"nucleus_id": np.arange(first, first + len(idx), dtype=np.int64)}
        chunk.update((c, tn.columns[c][idx]) for c in meas_cols)
        yield chunk


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


def write_qc(path: Path, reader, tissue, tiles, keep, level0_mpp: float) -> None:
    from .graph import final_order
    from .slide import read_thumbnail
    from .writers.qc import write_qc_png

    thumb, scale = read_thumbnail(reader, 1024)
    cents = [np.stack([tn.columns["centroid_x_px"][idx], tn.columns["centroid_y_px"][idx]], 1)
             for tn, idx, _ in final_order(tiles, keep)]
    cents = np.concatenate(cents) if cents else np.zeros((0, 2))
    zooms = []
    for tn, k in sorted(zip(tiles, keep), key=lambda z: -int(z[1].sum()))[:4]:
        if not k.any():
            break
        idx = np.nonzero(k)[0]
        cx, cy = tn.columns["centroid_x_px"][idx], tn.columns["centroid_y_px"][idx]
        x0, y0 = float(np.median(cx)) - 128, float(np.median(cy)) - 128
        from .slide import read_region

        scale0 = 1.0
        crop = read_region(reader, x0, y0, 256 * scale0, 256 * scale0, 256, 256)
        polys = [tn.polygon(i) - (x0, y0) for i in idx
                 if x0 <= tn.columns["centroid_x_px"][i] < x0 + 256 and y0 <= tn.columns["centroid_y_px"][i] < y0 + 256]
        zooms.append((crop, polys))
    write_qc_png(path, thumb, scale, tissue.mask, cents, zooms, level0_mpp=level0_mpp)
