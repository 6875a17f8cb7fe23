"""One slide on a Dask cluster: tile tasks (read -> predict -> instances -> owned nuclei), streamed back.

The Dask layer only wires plain functions: :func:`process_tiles` is the task, run on a worker that keeps
one slide reader and one model per process; :func:`run_tiles` submits tasks with a bounded number in
flight (tiles are streamed, never gathered all at once) and spools each finished tile to disk, so an
interrupted slide resumes from its finished tiles.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from .instances import InstanceParams
from .segment import TileNuclei, tile_nuclei
from .stainnorm import LabStats
from .tiling import Tile

if TYPE_CHECKING:
    from .spool import Spool


@dataclass(frozen=True)
class Geometry:
    """How working pixels map onto the slide: ``f`` level-0 pixels per working pixel."""

    slide: str
    slide_mpp: float | None       # the --mpp override, if any
    level0_mpp: float
    work_mpp: float
    f: float


@dataclass(frozen=True)
class TaskSettings:
    model: str | None
    device: str
    threads: int | None
    batch: int | None             # None: 1 on CPU, 8 on CUDA
    margin: int
    params: dict
    stain: dict | None = None     # the slide's CIELAB statistics, for a model that normalises stain
    types: bool = True            # per-nucleus type and type_prob, when the model has a type head
    engine: str | None = None     # resolved engine (wsi_nuc.model.engines); None: the model as stored


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
    predictor = get_predictor(ts.model, ts.device, ts.threads, ts.engine)
    params = InstanceParams.from_dict(ts.params)
    f = geom.f
    images = np.stack([read_region(reader, t.read.x0 * f, t.read.y0 * f, t.read.w * f, t.read.h * f,
                                   t.read.w, t.read.h) for t in tiles])
    bs = ts.batch or (8 if predictor.device.type == "cuda" else 1)  # batch 1 is fastest on CPU (cache)
    stain = LabStats.from_dict(ts.stain)
    types = predictor.types if ts.types else ()
    out = []
    for s in range(0, len(tiles), bs):
        maps = predictor.maps(images[s:s + bs], stain)
        for k, t in enumerate(tiles[s:s + bs]):
            out.append(tile_nuclei(t, images[s + k], maps[k], params, f, geom.work_mpp, geom.level0_mpp,
                                   ts.margin, types=types))
    return out


def spool_key(geom: Geometry, ts: TaskSettings, tile: int, halo: int) -> str:
    """Identity of a slide run: finished tiles are reused only when all of this matches."""
    st = os.stat(geom.slide)
    weights = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(ts.model).glob("*")
                     if p.is_file()) if ts.model and Path(ts.model).is_dir() else []
    ident = repr((os.path.abspath(geom.slide), st.st_size, int(st.st_mtime), asdict(geom), ts.model, weights,
                  ts.margin, sorted(ts.params.items()), ts.stain, tile, halo)
                 + (() if ts.types else ("no-types",))  # runs with types keep their former keys
                 + (() if ts.engine in (None, "torch-int8") else (f"engine={ts.engine}",)))
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


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


def final_order(tiles: list[TileNuclei], keep: list[np.ndarray]) -> list[tuple[TileNuclei, np.ndarray, int]]:
    """Per tile: (tile, surviving indices in centroid order, first global id). Ids run 1..N in tile order
    then centroid (y, x) order, so they do not depend on which worker finished first."""
    out = []
    nid = 1
    for tn, k in zip(tiles, keep):
        idx = np.nonzero(k)[0]
        if len(idx):
            idx = idx[np.lexsort((tn.columns["centroid_x_px"][idx], tn.columns["centroid_y_px"][idx]))]
        out.append((tn, idx, nid))
        nid += len(idx)
    return out


def iter_final(tiles: list[TileNuclei], keep: list[np.ndarray]) -> Iterable[tuple[int, TileNuclei, int]]:
    """(global id, tile, index in tile) for every surviving nucleus, in id order."""
    for tn, idx, first in final_order(tiles, keep):
        for j, i in enumerate(idx):
            yield first + j, tn, int(i)
