"""Streamed CSV of per-nucleus measurements (one row a nucleus).

Number format: integers as integers; floats rounded to ``decimals`` (default 4) decimal places and
written in their shortest form (``12.5``, not ``12.500000000000002``); tiny non-zero values
(|x| < 10**-decimals) keep 4 significant digits in exponent form; NaN/inf are written as an empty field
(spreadsheets and pandas read that as missing). ``.csv.gz`` paths are gzip-compressed.

Text cells (and column names) that a spreadsheet would evaluate as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return; OWASP "CSV injection") are written with a leading single quote,
as spreadsheets expect; plain numbers such as ``-1.5`` are left alone. :func:`restore_cell` undoes it
exactly (a text that starts with a quote gets one more, so nothing is ambiguous).

Column chunks ({column: 1-D array}) are formatted a whole column at a time (:func:`format_column`), row
dicts a value at a time (:func:`format_value`); both give the same text for the same value.
"""
from __future__ import annotations

import csv
import gzip
import math
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .atomic import atomic_file


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralise_cell(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it as a formula (or it starts with ``'``)."""
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def restore_cell(text: str) -> str:
    """The text :func:`neutralise_cell` was given."""
    return text[1:] if text.startswith("'") else text


def format_value(v, decimals: int = 4) -> str:
    """One CSV field."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, str):
        return neutralise_cell(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(x):
        return ""
    if x == 0.0:
        return "0"
    if abs(x) < 10.0 ** (-decimals):
        return format(x, ".4g")
    r = round(x, decimals)
    if r == int(r) and abs(r) < 1e15:
        return str(int(r))
    return repr(r)


def round_like_python(a: np.ndarray, decimals: int) -> np.ndarray:
    """``round(x, decimals)`` of every finite float64 in ``a``, vectorised, with Python's exact result.

    ``np.round`` scales, rounds and unscales, so it can differ from Python's correctly rounded ``round``
    when ``x * 10**decimals`` lies within a few ulps of a half-integer (or is too large to hold a
    fraction); those few values are rounded by Python.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.round(a, decimals)
        y = np.abs(a * 10.0 ** decimals)
        off_half = np.abs(y - np.floor(y) - 0.5) > 4 * np.spacing(y)
    unsure = np.isfinite(a) & ~((y < 2.0 ** 52) & off_half)
    for i in np.flatnonzero(unsure):
        r[i] = round(float(a[i]), decimals)
    return r


def _format_floats(x: np.ndarray, decimals: int) -> list[str]:
    """:func:`format_value`'s float rules applied to a whole float64 array."""
    out = np.full(len(x), "", dtype=object)                          # NaN / inf stay empty
    finite = np.isfinite(x)
    zero = x == 0.0
    tiny = finite & ~zero & (np.abs(x) < 10.0 ** (-decimals))
    rest = finite & ~zero & ~tiny
    out[zero] = "0"
    out[tiny] = [format(v, ".4g") for v in x[tiny].tolist()]
    r = round_like_python(x[rest], decimals)
    whole = (r == np.trunc(r)) & (np.abs(r) < 1e15)
    text = np.empty(len(r), dtype=object)
    text[whole] = list(map(str, r[whole].astype(np.int64).tolist()))
    text[~whole] = list(map(repr, r[~whole].tolist()))
    out[rest] = text
    return out.tolist()


def format_column(a, decimals: int = 4) -> list[str]:
    """The CSV fields of a 1-D array: the text :func:`format_value` gives value by value, computed a
    column at a time for bool, integer and float arrays."""
    if not isinstance(a, np.ndarray):
        return [format_value(v, decimals) for v in a]
    kind = a.dtype.kind
    if kind == "b":
        return ["1" if v else "0" for v in a.tolist()]
    if kind in "iu":
        return list(map(str, a.tolist()))
    if kind == "f":
        return _format_floats(a.astype(np.float64, copy=False), decimals)
    return [format_value(v, decimals) for v in a.tolist()]


def _is_column_chunk(item: Mapping, columns: list[str]) -> bool:
    for k in columns:
        if k in item:
            return np.ndim(item[k]) > 0
    return False


def _formatted_rows(items: Iterable[Mapping], columns: list[str], decimals: int):
    """Per item, a list of rows of CSV fields: row dicts give one row, column chunks
    ({name: 1-D array}) one row per element, formatted a column at a time."""
    for item in items:
        if not _is_column_chunk(item, columns):
            yield [[format_value(item.get(k), decimals) for k in columns]]
            continue
        n = max((len(item[k]) for k in columns if k in item), default=0)
        cols = []
        for k in columns:
            if k not in item:
                cols.append([""] * n)
                continue
            if len(item[k]) != n:
                raise ValueError(f"column {k!r} has {len(item[k])} values, expected {n}")
            cols.append(format_column(item[k], decimals))
        yield list(zip(*cols))


def write_csv(path: Path | str, columns: list[str], rows: Iterable[Mapping], decimals: int = 4) -> int:
    """Write a CSV with header ``columns``; return the number of data rows.

    ``rows`` yields either row dicts ({column: scalar}) or column chunks ({column: 1-D array}, all the
    same length); the two may be mixed. Missing columns are written empty, extra keys ignored. The file
    appears under ``path`` only when complete.
    """
    path = Path(path)
    columns = list(columns)
    n = 0
    with atomic_file(path) as tmp:
        if path.name.endswith(".gz"):
            fh = gzip.open(tmp, "wt", encoding="utf-8", errors="surrogateescape", newline="", compresslevel=6)
        else:
            fh = open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="")
        with fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow([neutralise_cell(c) for c in columns])
            for block in _formatted_rows(rows, columns, decimals):
                w.writerows(block)
                n += len(block)
    return n


def write_parquet(path: Path | str, columns: list[str], chunks: Iterable[Mapping],
                  row_group: int = 65536) -> int:
    """Write column chunks ({column: 1-D array or list}) as one Parquet file; return the row count.

    Integer columns stay int64, float columns float64 (NaN = missing), text columns (``slide``,
    ``type``) are dictionary-encoded strings. Chunks are gathered into row groups of about
    ``row_group`` rows, so memory holds one row group, not the slide. Needs ``pyarrow``. The file
    appears under ``path`` only when complete.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "n.parquet")
    >>> write_parquet(p, ["nucleus_id", "area_um2"], [{"nucleus_id": np.array([1, 2]),
    ...                                             "area_um2": np.array([20.5, 31.0])}])
    2
    """
    path = Path(path)
    columns = list(columns)
    with atomic_file(path) as tmp, _ParquetSink(tmp, columns) as sink:
        pending: list[Mapping] = []
        pending_rows = 0
        for item in chunks:
            m = len(next(iter(item.values()))) if item else 0
            if not m:
                continue
            pending.append(item)
            pending_rows += m
            if pending_rows >= row_group:
                sink.write(_arrow_table(pending, columns))
                pending, pending_rows = [], 0
        if pending or sink.writer is None:
            sink.write(_arrow_table(pending, columns) if pending else _empty_table(columns))
    return sink.rows


class _ParquetSink:
    """A Parquet file written one row group at a time; the first table's schema is the file's."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        self.writer, self.schema, self.rows = None, None, 0

    def __enter__(self) -> "_ParquetSink":
        return self

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        self.writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()


def _arrow_table(items: list[Mapping], columns: list[str]):
    """One Arrow table of column chunks (a missing column: NaN; text columns dictionary-encoded)."""
    import pyarrow as pa

    arrays = {}
    lens = [len(next(iter(it.values()))) for it in items]
    for k in columns:
        parts = [np.asarray(it[k]) if k in it else None for it in items]
        vals = [p if p is not None else np.full(m, np.nan) for p, m in zip(parts, lens)]
        a = np.concatenate(vals) if vals else np.zeros(0)
        if a.dtype.kind in "OUS":
            arrays[k] = pa.array(a.astype(str).tolist(), pa.string()).dictionary_encode()
        else:
            arrays[k] = pa.array(a)
    return pa.table(arrays)


def _empty_table(columns):
    import pyarrow as pa

    text = {"slide", "type"}
    return pa.table({k: pa.array([], pa.string()).dictionary_encode() if k in text
                     else pa.array([], pa.int64() if k == "nucleus_id" else pa.float64()) for k in columns})
