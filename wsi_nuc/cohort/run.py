"""The cohort run loop: checks, the batch lock, the cluster, a few slides in flight, failure isolation, interrupts.

:func:`run_cohort` is the recipe: check the usage, take the lock, plan (resume), then run what is left on a
cluster, each slide in a driver thread (:func:`_run_one`), a failure recorded for its slide alone.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError, one_line
from ..graph import AUTO, IN_PROCESS, LOCAL
from .inputs import Cohort, CohortSlide, read_cohort
from .manifest import DONE, FAILED, SKIPPED, CohortResult, Tables, _morph_row, _now, _pending_row, _reason, \
    _row_from_summary
from .progress import Progress
from .resume import plan, slide_settings

LOCK = ".cohort.lock"


@contextmanager
def cohort_lock(out: Path, wait: bool = False):
    """One batch at a time per output folder (two would overwrite each other's manifest)."""
    from ..lock import hold

    with hold(out / LOCK, str(out), "batch", wait=wait,
              on_wait=lambda m: print(f"wsi-nuc: {one_line(m)}", file=sys.stderr, flush=True)):
        yield


def _dashboard(client, local: bool) -> str | None:
    """The dashboard link, when the scheduler serves one (a LocalCluster here needs bokeh for it)."""
    if local and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        if (client.scheduler_info().get("services") or {}).get("dashboard"):
            return client.dashboard_link
    except Exception:
        pass
    return None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _check_cuda_workers(client) -> None:
    """--device cuda on a cluster whose workers have no GPU would fail every slide: say so once."""
    workers = client.scheduler_info().get("workers", {})
    if not workers or any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return  # none yet (an adaptive cluster) or GPU workers advertised: inference goes there
    if not any(client.run(_cuda_available).values()):
        raise InputError("--device cuda: no worker of this cluster has a CUDA device (start GPU workers "
                         "with `dask worker ... --resources GPU=1`, or use --device cpu)")


def default_parallel_slides(client) -> int:
    """Slides in flight: 2 (one stitches and writes on the driver while the next keeps the workers busy),
    up to 8 on large clusters (one more per 4 worker threads)."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:
        threads = 0
    return min(8, max(2, threads // 4))




@dataclass
class _Run:
    """What every slide thread of one cohort run shares."""

    out: Path
    settings: object                 # the validated RunSettings
    tables: Tables
    progress: Progress
    client: object
    run_fn: Callable
    stream: object
    debug: bool
    stop: threading.Event


def run_cohort(cohort, out, settings=None, *, force: bool = False, client=None,
               parallel_slides: int | None = None, run_slide_fn: Callable | None = None,
               stream=None, debug: bool = False) -> CohortResult:
    """Run every slide of ``cohort`` (a :class:`Cohort` or anything :func:`read_cohort` takes) into
    ``out/<stem>/``; write ``out/cohort.csv`` and ``out/cohort_summary.csv``.

    ``client``: a ``distributed.Client`` to use (else one is made from ``settings.scheduler`` /
    ``settings.workers``, only when some slide needs running). ``run_slide_fn``: stands in for
    :func:`wsi_nuc.pipeline.run_slide` (tests). Raises InputError for bad usage before any slide starts;
    slide failures are recorded, never raised.
    """
    from ..pipeline import run_slide

    t0 = time.perf_counter()
    stream = stream or sys.stderr
    cohort, out, settings, model_dir = _check_usage(cohort, out, settings)
    with cohort_lock(out, wait=settings.wait):
        tables, todo = plan(cohort, out, settings, model_dir, force, stream)
        tables.flush(True)
        progress = Progress(len(cohort.slides), stream, enabled=not settings.quiet)
        progress.counts[SKIPPED] = len(cohort.slides) - len(todo)
        if todo:
            with _cluster(client, settings, progress, check_cuda=run_slide_fn is None) as cl:
                run = _Run(out, settings, tables, progress, cl, run_slide_fn or run_slide, stream, debug,
                           threading.Event())
                _run_all(run, todo, parallel_slides or default_parallel_slides(cl))
            tables.flush(True)
        progress.close()
    return tables.result(time.perf_counter() - t0)


def _check_usage(cohort, out, settings):
    """Everything that is bad usage (exit 2), before the lock and any slide: settings, cohort, output, model."""
    from ..model.io import check_model_dir, resolve_model_dir
    from ..pipeline import RunSettings
    from ..validate import check_output_dir, check_postprocess, validate_settings

    settings, _ = validate_settings(settings or RunSettings())
    if settings.scheduler == IN_PROCESS:
        raise InputError("--scheduler in-process: batch runs its slides on a Dask cluster (use local, auto or "
                         "the address of a scheduler)")
    if not isinstance(cohort, Cohort):
        cohort = read_cohort(cohort)
    out = Path(os.path.abspath(out))
    check_output_dir(out)
    from .own_files import check_cohort_files

    check_cohort_files(cohort.source if os.path.isfile(os.path.expanduser(cohort.source)) else None, out)
    model_dir = resolve_model_dir(settings.model, settings.device)   # a bad --model is a usage error, before any slide
    check_postprocess(check_model_dir(model_dir), model_dir)
    return cohort, out, settings, model_dir


@contextmanager
def _cluster(client, settings, progress: Progress, check_cuda: bool):
    """The given client, or a cluster of the settings' (started only now that some slide needs running)."""
    from ..cluster import dask_client

    quiet = settings.quiet
    local = client is None and settings.scheduler in (None, "", LOCAL, AUTO)
    dashboard = not quiet and importlib.util.find_spec("bokeh") is not None  # no bokeh, no dashboard
    ctx = nullcontext(client) if client is not None else dask_client(settings.scheduler, settings.workers,
                                                                       dashboard=dashboard)
    with ExitStack() as stack:
        with warnings.catch_warnings():  # "port 8787 in use, using another": not the user's concern
            warnings.filterwarnings("ignore", message=".*already in use")
            cl = stack.enter_context(ctx)
        if settings.device == "cuda" and check_cuda:
            _check_cuda_workers(cl)
        if not quiet:
            progress.dashboard = _dashboard(cl, local)
        yield cl


def _run_all(run: _Run, todo: list[tuple[CohortSlide, str]], k: int) -> None:
    """``k`` slides in flight on driver threads; the tables and progress line refreshed as they finish.
    An interrupt (or a bug) stops the loop: unfinished slides stay pending, the tables are written."""
    pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="wsi-nuc-slide")
    futures = [pool.submit(_run_one, run, s, why) for s, why in todo]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                f.result()  # `_run_one` records slide errors itself; anything here is a bug
            run.tables.flush()
            run.progress.show(force=bool(done))
    except BaseException:
        run.stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        run.tables.flush(True)
        run.progress.close()
        raise
    pool.shutdown(wait=True)


