"""All-or-nothing outputs: a folder or file appears under its final name only once it is complete.

A crashed or interrupted run therefore never leaves something that looks finished (``cohort`` resume
logic can trust that ``DIR/<stem>/`` exists only when the slide is done).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+\-=@,()\[\] ]")


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)


@contextlib.contextmanager
def atomic_dir(final: Path | str, before_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary sibling name and move it to ``final`` on success.

    Yields ``final.parent / f".{final.name}.partial-<random>"``: unique to this call, so concurrent runs
    never share (or wipe) each other's partial folder. On a clean exit ``before_replace(final)`` may veto
    (raise: e.g. ``final`` turned out not to be ours to replace), then an existing ``final`` is replaced
    (moved aside to a unique ``.old-<random>`` name, the new one renamed in, the old one deleted: the
    window without a ``final`` is two renames). On an exception the partial folder is removed and the
    exception propagates; a ``final`` from an earlier successful run is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    partial = final.parent / f".{final.name}.partial-{tag}"
    old = final.parent / f".{final.name}.old-{tag}"
    partial.mkdir()
    try:
        yield partial
        if before_replace is not None:
            before_replace(final)
        if final.exists() or final.is_symlink():
            os.replace(final, old)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not (final.exists() or final.is_symlink()):
            os.replace(old, final)   # the second rename failed: put the earlier result back
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path to write; ``os.replace`` it onto ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial"
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    os.replace(tmp, final)


def safe_name(name: str) -> str:
    """Turn an arbitrary string (a slide stem) into a harmless single folder name.

    Path separators and unusual characters become ``_``; leading dots are stripped (no hidden or
    ``..`` names); an empty result becomes ``"unnamed"``.
    """
    s = _BAD_NAME_CHARS.sub("_", str(name)).strip().lstrip(".")
    return s[:200] or "unnamed"


def safe_child(root: Path | str, name: str) -> Path:
    """``root / name``, refusing any name that would not be a direct child of ``root``.

    Raises ValueError for empty names, ``.``/``..``, absolute paths, names with a path separator or a
    NUL byte, and anything whose resolved path escapes ``root`` (symlinks included). Use
    :func:`safe_name` first to sanitise untrusted names instead of refusing them.
    """
    name = str(name)
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name) or (os.altsep and os.altsep in name)):
        raise ValueError(f"unsafe output name {name!r}: must be a plain folder name")
    root = Path(root)
    child = root / name
    root_r = root.resolve()
    child_r = child.resolve()
    if child_r.parent != root_r:
        raise ValueError(f"unsafe output name {name!r}: resolves outside {root}")
    return child
