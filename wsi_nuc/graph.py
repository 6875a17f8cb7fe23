"""One slide's tiles: tile tasks (read -> predict -> instances -> owned nuclei), streamed back.

:func:`process_tiles` is the task, a plain function: it keeps one slide reader per thread and one model per
process. Two runners call it and spool each finished tile to disk, so an interrupted slide resumes from its
finished tiles:

- :func:`run_tiles`: on a Dask cluster, with a bounded number of tasks in flight (tiles are streamed, never
  gathered all at once);
- :func:`run_tiles_here`: in this process, for a handful of tiles (see :func:`wsi_nuc.cluster.in_process`):
  no worker processes to start and no model to load per worker, the model loaded once (:func:`load_here`).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .instances import InstanceParams
from .segment import TileNuclei, tile_nuclei
from .stainnorm import LabStats
from .tiling import Scale, Tile

if TYPE_CHECKING:
    from .spool import Spool


IN_PROCESS = "in-process"
LOCAL = "local"
AUTO = "auto"
# `wsi-nuc run` segments up to this many tiles in this process (docs/performance.md has the measurements: in
# process was as fast or faster up to 257 tiles; the LocalCluster stays for larger slides, for its retries
# and worker restarts)
IN_PROCESS_MAX_TILES = 256


def in_process(scheduler: str | None, n_tiles: int, client=None) -> bool:
    """Whether a slide with ``n_tiles`` tiles still to do runs in this process rather than on Dask.

    ``scheduler`` (``--scheduler``): ``auto`` or None: in this process up to :data:`IN_PROCESS_MAX_TILES`
    tiles, else on a LocalCluster; ``in-process`` or ``local`` force either; an address (or a ``client``
    given): on that cluster.

    >>> in_process(None, 21), in_process(None, 500), in_process("in-process", 500), in_process("local", 1)
    (True, False, True, False)
    """
    if client is not None:
        return False
    if scheduler == IN_PROCESS:
        return True
    if scheduler in (None, "", AUTO):
        return n_tiles <= IN_PROCESS_MAX_TILES
    return False


@dataclass(frozen=True)
class Geometry:
    """The slide a task reads and how its working pixels map onto it (:class:`wsi_nuc.tiling.Scale`)."""

    slide: str
    slide_mpp: float | None       # the --mpp override, if any
    scale: Scale

    @property
    def level0_mpp(self) -> float:
        return self.scale.level0_mpp

    @property
    def work_mpp(self) -> float:
        return self.scale.work_mpp

    @property
    def f(self) -> float:
        return self.scale.f


@dataclass(frozen=True)
class TaskSettings:
    model: str | None
    device: str
    threads: int | None
    batch: int | None             # None: 1 on CPU, 8 on CUDA
    params: dict
    stain: dict | None = None     # the slide's CIELAB statistics, for a model that normalises stain
    types: bool = True            # per-nucleus type and type_prob, when the model has a type head
    tta: int = 1                  # test-time augmentation (1, 4 or 8 flips/rotations; wsi_nuc.predict.forward_tta)
    engine: str | None = None     # resolved engine (wsi_nuc.model.engines); None: the model as stored


_LOCAL = threading.local()        # one slide reader per thread: readers are not all thread-safe


def _reader(path: str, mpp: float | None):
    from .slide import open_slide

    key = (path, mpp, os.getpid())
    if getattr(_LOCAL, "key", None) != key:
        _LOCAL.key, _LOCAL.reader = None, None
        _LOCAL.reader = open_slide(path, mpp)
        _LOCAL.key = key
    return _LOCAL.reader


def process_tiles(geom: Geometry, tiles: list[Tile], ts: TaskSettings, reader=None) -> list[TileNuclei]:
    """The Dask task: read, predict (batched) and segment a few tiles; pure and idempotent. ``reader``: an open
    reader to use instead of the thread's own reader of ``geom.slide`` (an image in memory, the Python API)."""
    from .predict import get_predictor
    from .slide import read_region

    reader = reader if reader is not None else _reader(geom.slide, geom.slide_mpp)
    predictor = get_predictor(ts.model, ts.device, ts.threads, ts.engine, ts.types)  # no types: trunk only
    params = InstanceParams.from_dict(ts.params)
    images = np.stack([read_region(reader, *geom.scale.window(t.read), t.read.w, t.read.h) for t in tiles])
    bs = ts.batch or (8 if predictor.device.type == "cuda" else 1)  # batch 1 is fastest on CPU (cache)
    stain = LabStats.from_dict(ts.stain)
    types = predictor.types   # () with --no-types: the predictor is the trunk alone
    out = []
    for s in range(0, len(tiles), bs):
        maps = predictor.maps(images[s:s + bs], stain, tta=ts.tta)
        for k, t in enumerate(tiles[s:s + bs]):
            out.append(tile_nuclei(t, images[s + k], maps[k], params, geom.scale, types=types))
    return out


