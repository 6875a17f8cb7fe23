"""The one reader of JSON the tool did not just write itself: model configs, ROI GeoJSON, dataset.json,
summary.json files found in an output folder.

Before parsing, the file's size and nesting depth are checked (deep nesting would otherwise end in a
``RecursionError`` in the parser or in the code that walks the document); while parsing, ``NaN``,
``Infinity`` and numbers too large for a float (``1e999``) are refused unless ``finite=False``. Every
failure is one :class:`~wsi_nuc.errors.InputError` naming the file and the cause.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "a.json")
>>> _ = open(p, "w").write('{"a": [1, 2.5]}')
>>> read_json(p, "config")
{'a': [1, 2.5]}
>>> _ = open(p, "w").write("[" * 500 + "]" * 500)
>>> read_json(p, "config")
Traceback (most recent call last):
...
wsi_nuc.errors.InputError: ...: config is nested more than 64 levels deep
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import InputError, one_line

MAX_DEPTH = 64                 # GeoJSON needs 5 (a MultiPolygon in a Feature in a FeatureCollection)
MAX_BYTES = 1 << 30            # 1 GiB: a QuPath export of a whole slide's annotations fits easily
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


class _NotFinite(ValueError):
    pass


def depth(data: bytes) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text (brackets inside strings do not count).

    >>> depth(b'{"a": [[1], "]]]"]}')
    3
    """
    import numpy as np

    lut = np.zeros(256, np.int32)
    lut[[ord("["), ord("{")]], lut[[ord("]"), ord("}")]] = 1, -1
    step = lut[np.frombuffer(_STRING.sub(b'""', data), np.uint8)]
    return int(np.cumsum(step).max(initial=0))


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise _NotFinite(f"number {s[:40]} is too large for a float")
    return v


def _no_constant(s: str):
    raise _NotFinite(f"{s} is not a number JSON allows")


def parse_json(data: bytes | str, source, what: str = "JSON file", finite: bool = True,
               max_depth: int = MAX_DEPTH):
    """Parse JSON text (see the module docstring); ``source`` names the file in messages."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if depth(raw) > max_depth:
        raise InputError(f"{one_line(source)}: {what} is nested more than {max_depth} levels deep")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{one_line(source)}: not valid JSON, truncated or damaged ({what} is not UTF-8 text)") from None
    hooks = {"parse_float": _finite_float, "parse_constant": _no_constant} if finite else {}
    try:
        return json.loads(text, **hooks)
    except _NotFinite as e:
        raise InputError(f"{one_line(source)}: {what} holds a value that is not a finite number ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{one_line(source)}: not valid JSON, truncated or damaged ({what}, line {e.lineno}: "
                         f"{e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"{one_line(source)}: not valid JSON, truncated or damaged ({what}: "
                         f"{one_line(e)[:200]})") from None


def read_json(path: str | Path, what: str = "JSON file", finite: bool = True, max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH):
    """The parsed JSON document at ``path``; InputError (one line naming the file) for a missing, unreadable,
    too large, too deep or malformed file, or a non-finite number (with ``finite``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{one_line(path)}: {what} is {size / 2**20:.0f} MiB, more than the "
                             f"{max_bytes / 2**20:.0f} MiB accepted")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{one_line(path)}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{one_line(path)}: is a folder, not a {what}") from None
    except OSError as e:
        raise InputError(f"{one_line(path)}: cannot read {what} ({e.strerror or e})") from None
    return parse_json(data, path, what, finite, max_depth)


def read_json_or_none(path: str | Path, finite: bool = False):
    """The document at ``path``, or None when it is absent or not acceptable JSON (for files the tool only
    inspects, such as an earlier run's summary.json)."""
    try:
        return read_json(path, finite=finite, max_bytes=64 << 20)
    except InputError:
        return None
