"""What a run may replace inside a slide's result folder ``OUT/<stem>/``, and the replacing itself.

A rerun replaces only the entries the folder's previous ``summary.json`` lists under ``outputs`` (a summary
from before that list: the default outputs); anything else in the folder (the user's annotations, a copy
of the slide, notes) is left where it is. A new output whose name is taken by something the previous run
did not write is refused, naming it, before anything moves; so is an input of the run (the slide, its
region file) that lies among the entries the run may replace.

The swap (:func:`commit`): the folder's summary.json is first replaced by one marked ``"incomplete"``
that lists the old and the new outputs (so the folder never looks finished half-way and a crash leaves it
replaceable by the next run), then the listed old entries are removed, the new ones moved in, and the new
summary.json renamed in last.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError, one_line

DEFAULT_OUTPUTS = ("nuclei.geojson", "nuclei.csv", "nuclei.ome.zarr", "summary.json", "qc.png")
POSSIBLE_OUTPUTS = DEFAULT_OUTPUTS + ("nuclei.geojson.gz", "nuclei.parquet")
INCOMPLETE = "incomplete"


def _plain(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def listed_outputs(folder: Path) -> set[str] | None:
    """The entry names the folder's summary.json says wsi-nuc wrote (None: no readable summary). Names that
    are not plain file names are ignored: a summary.json is never trusted to point outside its folder."""
    from .json_in import read_json_or_none

    summary = read_json_or_none(Path(folder) / "summary.json")
    if not isinstance(summary, dict):
        return None
    names = summary.get("outputs")
    if not isinstance(names, list):
        names = DEFAULT_OUTPUTS
    return {n for n in names if _plain(n)} | {"summary.json"}


def is_complete(folder: Path) -> bool:
    """Every output the folder's summary lists exists, and the summary is not one of an unfinished swap."""
    from .json_in import read_json_or_none

    summary = read_json_or_none(Path(folder) / "summary.json")
    if not isinstance(summary, dict) or summary.get(INCOMPLETE):
        return False
    names = summary.get("outputs")
    names = names if isinstance(names, list) else DEFAULT_OUTPUTS
    return Path(folder).is_dir() and all(_plain(n) and (Path(folder) / n).exists() for n in names)


def _inside(p: Path, entry: Path) -> bool:
    return p == entry or entry in p.parents


def check_inputs_outside(final: Path, inputs) -> None:
    """InputError when an input file lies among what a run writing ``final`` may replace (its listed outputs
    and every name a run can write)."""
    final = Path(final)
    if not final.is_dir() or final.is_symlink():
        return
    names = (listed_outputs(final) or set()) | set(POSSIBLE_OUTPUTS)
    entries = [Path(os.path.realpath(final / n)) for n in names]
    for inp in inputs:
        if not inp:
            continue
        real = Path(os.path.realpath(inp))
        for e in entries:
            if _inside(real, e):
                raise InputError(f"{one_line(inp)}: is among the results this run replaces ({one_line(final)}/"
                                 f"{one_line(e.name)}); move it out of the output folder first, or choose "
                                 f"another --out")


def check_foreign(final: Path, new_names) -> None:
    """InputError naming the first entry of ``final`` that a new output would replace although the previous
    run did not write it."""
    final = Path(final)
    if not final.is_dir() or final.is_symlink():
        return
    listed = listed_outputs(final) or set()
    for n in sorted(new_names):
        p = final / n
        if (p.exists() or p.is_symlink()) and n not in listed:
            raise InputError(f"{one_line(p)}: not written by wsi-nuc (its summary.json does not list it), and "
                             f"this run would replace it; move it, or choose another --out")


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p)


def commit(partial: Path, final: Path) -> None:
    """Move the outputs built in ``partial`` into ``final`` (see the module docstring); ``partial`` is
    removed. ``final`` absent: one rename."""
    partial, final = Path(partial), Path(final)
    if not (final.exists() or final.is_symlink()):
        os.replace(partial, final)
        return
    new = sorted(p.name for p in partial.iterdir())
    check_foreign(final, new)
    listed = listed_outputs(final) or set()
    pending = _pending_summary(partial, listed | set(new))
    tmp = final / ".summary.json.partial"
    tmp.write_text(json.dumps(pending, indent=2) + "\n")
    os.replace(tmp, final / "summary.json")
    for n in sorted(listed - {"summary.json"}):
        _remove(final / n)
    for n in new:
        if n != "summary.json":
            os.replace(partial / n, final / n)
    os.replace(partial / "summary.json", final / "summary.json")
    shutil.rmtree(partial, ignore_errors=True)


def _pending_summary(partial: Path, names: set[str]) -> dict:
    """The new summary (for its ownership marker), marked incomplete, listing old and new outputs."""
    summary = json.loads((partial / "summary.json").read_text())
    return {**summary, INCOMPLETE: True, "outputs": sorted(names)}


@contextmanager
def building(final: Path, work: str, before_commit=None) -> Iterator[Path]:
    """Yield a new folder ``OUT/.<work>.partial-<random>`` to write the outputs into; on a clean exit
    ``before_commit(final)`` may veto (raise), then :func:`commit` moves them into ``final``. On an
    exception the partial folder is removed and ``final`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{work}.partial-{uuid.uuid4().hex}"
    partial.mkdir()
    try:
        yield partial
        if before_commit is not None:
            before_commit(final)
        commit(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def planned_outputs(settings) -> set[str]:
    """The entries a run with these settings writes into ``OUT/<stem>/``."""
    table = {"csv": ("nuclei.csv",), "parquet": ("nuclei.parquet",), "both": ("nuclei.csv", "nuclei.parquet")}
    return {"nuclei.geojson.gz" if settings.geojson_gz else "nuclei.geojson", "nuclei.ome.zarr", "qc.png",
            "summary.json", *table.get(settings.table, ())}