def run_tiles(client, geom: Geometry, tiles: list[Tile], ts: TaskSettings, spool: "Spool | None" = None,
              per_task: int = 4, max_in_flight: int | None = None,
              on_done: Callable[[int], None] | None = None, resources: dict | None = None) -> list[TileNuclei]:
    """Run every tile through :func:`process_tiles` on ``client``; results in tile order.

    At most ``max_in_flight`` tasks are queued at once (default: 2 per worker thread), so a huge slide
    does not flood the scheduler. With ``spool`` (a :class:`wsi_nuc.spool.Spool`, loaded), its finished
    tiles are used instead of recomputed and every newly finished tile is saved to it.
    """
    from distributed import as_completed

    results, todo = _resume(tiles, spool, on_done)
    chunks = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
    if max_in_flight is None:
        nthreads = sum(client.nthreads().values()) or 1
        max_in_flight = 2 * nthreads
    it = iter(chunks)
    ac = as_completed()

    def submit_next() -> bool:
        chunk = next(it, None)
        if chunk is None:
            return False
        key = f"wsi-nuc-{spool.folder.name if spool else 'tiles'}-{chunk[0].key}"
        ac.add(client.submit(process_tiles, geom, chunk, ts, key=key, retries=3, pure=False,
                             resources=resources))
        return True

    for _ in range(max_in_flight):
        if not submit_next():
            break
    for fut in ac:
        batch = fut.result()
        fut.release()
        _finished(batch, results, spool, on_done)
        submit_next()
    return [results[t.key] for t in tiles if t.key in results]




def _resume(tiles: list[Tile], spool: "Spool | None", on_done) -> tuple[dict, list[Tile]]:
    """({tile key: TileNuclei} of the tiles the spool has already, the tiles still to do)."""
    results = {}
    if spool is not None:
        done = spool.done
        results = {t.key: done[t.key] for t in tiles if t.key in done}
        if results and on_done:
            on_done(len(results))
    return results, [t for t in tiles if t.key not in results]


def _finished(batch: list[TileNuclei], results: dict, spool: "Spool | None", on_done) -> None:
    """Record a finished task's tiles: in ``results``, in the spool, and in the progress."""
    from . import spool as spool_io
    from .lock import checkpoint

    for tn in batch:
        results[tn.key] = tn
        if spool is not None:
            spool_io.save(spool, tn)
    checkpoint("tile-spooled")
    if on_done:
        on_done(len(batch))


def todo_count(tiles: list[Tile], spool: "Spool | None") -> int:
    """How many of ``tiles`` the spool does not have yet."""
    done = spool.done if spool is not None else {}
    return sum(t.key not in done for t in tiles)


def here_threads(workers: int | None = None) -> tuple[int, int]:
    """(tile threads, torch threads per tile thread) in this process: ``workers`` tile threads (default: as
    many as a LocalCluster has worker processes, 2 at most), the cores shared among them."""
    cores = os.cpu_count() or 1
    n = max(1, workers or min(cores, 2))
    return n, max(1, cores // n)


_FROZEN = threading.Event()


def load_here(model: str | None, device: str, engine: str | None = None, types: bool = True):
    """Load the model in this process for :func:`run_tiles_here` (once; later calls reuse it), for the engine
    the tile tasks will ask for (``TaskSettings.engine``: the same predictor, not a second load).

    The first load is followed by ``gc.freeze()``: torch, its FX graph and the modules it pulled in are a few
    million objects that the cyclic garbage collector would otherwise walk at every full collection and
    once more at exit (about 3 s of a 2-core machine's exit, measured)."""
    import gc

    from .predict import get_predictor

    predictor = get_predictor(model, device, None, engine, types)
    if not _FROZEN.is_set():
        _FROZEN.set()
        gc.freeze()
    return predictor


class Preload:
    """The model loading in a background thread while the driver finds tissue and stain statistics;
    :meth:`wait` returns the predictor (or raises what loading raised)."""

    def __init__(self, model: str | None, device: str, engine: str | None = None, types: bool = True):
        self._result, self._error = None, None
        self._thread = threading.Thread(target=self._load, args=(model, device, engine, types), name="wsi-nuc-model",
                                        daemon=True)
        self._thread.start()

    def _load(self, model, device, engine, types) -> None:
        try:
            self._result = load_here(model, device, engine, types)
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits
            self._error = e

    def wait(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def settle(self) -> None:
        """Wait for the load to end, whatever it gave: a run that did not need the model (every tile spooled)
        or failed must not exit while a thread is still building it (torch aborts at exit)."""
        self._thread.join()


def max_tiles(height: int, width: int, tile: int) -> int:
    """Tiles of a ``height`` x ``width`` (working px) slide if every tile had tissue: an upper bound."""
    return -(-max(1, height) // tile) * -(-max(1, width) // tile)


def run_tiles_here(geom: Geometry, tiles: list[Tile], ts: TaskSettings, spool: "Spool | None" = None,
                   on_done: Callable[[int], None] | None = None, threads: int | None = None,
                   reader=None) -> list[TileNuclei]:
    """:func:`run_tiles` in this process: ``threads`` tile threads (see :func:`here_threads`), each running
    :func:`process_tiles` on one tile (a batch on CUDA) at a time, torch's threads shared among them (set for
    the run, restored after); results in tile order. ``reader``: a thread-safe reader for every tile thread
    (see :func:`process_tiles`)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    predictor = load_here(ts.model, ts.device, ts.engine)
    # torch's threads where a torch engine loaded it; ONNX Runtime's sessions were built with their share
    torch = sys.modules.get("torch")
    results, todo = _resume(tiles, spool, on_done)
    per = ts.batch or (8 if predictor.device.type == "cuda" else 1)
    chunks = [todo[i:i + per] for i in range(0, len(todo), per)]
    n, torch_threads = here_threads(threads)
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(torch_threads)
    try:
        if n <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                _finished(process_tiles(geom, chunk, ts, reader), results, spool, on_done)
        else:
            with ThreadPoolExecutor(n, thread_name_prefix="wsi-nuc-tile") as pool:
                futures = [pool.submit(process_tiles, geom, chunk, ts, reader) for chunk in chunks]
                try:
                    for fut in futures:
                        _finished(fut.result(), results, spool, on_done)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        if torch is not None:
            torch.set_num_threads(before)
    return [results[t.key] for t in tiles if t.key in results]

