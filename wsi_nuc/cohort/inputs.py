"""Cohort input: a CSV (``path``, optional ``mpp`` and ``roi``, carried columns), a folder, a glob or one slide
file, read into a :class:`Cohort` of :class:`CohortSlide`; every problem is one InputError before any slide starts."""
from __future__ import annotations

import csv
import glob as _glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .manifest import MANIFEST_COLUMNS, SUMMARY_COLUMNS, TYPE_COLUMNS

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                    ".dcm", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CohortSlide:
    path: Path                  # absolute
    stem: str                   # output folder name, DIR/<stem>/
    mpp: float | None = None    # per-slide override (CSV ``mpp`` column); else --mpp applies
    extra: dict = field(default_factory=dict)   # carried columns (CSV), manifest names


@dataclass
class Cohort:
    source: str
    slides: list[CohortSlide]
    extra_columns: list[str] = field(default_factory=list)


def _is_slide_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_EXTENSIONS


def read_cohort(spec: str | os.PathLike) -> Cohort:
    """A CSV, a folder, a glob or one slide file -> a :class:`Cohort`; InputError on bad usage."""
    from ..ownership import check_stem
    from ..ownership import slide_stem

    spec_s = os.fspath(spec)
    p = Path(os.path.expanduser(spec_s))
    extra_cols: list[str] = []
    if p.is_dir():
        items = [(f, None, {}) for f in sorted(p.iterdir()) if _is_slide_file(f)]
        where = f"{spec_s}: no slide files in this folder (searched non-recursively for " \
                f"{', '.join(e[1:] for e in SLIDE_EXTENSIONS)})"
    elif p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
        items, extra_cols = _read_csv(p)
        where = f"{spec_s}: the CSV lists no slides"
    elif p.is_file():
        if p.suffix.lower() not in SLIDE_EXTENSIONS:
            raise InputError(f"{spec_s}: not a cohort CSV, a folder, a glob or a slide file "
                             f"(extension {p.suffix or 'none'})")
        items = [(p, None, {})]
        where = ""
    elif any(c in spec_s for c in "*?["):
        hits = sorted(Path(h) for h in _glob.glob(os.path.expanduser(spec_s), recursive=True))
        items = [(h, None, {}) for h in hits if _is_slide_file(h)]
        where = f"{spec_s}: the pattern matches no slide files ({len(hits)} paths matched, none a slide file)"
    else:
        raise InputError(f"{spec_s}: no such file or folder")
    if not items:
        raise InputError(where)
    slides = [CohortSlide(Path(os.path.abspath(f)), slide_stem(f), mpp, extra) for f, mpp, extra in items]
    for s in slides:
        check_stem(s.path, s.stem)     # e.g. "cohort.csv.svs" would replace the manifest
    _check_unique(spec_s, slides)
    return Cohort(spec_s, slides, extra_cols)


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _read_csv(path: Path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the cohort CSV ({getattr(e, 'strerror', None) or e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: empty CSV (needs a header line with a 'path' column)")
    rows = list(csv.reader(lines, delimiter=_delimiter(lines[0])))
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if "path" not in lower:
        raise InputError(f"{path}: no 'path' column (columns: {', '.join(h or '(blank)' for h in header)})")
    if len(set(lower)) != len(lower):
        dup = sorted({h for h in header if lower.count(h.lower()) > 1})
        raise InputError(f"{path}: duplicate column name(s): {', '.join(dup)}")
    ip = lower.index("path")
    im = lower.index("mpp") if "mpp" in lower else None
    carried = _carried(header, ip)
    items = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in row):
            continue
        row = row + [""] * (len(header) - len(row))
        raw = row[ip].strip()
        if not raw:
            raise InputError(f"{path}: line {n}: empty path")
        f = Path(os.path.expanduser(raw))
        if not f.is_absolute():
            f = path.parent / f
        mpp = None
        if im is not None and row[im].strip():
            try:
                mpp = float(row[im])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise InputError(f"{path}: line {n}: mpp {row[im].strip()!r} is not a positive number")
        extra = {name: row[i] for i, name in carried}
        if (extra.get("roi") or "").strip():       # a region per slide; relative to the CSV like path
            r = Path(os.path.expanduser(extra["roi"].strip()))
            extra["roi"] = str(r if r.is_absolute() else path.parent / r)
        items.append((f, mpp, extra))
    return items, [name for _, name in carried]


def _carried(header: list[str], ip: int) -> list[tuple[int, str]]:
    """(index, manifest name) of every column carried into the manifest and summary: ``roi`` in any case
    as ``roi`` (it is read), a name the outputs use (``slide``, ``status``, ...) or one already taken
    prefixed with ``input_`` until it is free, case-insensitively, so no user value is overwritten.

    >>> _carried(["Path", "slide", "input_slide", "ROI", "Status"], 0)
    [(1, 'input_slide'), (2, 'input_input_slide'), (3, 'roi'), (4, 'input_Status')]
    """
    taken = {c.lower() for c in (*MANIFEST_COLUMNS, *SUMMARY_COLUMNS, *TYPE_COLUMNS)}
    out = []
    for i, h in enumerate(header):
        if i == ip or not h:
            continue
        name = "roi" if h.lower() == "roi" else h
        while name.lower() in taken:
            name = f"input_{name}"
        taken.add(name.lower())
        out.append((i, name))
    return out


def _check_unique(spec: str, slides: list[CohortSlide]) -> None:
    """Two slides with one stem would write the same DIR/<stem>/: refuse before starting (exit 2)."""
    seen: dict[str, CohortSlide] = {}
    for s in slides:
        key = s.stem.lower()  # case-insensitive file systems (macOS, Windows shares) would collide too
        if key in seen:
            other = seen[key]
            what = "is listed twice" if other.path == s.path else f"and {s.path} share the output name {s.stem!r}"
            raise InputError(f"{spec}: {other.path} {what} (outputs go to DIR/<slide stem>/; rename one "
                             f"slide or run them as separate cohorts)")
        seen[key] = s
