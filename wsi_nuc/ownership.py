"""What wsi-nuc may replace in an output folder: only its own results, and only for the same slide.

Every result folder ``OUT/<stem>/`` carries a marker: its ``summary.json`` holds ``wsi_nuc_output`` with
the slide's identity (absolute path, size in bytes, SHA-256 of its first MiB). Before a run writes
``OUT/<stem>/`` (:func:`check_slot`, called with the output's lock held, and again just before the final
rename):

* nothing there: fine;
* a file, a link, or a folder without the marker (the user's): refused, never touched;
* wsi-nuc results of the same slide (same size and first-MiB hash; a moved slide is the same slide):
  replaced;
* wsi-nuc results of another slide with the same name: refused unless ``overwrite``.

Names a cohort folder uses for itself (:data:`RESERVED`) are never slide output names.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .errors import InputError

MARKER = "wsi_nuc_output"
MARKER_VERSION = 1
RESERVED = ("cohort.csv", "cohort_summary.csv")   # the cohort's own files in its output folder
_HEAD = 1 << 20


def slide_identity(path: str | Path) -> dict:
    """{"path", "size", "sha256_first_mib"} of a slide file (a folder-based slide: of its main file)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            h.update(fh.read(_HEAD))
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read file ({e.strerror or e})") from None
    return {"path": os.path.abspath(path), "size": size, "sha256_first_mib": h.hexdigest()}


def marker(identity: dict) -> dict:
    """The ``wsi_nuc_output`` entry of a summary.json."""
    return {"version": MARKER_VERSION, "slide": dict(identity)}


def read_marker(folder: Path) -> dict | None:
    """The marker of a wsi-nuc result folder ({"slide": identity or None}); None when the folder is not
    one. A summary.json written before markers existed (it names wsi-nuc as its software) counts as
    wsi-nuc's, with the slide known by path only."""
    from .json_in import read_json_or_none

    summary = read_json_or_none(folder / "summary.json")      # depth and size checked: it may be anyone's
    if not isinstance(summary, dict):
        return None
    m = summary.get(MARKER)
    if isinstance(m, dict) and isinstance(m.get("slide"), dict):
        return m
    if isinstance(summary.get("software"), dict) and "wsi_nuc" in summary["software"]:
        path = (summary.get("slide") or {}).get("path") if isinstance(summary.get("slide"), dict) else None
        return {"version": 0, "slide": {"path": os.path.abspath(path) if path else None}}
    return None


def same_slide(old: dict, new: dict) -> bool:
    if "sha256_first_mib" in old:
        return old.get("size") == new["size"] and old.get("sha256_first_mib") == new["sha256_first_mib"]
    return old.get("path") is not None and old.get("path") == new["path"]   # a pre-marker result


def check_slot(final: Path, identity: dict, overwrite: bool = False) -> None:
    """Raise InputError unless ``final`` is absent or wsi-nuc results this run may replace."""
    if not (final.exists() or final.is_symlink()):
        return
    if final.is_symlink() or not final.is_dir():
        what = "a link" if final.is_symlink() else "a file"
        raise InputError(f"{final}: {what} is in the way of this slide's output folder (not written by "
                         f"wsi-nuc, left untouched); move it or choose another --out")
    m = read_marker(final)
    if m is None:
        raise InputError(f"{final}: a folder that wsi-nuc did not write is in the way of this slide's "
                         f"output (no wsi-nuc summary.json; left untouched); move it or choose another --out")
    if same_slide(m["slide"], identity) or overwrite:
        return
    other = m["slide"].get("path") or "an unknown slide"
    raise InputError(f"{final}: holds the results of another slide with the same name ({other}); pass "
                     f"--overwrite to replace them, or choose another --out")


def slide_stem(path: str | Path) -> str:
    """The output name of a slide (``OUT/<stem>/``): its file name without the extension (``.ome.tif(f)`` whole).

    >>> slide_stem("/data/OS-1.ome.tiff"), slide_stem("CMU-1.svs")
    ('OS-1', 'CMU-1')
    """
    name = Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def reserved(stem: str) -> bool:
    """A slide stem that would collide with a cohort folder's own files, or with the hidden working files
    of runs (``.<stem>.lock``, ``.<stem>.partial-*``, ``.<stem>.tiles-*``): those start with a dot."""
    return stem.lower() in RESERVED or stem.startswith(".")


def check_stem(path: str | Path, stem: str) -> None:
    if reserved(stem):
        raise InputError(f"{path}: its output name {stem!r} is reserved in an output folder "
                         f"({', '.join(RESERVED)}, and names starting with '.', wsi-nuc's working files); "
                         f"rename the slide")


_WORK_MAX = 150      # bytes of a stem in working-file names: the longest suffix is 56 (".partial-" + 32 hex)


def work_name(stem: str) -> str:
    """The stem as it appears in the working files of a run (``.<work>.lock``, ``.<work>.partial-*``,
    ``.<work>.tiles-*``): the stem itself, or for a stem too long to take a suffix within the 255-byte
    limit of a file name, its start and a digest of the whole.

    >>> work_name("CMU-1"), len(work_name("x" * 240))
    ('CMU-1', 141)
    """
    raw = os.fsencode(stem)
    if len(raw) <= _WORK_MAX:
        return stem
    head = os.fsdecode(raw[:120]).encode("utf-8", "ignore").decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:20]}"


_WORK = re.compile(r"\.(partial|old)(-[0-9a-f]{32})?")
_LOCK_WORK = re.compile(r"\.lock\.[0-9a-f]{32}\.(tmp|stale)")   # wsi_nuc.lock's short-lived names


def clean_stale_work(out: Path, stem: str) -> None:
    """Remove leftovers of crashed runs of ``stem`` (``.<stem>.partial-*`` / ``.<stem>.old-*`` folders
    wsi-nuc makes while writing, and the lock's temporary files). Call with the stem's lock held: no live
    run owns them then."""
    prefix = f".{stem}"
    try:
        entries = list(out.iterdir())
    except OSError:
        return
    for p in entries:
        name = p.name
        if not name.startswith(prefix) or p.is_symlink():
            continue
        if _WORK.fullmatch(name[len(prefix):]) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif _LOCK_WORK.fullmatch(name[len(prefix):]) and p.is_file():
            p.unlink(missing_ok=True)
