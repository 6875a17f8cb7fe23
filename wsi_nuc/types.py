"""Nucleus types: the one place that names them, numbers them and colours them.

CoNSeP's usual four-way merge (Graham et al. 2019), numbered as in ``../shared/data/consep-train``::

    0  (none)          a nucleus without a type ("Nucleus" in every output)
    1  other
    2  inflammatory
    3  epithelial
    4  spindle-shaped

How nucleus records carry a type (the contract between segmentation and the writers): a tile's
measurement columns may hold ``type`` (integer codes 0..4, or the names above) and ``type_prob`` (the
probability of that type, 0..1). When no nucleus of a slide has a type, the outputs look exactly as they
did before types existed: classification "Nucleus", no ``type`` columns, no per-type counts.

>>> type_name(2), type_color("epithelial")
('inflammatory', (0, 160, 70))
"""
from __future__ import annotations

import numpy as np

NUCLEUS = "Nucleus"                 # the classification of a nucleus without a type
NUCLEUS_COLOR = (220, 40, 40)

# code -> (name, RGB); colours chosen to stay distinct on H&E and for common colour-vision deficiencies
TYPES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("other", (150, 150, 150)),
    2: ("inflammatory", (230, 200, 0)),
    3: ("epithelial", (0, 160, 70)),
    4: ("spindle-shaped", (0, 120, 230)),
}
NAMES = tuple(name for name, _ in TYPES.values())
_CODE = {name: code for code, (name, _) in TYPES.items()}


def type_name(code) -> str | None:
    """Name of a type code (1..4) or of a name that is already one; None for 0, None or unknown.

    >>> type_name(4), type_name(0)
    ('spindle-shaped', None)
    """
    if code is None:
        return None
    if isinstance(code, str):
        return code if code in _CODE else None
    try:
        c = int(code)
    except (TypeError, ValueError):
        return None
    return TYPES[c][0] if c in TYPES else None


def type_code(name_or_code) -> int:
    """Code (1..4) of a type name or code; 0 when it is not a known type.

    >>> type_code("epithelial"), type_code(2), type_code("Nucleus")
    (3, 2, 0)
    """
    if isinstance(name_or_code, str):
        return _CODE.get(name_or_code, 0)
    n = type_name(name_or_code)
    return _CODE[n] if n else 0


def type_color(name_or_code) -> tuple[int, int, int]:
    """The fixed RGB colour of a type (name or code); the plain nucleus colour for anything else.

    >>> type_color(1)
    (150, 150, 150)
    """
    n = type_name(name_or_code)
    return TYPES[_CODE[n]][1] if n else NUCLEUS_COLOR


def classification(name_or_code) -> tuple[str, tuple[int, int, int]]:
    """QuPath classification (name, colour) of a nucleus: its type, or "Nucleus" when it has none.

    >>> classification(3)
    ('epithelial', (0, 160, 70))
    >>> classification(None)
    ('Nucleus', (220, 40, 40))
    """
    n = type_name(name_or_code)
    return (n, TYPES[_CODE[n]][1]) if n else (NUCLEUS, NUCLEUS_COLOR)


def codes(values) -> np.ndarray:
    """Integer codes (0..4) of an array of type codes or names; unknown values become 0.

    >>> codes(["other", "epithelial", "x"]).tolist(), codes(np.array([2, 7])).tolist()
    ([1, 3, 0], [2, 0])
    """
    a = np.asarray(values)
    if a.dtype.kind in "iu":
        return np.where(np.isin(a, list(TYPES)), a, 0).astype(np.int64)
    if a.dtype.kind == "f":
        ok = np.isfinite(a)
        c = np.where(ok, a, 0).astype(np.int64)
        return np.where(np.isin(c, list(TYPES)), c, 0)
    return np.array([type_code(str(v)) for v in a.tolist()], np.int64).reshape(a.shape)


def names(values) -> np.ndarray:
    """Type names (object array; "" for no type) of an array of codes or names.

    >>> names([1, 0, 4]).tolist()
    ['other', '', 'spindle-shaped']
    """
    lut = np.array([""] + list(NAMES), dtype=object)
    return lut[codes(values)]


def has_types(columns: dict) -> bool:
    """Whether measurement columns carry a type for at least one nucleus."""
    t = columns.get("type")
    return t is not None and len(t) > 0 and bool((codes(t) > 0).any())
