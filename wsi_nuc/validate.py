"""Checks that run before any cluster starts: run settings and the output folder.

:func:`validate_settings` is the one owner of the bounds of ``--tile``, ``--halo`` (more than the ownership
margin, see :mod:`wsi_nuc.tiling`), ``--batch`` and ``--workers``; it returns the settings as they will be used (tile and halo rounded up to the 16-px
pooling grid) and a note for every value it rounded. The model folder is checked by
:func:`wsi_nuc.model.io.check_model_dir`, the slide by :func:`wsi_nuc.slide.open_slide`.
"""
from __future__ import annotations

import errno
import math
import re
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from .errors import InputError

ALIGN = 16                       # tiles and halos are cut on the network's pooling grid (or its stride)
TILE_RANGE = (64, 4096)          # working px; 4096 + halos is about 2 GB of network activations a tile
HALO_RANGE = (0, 512)
BATCH_RANGE = (1, 64)
WORKERS_MAX = 256
MIN_FREE_BYTES = 1 << 20         # less than this free in the output folder: refused before starting


def _round_up(n: int, align: int = ALIGN) -> int:
    return -(-int(n) // align) * align


def tile_align(model_config: dict) -> int:
    """The grid tiles and halos are cut on for a model: its total stride, at least 16 px."""
    from .model.io import model_stride

    return max(ALIGN, model_stride(model_config))


def _check_range(flag: str, value, lo: int, hi: int, default: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{flag} {value!r}: must be a whole number from {lo} to {hi} (default {default})")
    if not lo <= value <= hi:
        raise InputError(f"{flag} {value}: must be from {lo} to {hi} working px (default {default})")
    return value


def validate_settings(settings, align: int = ALIGN):
    """(settings as used, notes): InputError for values out of bounds; tile and halo rounded up to
    multiples of ``align`` px (:func:`tile_align` of the model), each rounding named in a note."""
    notes = []
    tile = _check_range("--tile", settings.tile, *TILE_RANGE, "512")
    halo = _check_range("--halo", settings.halo, *HALO_RANGE, "64")
    margin = settings.margin
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise InputError(f"margin {margin!r}: must be a whole number of working px, 0 or more (default 8)")
    if _round_up(halo, align) <= margin:
        raise InputError(f"--halo {halo}: must be more than the {margin}-px ownership margin (a nucleus "
                         f"crossing a tile edge would be cut in both tiles and lost); default 64")
    for flag, v in (("--tile", tile), ("--halo", halo)):
        if _round_up(v, align) != v:
            notes.append(f"{flag} {v} rounded up to {_round_up(v, align)} (tiles are cut on the model's "
                         f"{align}-px grid)")
    _check_choices(settings)
    if settings.batch is not None:
        b = settings.batch
        if isinstance(b, bool) or not isinstance(b, int) or not BATCH_RANGE[0] <= b <= BATCH_RANGE[1]:
            raise InputError(f"--batch {b}: must be from {BATCH_RANGE[0]} to {BATCH_RANGE[1]} tiles")
    th = getattr(settings, "type_threshold", None)
    if th is not None and (isinstance(th, bool) or not isinstance(th, (int, float)) or not 0.0 <= th <= 1.0):
        raise InputError(f"--type-threshold {th!r}: must be a probability from 0 to 1 (docs/types.md)")
    if settings.workers is not None:
        w = settings.workers
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= WORKERS_MAX:
            raise InputError(f"--workers {w}: must be from 1 to {WORKERS_MAX}")
    return replace(settings, tile=_round_up(tile, align), halo=_round_up(halo, align)), notes


def _check_choices(settings) -> None:
    """The settings with a fixed set of values or a sign (the CLI's choices, for callers of the Python API)."""
    for flag, value, allowed in (("--device", settings.device, ("auto", "cpu", "cuda")),
                                 ("--table", settings.table, ("csv", "parquet", "both")),
                                 ("--tta", settings.tta, (1, 4, 8))):
        if value not in allowed:
            raise InputError(f"{flag} {value!r}: must be one of {', '.join(map(str, allowed))}")
    for flag, value in (("--simplify", settings.simplify), ("--min-area-um2", settings.min_area_um2)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise InputError(f"{flag} {value!r}: must be a finite number, 0 or more")
    check_scheduler(settings.scheduler)
    tpt = settings.tiles_per_task
    if isinstance(tpt, bool) or not isinstance(tpt, int) or tpt < 1:
        raise InputError(f"tiles_per_task {tpt!r}: must be a whole number, 1 or more")


_SCHEDULER_WORDS = ("auto", "in-process", "local")
_ADDRESS = re.compile(r"([a-z][a-z0-9+.-]*://\S+|[^\s:/]+:\d{1,5})", re.I)


def check_scheduler(value) -> None:
    """``--scheduler``: auto, in-process, local, or a Dask scheduler address (``tcp://host:8786``,
    ``host:8786``); anything else (a typo such as ``inprocess``) is refused before any work."""
    if value is None or value in _SCHEDULER_WORDS:
        return
    if isinstance(value, str) and _ADDRESS.fullmatch(value.strip()):
        return
    near = [w for w in _SCHEDULER_WORDS if w.replace("-", "") == str(value).lower().replace("-", "").replace("_", "")]
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise InputError(f"--scheduler {value!r}: must be auto, in-process, local or a scheduler address such as "
                     f"tcp://host:8786{hint}")


def no_space(folder, e: BaseException | None = None) -> InputError:
    """The one line for a full disk (or quota, or a file-size limit), naming the folder."""
    e = _no_space_cause(e)
    what = ("disk quota exceeded" if e is not None and e.errno == errno.EDQUOT else
            "file too large (a file-size limit: ulimit -f, or the file system's)" if e is not None
            and e.errno == errno.EFBIG else "no space left on device")
    name = f" (writing {Path(e.filename).name})" if e is not None and e.filename else ""
    fix = "raise the limit" if e is not None and e.errno == errno.EFBIG else "free some space"
    return InputError(f"{folder}: {what}{name}; {fix} or choose another --out (finished tiles "
                      f"are kept: rerun the same command to resume)")


def _no_space_cause(e: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in ``e``'s chain of causes (libraries wrap it), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def is_no_space(e: BaseException) -> bool:
    return _no_space_cause(e) is not None


def check_output_dir(out: Path) -> None:
    """The output folder exists (made if needed), can be written, and has some room."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".wsi-nuc-write-test-{uuid.uuid4().hex}"  # unique: slides run concurrently
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if is_no_space(e):
            raise no_space(out) from None
        raise InputError(f"{out}: output folder cannot be written ({e.strerror or e})") from None
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return
    if free < MIN_FREE_BYTES:
        raise InputError(f"{out}: no space left on device ({free // 1024} KiB free); free some space or "
                         f"choose another --out")



def check_postprocess(model_config: dict, model_dir) -> None:
    """The model's ``postprocess`` settings, checked on the driver (a typo would otherwise fail every tile task
    on the workers): one InputError naming the config file and the unknown key."""
    from .instances import InstanceParams

    where = Path(model_dir) / "config.json"
    pp = model_config.get("postprocess")
    if pp is not None and not isinstance(pp, dict):
        raise InputError(f"{where}: postprocess must be an object of settings, got {type(pp).__name__}")
    try:
        params = InstanceParams.from_dict(pp)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    defaults = InstanceParams()
    for k, v in params.to_dict().items():
        want = type(getattr(defaults, k))
        if want is str:
            ok = v in _POSTPROCESS_CHOICES.get(k, (v,)) if isinstance(v, str) else False
        elif want is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok:
            allowed = (" (one of " + ", ".join(_POSTPROCESS_CHOICES[k]) + ")") if k in _POSTPROCESS_CHOICES else ""
            raise InputError(f"{where}: postprocess {k} {v!r} must be {_KIND[want]}"
                             f"{allowed}")


_KIND = {str: "a name", int: "a whole number, 0 or more", float: "a finite number"}
_POSTPROCESS_CHOICES = {"marker": ("dist", "centre", "boundary"), "energy": ("dist", "boundary")}
