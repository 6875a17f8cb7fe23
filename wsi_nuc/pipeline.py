"""One slide end to end: open, find tissue, tile, segment on Dask, stitch, write outputs atomically.

    run_slide("slide.svs", "out/", RunSettings())  ->  out/slide/{nuclei.geojson, nuclei.csv,
                                                        nuclei.ome.zarr, summary.json, qc.png}

The recipe (:func:`run_slide`): check the inputs (:func:`_check_inputs` -> a :class:`SlideRun`), lock the output,
plan the tiles (:func:`plan_tiles` -> a :class:`SlidePlan`), segment them on Dask (:func:`_segment`), stitch and
write (:func:`_stitch_and_write`, the outputs themselves in :mod:`wsi_nuc.writers.run_outputs`).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from .errors import InputError
from .ownership import slide_stem  # noqa: F401 - re-exported (cohort tests)
from .run_context import RunSettings, SlidePlan, SlideRun, Timer
from .validate import check_output_dir  # noqa: F401 - re-exported (cohort, tests)
from .writers.run_outputs import write_outputs

OUTPUT_FILES = ("nuclei.geojson", "nuclei.csv", "nuclei.ome.zarr", "summary.json", "qc.png")  # defaults
__all__ = ["OUTPUT_FILES", "RunSettings", "SlidePlan", "SlideRun", "Timer", "is_complete", "plan_tiles",
           "run_slide", "slide_stem", "write_outputs"]


def is_complete(folder: Path) -> bool:
    """A slide folder is complete when every output its summary lists exists (see
    :func:`wsi_nuc.results_folder.is_complete`)."""
    from .results_folder import is_complete as complete

    return complete(Path(folder))


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
    from .ownership import check_slot, clean_stale_work, work_name

    run = _check_inputs(Path(path), Path(out), settings, time.perf_counter())
    status = None
    try:
        st = run.settings
        work = work_name(run.final.name)
        with hold(run.out / f".{work}.lock", str(run.final), "run", st.wait, None if st.quiet else _say):
            check_slot(run.final, run.identity, st.overwrite)
            _check_replaceable(run)
            clean_stale_work(run.out, work)
            status = _status_line(run, progress)
            with _no_space_is_input_error(run.out):
                summary = _segment_and_write(run, client, progress or status)
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
        run.reader.close()


def _check_inputs(path: Path, out: Path, settings: RunSettings, t_start: float) -> SlideRun:
    """Settings, model folder, slide, output folder and name: every input check, before any progress line, so
    bad input is one line. The slide is open on return (closed here when a later check fails)."""
    from .model.io import check_model_dir, resolve_model_dir
    from .ownership import check_stem, slide_identity
    from .slide import open_slide
    from .results_folder import check_inputs_outside
    from .validate import check_postprocess, tile_align, validate_settings
    from .writers.atomic import safe_child

    settings, _ = validate_settings(settings)
    timer = Timer()
    with timer("open"):
        model_dir = resolve_model_dir(settings.model, settings.device)
        mcfg = check_model_dir(model_dir)
        check_postprocess(mcfg, model_dir)
        settings, _ = validate_settings(settings, tile_align(mcfg))
        reader = open_slide(path, settings.mpp)
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
            check_inputs_outside(final, [path, settings.roi])      # before reading the region itself
            roi = _load_roi(settings, reader.info)
    except BaseException:
        reader.close()
        raise
    run = SlideRun(path, out, final, identity, settings, reader, model_dir, mcfg, timer, t_start, roi)
    try:
        _check_replaceable(run)
    except BaseException:
        reader.close()
        raise
    return run


def _load_roi(settings: RunSettings, info):
    """The region (``--roi``), read with the other inputs: a bad region file is one line before any progress."""
    if not settings.roi:
        return None
    from .roi import load_roi

    return load_roi(settings.roi, info, settings.roi_class)


def _check_replaceable(run: SlideRun) -> None:
    """Inputs are never among what this run may replace in ``OUT/<stem>/``; checked before the work and again
    with the lock held (:mod:`wsi_nuc.results_folder`)."""
    from .results_folder import check_foreign, check_inputs_outside, planned_outputs

    check_inputs_outside(run.final, [run.path, run.settings.roi])
    check_foreign(run.final, planned_outputs(run.settings))


def _status_line(run: SlideRun, progress):
    """Our own progress display (a SlideProgress), unless the caller passed a callable or asked for quiet."""
    if progress is not None or run.settings.quiet:
        return None
    from .progress import SlideProgress

    from .errors import one_line

    status = SlideProgress(one_line(run.final.name))     # a name's control characters never reach the terminal
    run.timer.on_stage = status.stage
    return status


@contextmanager
def _no_space_is_input_error(out: Path):
    """A full disk is one line naming the output folder, not a traceback."""
    from .validate import is_no_space, no_space

    try:
        yield
    except Exception as e:
        if not isinstance(e, InputError) and is_no_space(e):
            raise no_space(out, e) from e
        raise


def _say(message: str) -> None:
    from .errors import one_line

    print(f"wsi-nuc: {one_line(message)}", file=sys.stderr, flush=True)


def plan_tiles(run: SlideRun) -> SlidePlan:
    """Region, tissue, the tile grid over the tissue (and region) at the model's scale, stain statistics."""
    from .graph import Geometry, TaskSettings
    from .stainnorm import check_colour, slide_stats
    from .tiling import Scale, make_grid
    from .tissue import detect_tissue, full_mask
    from .validate import tile_align

    info, st, mcfg = run.info, run.settings, run.mcfg
    roi = run.roi if run.roi is not None else _load_roi(st, info)
    scale = Scale(float(info.mpp), float(mcfg.get("mpp") or info.mpp))
    H, W = scale.work_shape(info.height, info.width)
    with run.timer("tissue"):
        tissue = detect_tissue(run.reader) if st.tissue_detection else full_mask(info)
    level0 = scale.to_level0
    grid = make_grid(H, W, st.tile, st.halo, align=tile_align(mcfg), margin=st.margin,
                     keep=lambda c: tissue.fraction_in(level0(c)) > 0 and (roi is None or roi.meets(level0(c))))
    geom = Geometry(str(run.path.resolve()), st.mpp, scale)
    stain = None
    if mcfg.get("stain_norm"):
        with run.timer("stain"):
            stats = slide_stats(run.reader, tissue, scale.f, H, W)
            check_colour(stats, run.path)
            stain = stats.to_dict() if stats is not None else None
    from .model.engine_choice import resolve_engine

    task = TaskSettings(str(run.model_dir), st.device, None, st.batch, dict(mcfg.get("postprocess") or {}),
                        stain, st.types, st.tta, resolve_engine(st.engine, run.model_dir, mcfg, st.device))
    return SlidePlan(tissue, grid, geom, roi, stain, task)


