"""The tile spool: each finished tile of a slide run on disk, as data only, so an interrupted run resumes.

``OUT/.<stem>.tiles-<key>/<tile key>.tile.npz``: a plain (uncompressed) ``.npz`` of numeric arrays
(outline vertices, offsets, depths, one array per measurement column; a nucleus type's name is a
fixed-width text array) and a ``meta`` array holding JSON
(format, the run's settings key, tile key, row, column, core box, column names, the count of nuclei cut by
the halo, and a SHA-256 over every
array's name, dtype, shape and bytes). It is read with ``allow_pickle=False``: nothing in an output
folder is ever unpickled or executed.

A file is used only when it is a valid tile of *this* run (format, settings key, file name, checksum,
shapes); anything else in the folder is reported in one warning line and left alone: never read as
code, never deleted. When the run finishes, :func:`finish` deletes the tiles it verified or wrote and the
folder if that empties it; what remains, and spools of the same slide left by runs with other settings,
are reported.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import warn
from .lock import alive

FORMAT = "wsi-nuc-tile-spool/1"
SUFFIX = ".tile.npz"
MAX_FILE_BYTES = 1 << 30         # a spooled tile is a few MB at most; larger files are not read
_DATA_KINDS = "biufU"             # numbers and fixed-width text (a type name): never object arrays
_TMP = re.compile(r"\.r\d+_c\d+\.(\d+)\.tmp")


@dataclass
class Spool:
    folder: Path
    key: str
    done: dict = field(default_factory=dict)        # tile key -> TileNuclei (valid tiles of this run)
    ours: set = field(default_factory=set)          # files this run may delete when it finishes
    foreign: list = field(default_factory=list)     # (file, why) left alone

    def foreign_paths(self) -> set:
        return {p for p, _ in self.foreign}


def spool_key(geom, task, settings) -> str:
    """Identity of a slide run's tiles: finished tiles are reused only when all of this matches: the slide file
    (path, size, modification time), the scale (``graph.Geometry``), the model folder and its files, the
    post-processing and stain statistics (``graph.TaskSettings``), and the settings that change a tile's
    nuclei (:func:`wsi_nuc.run_context.result_settings`, stage "tiles")."""
    from dataclasses import asdict

    from .run_context import result_settings

    st = os.stat(geom.slide)
    model = Path(task.model) if task.model else None
    weights = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model.glob("*")
                     if p.is_file()) if model is not None and model.is_dir() else []
    ident = repr((os.path.abspath(geom.slide), st.st_size, int(st.st_mtime), asdict(geom), task.model, weights,
                  sorted(task.params.items()), task.stain, sorted(result_settings(settings, "tiles").items()))
                 + (() if getattr(task, "engine", None) in (None, "torch-int8") else (f"engine={task.engine}",)))
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def folder_for(out: Path, stem: str, key: str) -> Path:
    return out / f".{stem}.tiles-{key}"


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _arrays(tn) -> dict:
    out = {"coords": np.asarray(tn.coords, np.float64), "offsets": np.asarray(tn.offsets, np.int64),
           "depth": np.asarray(tn.depth, np.float64)}
    for name, col in tn.columns.items():
        out[f"col.{name}"] = np.asarray(col)
    return out


def save(spool: Spool, tn) -> None:
    """Write one finished tile (to a temporary name, then renamed: a crash never leaves half a tile)."""
    arrays = _arrays(tn)
    bad = [k for k, a in arrays.items() if a.dtype.kind not in _DATA_KINDS]
    if bad:
        raise TypeError(f"spool columns that are not numbers or text: {bad}")
    c = tn.core
    meta = {"format": FORMAT, "spool_key": spool.key, "tile": tn.key, "row": int(tn.row), "col": int(tn.col),
            "core": [int(c.y0), int(c.x0), int(c.y1), int(c.x1)], "columns": list(tn.columns),
            "cut": int(getattr(tn, "cut", 0)),
            "sha256": _digest(arrays)}
    final = spool.folder / f"{tn.key}{SUFFIX}"
    if final in spool.foreign_paths():
        return   # a file we did not verify sits at this name: left alone (the tile is just not spooled)
    tmp = spool.folder / f".{tn.key}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, final)
    spool.ours.add(final)


def _read_meta(z) -> dict:
    meta = json.loads(bytes(z["meta"].astype(np.uint8)).decode())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError("not a wsi-nuc tile spool file")
    return meta


def _open(path: Path):
    """np.load of a spool file, refusing anything that could be big on reading (a zip bomb)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size} bytes: too large for a spooled tile")
    with zipfile.ZipFile(path) as zf:
        if sum(i.file_size for i in zf.infolist()) > 2 * size + (1 << 16):
            raise ValueError("compressed members: not a spool file")
    return np.load(path, allow_pickle=False)


