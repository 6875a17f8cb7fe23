"""The cohort's two tables: the manifest (``cohort.csv``, one row a slide and its status) and the per-slide
morphometry summary (``cohort_summary.csv``); their rows, and :class:`Tables`, which holds both and rewrites them."""
from __future__ import annotations

import csv
import math
import threading
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..types import NAMES as TYPE_NAMES

if TYPE_CHECKING:
    from .inputs import Cohort, CohortSlide

MANIFEST = "cohort.csv"
SUMMARY = "cohort_summary.csv"
DONE, FAILED, SKIPPED, PENDING = "done", "failed", "skipped", "pending"
MANIFEST_COLUMNS = ["slide", "path", "status", "reason", "nucleus_count", "tissue_area_mm2", "nuclei_per_mm2",
                    "seconds", "tiles", "output", "finished_at"]
MEASURES = ("area_um2", "circularity", "mean_h_od")
STATS = ("median", "q1", "q3", "iqr")
SUMMARY_COLUMNS = (["slide", "nucleus_count", "tissue_area_mm2", "nuclei_per_mm2"]
                   + [f"{m}_{s}" for m in MEASURES for s in STATS])
# per-type columns (count, density per mm² of analysed area, fraction of typed nuclei), written only when the
# cohort's model has a type head; "spindle-shaped" -> "spindle_shaped_count"
TYPE_COLUMNS = [f"{n.replace('-', '_')}_{q}" for n in TYPE_NAMES for q in ("count", "per_mm2", "fraction")]
# nuclei left without a type (wsi_nuc.type_trust), the typed share of all nuclei, and why
UNTYPED_REASONS = ("stain", "unfamiliar_tissue", "low_confidence")
TYPE_COLUMNS += ["untyped_count", "typed_fraction", *(f"untyped_{r}" for r in UNTYPED_REASONS)]


@dataclass
class CohortResult:
    rows: list[dict]
    manifest: Path
    summary: Path
    seconds: float

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def exit_code(self) -> int:
        return 1 if self.count(FAILED) or self.count(PENDING) else 0


def read_rows(path: Path) -> dict[str, dict]:
    """Rows of an earlier manifest or summary, by slide; empty when absent or unreadable."""
    from ..writers.table import restore_cell

    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:   # names as written
            rows = [{restore_cell(k) if isinstance(k, str) else k: restore_cell(v) if isinstance(v, str) else v
                     for k, v in r.items()}
                    for r in csv.DictReader(fh)]
            return {r["slide"]: r for r in rows if r.get("slide")}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}


def _write_table(path: Path, columns: list[str], rows: list[dict]) -> None:
    from ..writers.table import write_csv

    write_csv(path, columns, rows)


def slide_morphometry(table: Path) -> dict:
    """Median, quartiles and IQR of :data:`MEASURES`, streaming the slide's ``nuclei.csv`` or
    ``nuclei.parquet`` (``--table parquet``; by the suffix).

    Only the three measured columns are held (8 bytes a value), never the table.
    """
    import numpy as np

    vals = _parquet_values(table) if Path(table).suffix == ".parquet" else _csv_values(table)
    out = {}
    for m in MEASURES:
        a = np.frombuffer(vals[m], dtype=np.float64) if len(vals[m]) else None
        if a is None:
            out.update({f"{m}_{s}": None for s in STATS})
            continue
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        out.update({f"{m}_median": float(med), f"{m}_q1": float(q1), f"{m}_q3": float(q3),
                    f"{m}_iqr": float(q3 - q1)})
    return out


def slide_table(folder: Path) -> Path:
    """The slide's per-nucleus table: ``nuclei.csv``, else ``nuclei.parquet`` (``--table parquet``)."""
    csv_path = folder / "nuclei.csv"
    return csv_path if csv_path.exists() or not (folder / "nuclei.parquet").exists() else folder / "nuclei.parquet"


def _parquet_values(path: Path) -> dict:
    """The finite values of :data:`MEASURES` in a Parquet table, read a row group at a time."""
    import numpy as np
    import pyarrow.parquet as pq

    vals = {m: array("d") for m in MEASURES}
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's own errors: a broken file is a skipped summary, not a failed slide
        raise ValueError(f"{path}: {e}") from None
    have = [m for m in MEASURES if m in f.schema_arrow.names]
    for batch in f.iter_batches(columns=have):
        for m in have:
            a = batch.column(m).to_numpy(zero_copy_only=False).astype(np.float64)
            vals[m].extend(a[np.isfinite(a)].tolist())
    return vals