def _segment_and_write(run: SlideRun, client, progress) -> dict:
    """Plan, segment (resuming from the tile spool), stitch and write; the spool is finished on success and
    left with only what a resume needs on failure."""
    from . import spool as spool_io
    from .graph import in_process, load_here, todo_count
    from .ownership import work_name

    scheduler = "local" if run.settings.dashboard else run.settings.scheduler
    preload = _preload(run) if in_process(scheduler, _max_tiles(run), client) else None
    plan = plan_tiles(run)
    key = spool_io.spool_key(plan.geom, plan.task, run.settings)
    work = work_name(run.final.name)
    spool = spool_io.load(spool_io.folder_for(run.out, work, key), key)
    try:
        todo = todo_count(list(plan.grid), spool)
        here = in_process(scheduler, todo, client)
        if here and todo:
            with run.timer("model"):              # a handful of tiles: this process, the model loaded once
                preload.wait() if preload is not None else load_here(plan.task.model, plan.task.device,
                                                                     plan.task.engine, plan.task.types)
        if hasattr(progress, "start_tiles"):      # our own SlideProgress (a cohort passes a plain callable)
            progress.start_tiles(len(plan.grid), starting=None if here else "starting workers, loading the model")
            progress = progress.update
        stack, closer = ExitStack(), None
        try:
            tiles = _segment(run, plan, client, stack, spool, progress, here)
            # a cluster of our own shuts down (about 1 s) while the driver stitches and writes
            closer = threading.Thread(target=_close_quietly, args=(stack,), name="wsi-nuc-cluster-close",
                                      daemon=True)
            closer.start()
            summary = _stitch_and_write(run, plan, tiles)
        finally:
            if closer is None:
                stack.close()
            else:
                closer.join()
    except BaseException:
        spool_io.drop_if_empty(spool)    # a failed run leaves only what a resume needs
        raise
    finally:
        if preload is not None:
            preload.settle()             # never leave the interpreter with a model half-built in a thread
    spool_io.finish(spool, f".{work}.tiles-")
    summary["output"] = str(run.final)
    return summary


