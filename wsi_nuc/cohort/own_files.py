"""The cohort's own files in its output folder (``cohort.csv``, ``cohort_summary.csv``): a batch replaces them
only when wsi-nuc wrote them (their header is the manifest's or the summary's), and never when one of them is
the batch's input."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, one_line
from .manifest import MANIFEST, MANIFEST_COLUMNS, SUMMARY, SUMMARY_COLUMNS


def _header(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().strip().lstrip("\ufeff")
    except OSError:
        return ""


def check_cohort_files(source, out: Path) -> None:
    """InputError naming the file when the batch would replace its own input or a file it did not write."""
    src = Path(os.path.realpath(os.path.expanduser(os.fspath(source)))) if source else None
    for name, columns in ((MANIFEST, MANIFEST_COLUMNS), (SUMMARY, SUMMARY_COLUMNS)):
        p = Path(out) / name
        if src is not None and Path(os.path.realpath(p)) == src:
            raise InputError(f"{one_line(source)}: is where this batch writes its {name}; copy the cohort CSV "
                             f"elsewhere (or choose another --out) so that it is not replaced")
        if not (p.exists() or p.is_symlink()):
            continue
        ours = ",".join(columns[:3])
        if p.is_symlink() or not p.is_file() or not _header(p).startswith(ours):
            raise InputError(f"{one_line(p)}: not a {name} that wsi-nuc wrote (left untouched); this batch "
                             f"writes its {name} there: move it or choose another --out")