def _csv_values(nuclei_csv: Path) -> dict:
    """The finite values of :data:`MEASURES` in a CSV table, streamed."""
    vals = {m: array("d") for m in MEASURES}
    with open(nuclei_csv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        idx = {m: header.index(m) for m in MEASURES if m in header}
        for row in reader:
            for m, i in idx.items():
                v = row[i] if i < len(row) else ""
                if v:
                    x = float(v)
                    if math.isfinite(x):
                        vals[m].append(x)
    return vals


def type_columns(summary: dict) -> dict:
    """A slide's per-type :data:`TYPE_COLUMNS` from its ``summary.json`` (``types``); {} when untyped.

    >>> type_columns({"types": {"counts": {"other": 1, "inflammatory": 3}, "per_mm2": {"other": 0.5,
    ...               "inflammatory": 1.5}, "fraction": {"other": 0.25, "inflammatory": 0.75}}})["inflammatory_count"]
    3
    >>> c = type_columns({"types": {"counts": {"other": 1}, "untyped": 3, "typed_fraction": 0.25,
    ...                   "untyped_reasons": {"low_confidence": 3}}})
    >>> c["untyped_count"], c["typed_fraction"], c["untyped_low_confidence"], c["untyped_stain"]
    (3, 0.25, 3, 0)
    """
    types = summary.get("types") or {}
    if not types.get("counts"):
        return {}
    out = {}
    for name in TYPE_NAMES:
        slug = name.replace("-", "_")
        out[f"{slug}_count"] = (types.get("counts") or {}).get(name, 0)
        out[f"{slug}_per_mm2"] = (types.get("per_mm2") or {}).get(name)
        out[f"{slug}_fraction"] = (types.get("fraction") or {}).get(name)
    if "untyped" in types:   # summaries before types could be withheld have none of these
        out["untyped_count"] = types["untyped"]
        out["typed_fraction"] = types.get("typed_fraction")
        for r in UNTYPED_REASONS:
            out[f"untyped_{r}"] = (types.get("untyped_reasons") or {}).get(r, 0)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _one_line(text: str, limit: int = 500) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _reason(e: BaseException) -> str:
    if isinstance(e, InputError):
        return _one_line(str(e))
    msg = str(e)
    return _one_line(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)


def _row_from_summary(slide: CohortSlide, out: Path, status: str, summary: dict, reason: str = "") -> dict:
    return {
        "slide": slide.stem, "path": str(slide.path), "status": status, "reason": reason,
        "nucleus_count": summary.get("nucleus_count"),
        "tissue_area_mm2": summary.get("tissue_area_mm2"),
        "nuclei_per_mm2": summary.get("nuclei_per_mm2"),
        "seconds": (summary.get("seconds") or {}).get("total"),
        "tiles": (summary.get("tiles") or {}).get("count"),
        "output": str(out / slide.stem), "finished_at": _now(), **slide.extra,
    }


def _pending_row(slide: CohortSlide, out: Path) -> dict:
    return {"slide": slide.stem, "path": str(slide.path), "status": PENDING, "reason": "",
            "output": str(out / slide.stem), **slide.extra}


def _morph_row(slide: CohortSlide, out: Path, summary: dict, log) -> dict:
    row = {"slide": slide.stem, "nucleus_count": summary.get("nucleus_count"),
           "tissue_area_mm2": summary.get("tissue_area_mm2"), "nuclei_per_mm2": summary.get("nuclei_per_mm2")}
    row.update(type_columns(summary))
    try:
        row.update(slide_morphometry(slide_table(out / slide.stem)))
    except (OSError, ValueError, csv.Error) as e:
        msg = f"wsi-nuc batch: {slide.stem}: morphometry summary skipped ({_reason(e)})"
        (log.message(msg) if hasattr(log, "message") else print(msg, file=log))
    return row


@dataclass
class Tables:
    """The manifest and summary rows of one cohort run, by slide stem, and their rewriting.

    Slide threads record results with :meth:`record`; :meth:`flush` rewrites both files atomically, at most
    once a second unless forced, so a crash or Ctrl-C leaves a manifest that a rerun resumes from.
    """

    cohort: Cohort
    manifest: Path
    summary: Path
    rows: dict = field(default_factory=dict)    # stem -> manifest row
    morph: dict = field(default_factory=dict)   # stem -> summary row (finished slides only)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _written: float = 0.0
    _dirty: bool = False

    def record(self, stem: str, row: dict, morph: dict | None) -> None:
        """A slide's new manifest row, and its summary row (None: it has none, e.g. it failed)."""
        with self._lock:
            self.rows[stem] = row
            if morph is None:
                self.morph.pop(stem, None)
            else:
                self.morph[stem] = morph
            self._dirty = True

    def flush(self, force: bool = False) -> None:
        """Rewrite both tables (atomically); at most once a second unless forced."""
        with self._lock:
            now = time.perf_counter()
            if not force and (not self._dirty or now - self._written < 1.0):
                return
            self._written, self._dirty = now, False
            slides, extra = self.cohort.slides, self.cohort.extra_columns
            _write_table(self.manifest, MANIFEST_COLUMNS + extra, [self.rows[s.stem] for s in slides])
            morph = [self.morph[s.stem] for s in slides if s.stem in self.morph]
            typed = TYPE_COLUMNS if any(r.get(c) not in (None, "") for r in morph for c in TYPE_COLUMNS) else []
            _write_table(self.summary, SUMMARY_COLUMNS + typed + extra,
                         [{**self.morph[s.stem], **s.extra} for s in slides if s.stem in self.morph])

    def result(self, seconds: float) -> CohortResult:
        return CohortResult([self.rows[s.stem] for s in self.cohort.slides], self.manifest, self.summary, seconds)
