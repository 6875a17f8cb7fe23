"""One slide on a Dask cluster: tile tasks (read -> predict -> instances -> owned nuclei), streamed back.

The Dask layer only wires plain functions: :func:`process_tiles` is the task, run on a worker that keeps
one slide reader and one model per process; :func:`run_tiles` submits tasks with a bounded number in
flight (tiles are streamed, never gathered all at once) and spools each finished tile to disk, so an
interrupted slide resumes from its finished tiles.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .instances import InstanceParams
from .segment import TileNuclei, tile_nuclei
from .stainnorm import LabStats
from .tiling import Scale, Tile

if TYPE_CHECKING:
    from .spool import Spool


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


_READERS: dict = {}


def _reader(path: str, mpp: float | None):
    from .slide import open_slide

    key = (path, mpp, os.getpid())
    if key not in _READERS:
        _READERS.clear()
        _READERS[key] = open_slide(path, mpp)
    return _READERS[key]


def process_tiles(geom: Geometry, tiles: list[Tile], ts: TaskSettings) -> list[TileNuclei]:
    """The Dask task: read, predict (batched) and segment a few tiles; pure and idempotent."""
    from .predict import get_predictor
    from .slide import read_region

    reader = _reader(geom.slide, geom.slide_mpp)
    predictor = get_predictor(ts.model, ts.device, ts.threads)
    params = InstanceParams.from_dict(ts.params)
    images = np.stack([read_region(reader, *geom.scale.window(t.read), t.read.w, t.read.h) for t in tiles])
    bs = ts.batch or (8 if predictor.device.type == "cuda" else 1)  # batch 1 is fastest on CPU (cache)
    stain = LabStats.from_dict(ts.stain)
    types = predictor.types if ts.types else ()
    out = []
    for s in range(0, len(tiles), bs):
        maps = predictor.maps(images[s:s + bs], stain)
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

    from . import spool as spool_io
    from .lock import checkpoint

    results = {}
    if spool is not None:
        done = spool.done
        results = {t.key: done[t.key] for t in tiles if t.key in done}
        if results and on_done:
            on_done(len(results))
    todo = [t for t in tiles if t.key not in results]
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
        for tn in batch:
            results[tn.key] = tn
            if spool is not None:
                spool_io.save(spool, tn)
        checkpoint("tile-spooled")
        if on_done:
            on_done(len(batch))
        submit_next()
    return [results[t.key] for t in tiles if t.key in results]