def _run_one(run: _Run, slide: CohortSlide, why: str) -> None:
    """One slide, exactly `wsi-nuc run` with its own mpp and region; its row recorded whatever happens."""
    progress, settings = run.progress, run.settings
    with progress.lock:
        progress.running += 1
    st = slide_settings(slide, settings)
    try:
        summ = run.run_fn(slide.path, run.out, st, client=run.client, progress=progress.slide_progress())
        row = _row_from_summary(slide, run.out, DONE, summ, why)
        morph, err = _morph_row(slide, run.out, summ, progress), None
    except Exception as e:  # noqa: BLE001 - a broken slide fails alone
        err = e
    if run.stop.is_set():
        return  # interrupted: the slide stays pending, its finished tiles stay spooled
    with progress.lock:
        progress.running -= 1
        progress.counts[FAILED if err else DONE] += 1
    if err is not None:
        row, morph = _failed_row(run, slide, err), None
    run.tables.record(slide.stem, row, morph)
    run.tables.flush()


def _failed_row(run: _Run, slide: CohortSlide, err: Exception) -> dict:
    """The manifest row of a failed slide; its reason said on its own line (with the traceback under --debug)."""
    row = {**_pending_row(slide, run.out), "status": FAILED, "reason": _reason(err), "finished_at": _now()}
    where = "" if str(slide.path) in row["reason"] else f"{slide.path}: "
    run.progress.message(f"wsi-nuc batch: failed: {where}{row['reason']}")
    if run.debug and not isinstance(err, InputError):
        import traceback

        traceback.print_exception(err, file=run.stream)
    return row