def read_tile(path: Path, key: str):
    """The TileNuclei in ``path`` if it is a valid tile of the run ``key``; ValueError says why not."""
    from .segment import TileNuclei
    from .tiling import Box

    with _open(path) as z:
        meta = _read_meta(z)
        if meta.get("spool_key") != key:
            raise ValueError("a tile of a run with other settings")
        if path.name != f"{meta.get('tile')}{SUFFIX}":
            raise ValueError("file name does not match its tile")
        arrays = {n: z[n] for n in z.files if n != "meta"}
    if meta.get("sha256") != _digest(arrays):
        raise ValueError("checksum mismatch (damaged file)")
    cols = list(meta.get("columns") or [])
    if set(arrays) != {"coords", "offsets", "depth", *(f"col.{c}" for c in cols)}:
        raise ValueError("unexpected arrays")
    if any(a.dtype.kind not in _DATA_KINDS for a in arrays.values()):
        raise ValueError("arrays that are not numbers or text")
    coords, offsets, depth = arrays["coords"], arrays["offsets"], arrays["depth"]
    n = len(offsets) - 1
    if (coords.ndim != 2 or coords.shape[1:] != (2,) or offsets.ndim != 1 or n < 0 or offsets[0] != 0
            or np.any(np.diff(offsets) < 0) or offsets[-1] > len(coords) or depth.shape != (n,)
            or any(arrays[f"col.{c}"].shape != (n,) for c in cols)):
        raise ValueError("inconsistent array shapes")
    y0, x0, y1, x1 = (int(v) for v in meta["core"])
    return TileNuclei(str(meta["tile"]), int(meta["row"]), int(meta["col"]), Box(y0, x0, y1, x1), coords,
                      offsets, depth, {c: arrays[f"col.{c}"] for c in cols}, int(meta.get("cut", 0)))


def load(folder: Path, key: str) -> Spool:
    """The spool of run ``key`` in ``folder`` (created if absent), with its valid finished tiles."""
    spool = Spool(folder, key)
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(folder.iterdir()):
        if _TMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            if not alive(int(_TMP.fullmatch(p.name).group(1))):
                p.unlink(missing_ok=True)   # left by a crashed writer of this run's own kind
            continue
        if not p.name.endswith(SUFFIX) or not p.is_file() or p.is_symlink():
            spool.foreign.append((p, "not a tile spool file"))
            continue
        try:
            tn = read_tile(p, key)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported and left alone
            spool.foreign.append((p, _why(e)))
            continue
        spool.done[tn.key] = tn
        spool.ours.add(p)
    if spool.foreign:
        warn(f"{folder}: ignored {_list(spool.foreign)}: not tiles of this run (not read as code, not "
             f"deleted)")
    return spool


def drop_if_empty(spool: Spool) -> None:
    """Remove the spool folder when it holds nothing (a run that failed before its first tile)."""
    try:
        spool.folder.rmdir()
    except OSError:
        pass


def finish(spool: Spool, stem_prefix: str, report: Callable[[str], None] = warn) -> None:
    """After a finished run: delete the run's own tiles (and the folder when that empties it); report
    files left in it and other spools of the same slide (``stem_prefix`` = ``.<stem>.tiles-``)."""
    for p in spool.ours:
        Path(p).unlink(missing_ok=True)
    try:
        left = sorted(spool.folder.iterdir())
    except FileNotFoundError:
        left = []
    if not left:
        shutil.rmtree(spool.folder, ignore_errors=True)
    else:
        report(f"{spool.folder}: left in place: it holds {_list([(p, '') for p in left])} that wsi-nuc "
               f"did not write; delete it when you have looked")
    for other in sorted(spool.folder.parent.glob(f"{stem_prefix}*")):
        if other != spool.folder and other.is_dir() and not other.is_symlink():
            n, size = _usage(other)
            report(f"{other}: a tile spool of an unfinished run of this slide with other settings ({n} "
                   f"files, {size / 1e6:.1f} MB); rerun with those settings to resume it, or delete it")


def _usage(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _why(e: BaseException) -> str:
    return " ".join(str(e).split())[:120] or type(e).__name__


def _list(items) -> str:
    names = [p.name + (f" ({why})" if why else "") for p, why in items]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{len(names)} file{'s' if len(names) != 1 else ''} ({'; '.join(names[:3])}{more})"
