"""Streamed CSV of per-nucleus measurements (one row a nucleus).

Number format: integers as integers; floats rounded to ``decimals`` (default 4) decimal places and
written in their shortest form (``12.5``, not ``12.500000000000002``); tiny non-zero values
(|x| < 10**-decimals) keep 4 significant digits in exponent form; NaN/inf are written as an empty field
(spreadsheets and pandas read that as missing). ``.csv.gz`` paths are gzip-compressed.
"""
from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .atomic import atomic_file


def format_value(v, decimals: int = 4) -> str:
    """One CSV field."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, str):
        return v
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


def _is_column_chunk(item: Mapping, columns: list[str]) -> bool:
    for k in columns:
        if k in item:
            return np.ndim(item[k]) > 0
    return False


def _rows(items: Iterable[Mapping], columns: list[str]):
    """Turn row dicts or column chunks ({name: 1-D array}) into lists of values in column order."""
    for item in items:
        if _is_column_chunk(item, columns):
            n = max((len(item[k]) for k in columns if k in item), default=0)
            cols = []
            for k in columns:
                if k in item:
                    a = item[k]
                    a = a.tolist() if isinstance(a, np.ndarray) else list(a)
                    if len(a) != n:
                        raise ValueError(f"column {k!r} has {len(a)} values, expected {n}")
                    cols.append(a)
                else:
                    cols.append([None] * n)
            yield from zip(*cols)
        else:
            yield tuple(item.get(k) for k in columns)


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
            fh = gzip.open(tmp, "wt", encoding="utf-8", newline="", compresslevel=6)
        else:
            fh = open(tmp, "w", encoding="utf-8", newline="")
        with fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(columns)
            for vals in _rows(rows, columns):
                w.writerow([format_value(v, decimals) for v in vals])
                n += 1
    return n
