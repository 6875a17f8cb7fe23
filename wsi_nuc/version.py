"""Which build of wsi-nuc made a result: the release number plus, in a git checkout, the commit.

``__version__`` (``pyproject.toml``'s version) changes with each release; :func:`build_version` adds the
commit a checkout is at and whether its tracked files were modified (PEP 440 local version
``0.7.0+g1a2b3c4`` or ``0.7.0+g1a2b3c4.dirty``), and :func:`source_digest` a hash of the package's own
Python sources, which changes with any edit, committed or not, installed from a wheel or not. Both go into
``summary.json`` (``software``) and ``wsi-nuc --version``.

>>> build_version().startswith(__version__)
True
>>> len(source_digest())
12
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from . import __version__

_PACKAGE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    """``git -C <checkout> args`` when the package sits in a git checkout; None otherwise or on any failure."""
    root = _PACKAGE.parent
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_commit() -> dict | None:
    """``{"commit": full hash, "dirty": tracked files modified}`` of the checkout, or None (not a checkout,
    or no git)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "wsi_nuc", "pyproject.toml")
    return {"commit": commit, "dirty": bool(status)}


@functools.lru_cache(maxsize=1)
def build_version() -> str:
    """``__version__``, plus ``+g<commit>[.dirty]`` in a git checkout."""
    g = git_commit()
    if g is None:
        return __version__
    return f"{__version__}+g{g['commit'][:7]}" + (".dirty" if g["dirty"] else "")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """First 12 hex digits of a SHA-256 over the package's ``.py`` files (relative path and content, sorted)."""
    h = hashlib.sha256()
    for p in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(p.relative_to(_PACKAGE)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def software_record() -> dict:
    """What ``summary.json`` records of wsi-nuc itself."""
    g = git_commit()
    rec = {"wsi_nuc": build_version(), "wsi_nuc_source_sha256": source_digest()}
    if g is not None:
        rec["wsi_nuc_git"] = g
    return rec