def _preload(run: SlideRun):
    """Start loading the model in the background (a :class:`wsi_nuc.graph.Preload`) for the engine the tiles
    will ask for, while tissue and stain statistics are found."""
    from .graph import Preload
    from .model.engine_choice import resolve_engine

    st = run.settings
    return Preload(str(run.model_dir), st.device, resolve_engine(st.engine, run.model_dir, run.mcfg, st.device),
                   st.types)


def _max_tiles(run: SlideRun) -> int:
    """Tiles of the slide if all of it were tissue: when even that is few, the model starts loading at once."""
    import math

    from .graph import max_tiles

    f = float(run.mcfg.get("mpp") or run.info.mpp) / run.info.mpp
    return max_tiles(math.ceil(run.info.height / f), math.ceil(run.info.width / f), run.settings.tile)


def _segment(run: SlideRun, plan: SlidePlan, client, stack: ExitStack, spool, progress, here: bool = False) -> list:
    """Every tile of the grid in this process (``here``) or through the Dask graph (on ``client``, or a cluster
    of our own entered on ``stack``)."""
    st = run.settings
    if here:
        from .graph import run_tiles_here

        with run.timer("segment"):
            return run_tiles_here(plan.geom, list(plan.grid), plan.task, spool=spool, on_done=progress,
                                  threads=st.workers)
    from .cluster import dask_client
    from .graph import run_tiles

    ctx = nullcontext(client) if client is not None else dask_client(st.scheduler, st.workers, st.dashboard)
    with run.timer("segment"):
        cl = stack.enter_context(ctx)
        if st.dashboard and client is None:
            print(_dashboard_line(cl, st.scheduler), file=sys.stderr, flush=True)
        resources = {"GPU": 1} if st.device == "cuda" and _has_gpu_resource(cl) else None
        return run_tiles(cl, plan.geom, list(plan.grid), plan.task, spool=spool, per_task=st.tiles_per_task,
                         on_done=progress, resources=resources)


def _stitch_and_write(run: SlideRun, plan: SlidePlan, tiles) -> dict:
    """One survivor per nucleus, then every output into a temporary folder renamed into place at the end."""
    from .lock import checkpoint
    from .model.engine_choice import engine_record
    from .ownership import check_slot, marker, work_name
    from .results_folder import building
    from .stitch import stitch

    st = run.settings
    with run.timer("stitch"):
        final = stitch(tiles, plan.grid.band, st.min_area_um2, plan.roi)
    with building(run.final, work_name(run.final.name),
                  before_commit=lambda p: check_slot(p, run.identity, st.overwrite)) as tmp:
        summary = write_outputs(tmp, run, plan, final)
        summary["seconds"]["total"] = round(time.perf_counter() - run.t_start, 3)
        summary["engine"] = engine_record(plan.task.engine, st.engine)
        if plan.stain is not None:
            summary["stain_normalisation"] = {"slide": plan.stain, "target": run.mcfg["stain_norm"]}
        summary["wsi_nuc_output"] = marker(run.identity)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        checkpoint("commit")
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
