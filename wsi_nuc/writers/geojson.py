"""Streamed GeoJSON of nucleus detections, in level-0 pixel coordinates, as QuPath imports them.

The file is a FeatureCollection written one feature per line (header, features, footer), so a slide
with millions of nuclei never holds the whole document in memory. ``.gz`` paths are gzip-compressed.

Geometry conventions:

- every polygon goes through :func:`clean_polygon`: valid and simple (QuPath 0.6 refuses invalid
  geometry), a single ring without holes (the largest part of a multi-part shape), coordinates rounded
  to 2 decimals and re-validated after rounding;
- the exterior ring is closed and counter-clockwise in the numeric (x, y) sense, as RFC 7946 asks
  (with y pointing down in the image, that ring looks clockwise on screen);
- ``id`` is a UUID derived deterministically from the nucleus id (and an optional namespace string,
  e.g. the slide name), so re-running gives the same ids and QuPath accepts them as object ids;
- measurements that are NaN/inf are omitted (JSON has no NaN; QuPath treats missing as NaN);
- :func:`simplify_rings` thins outlines for the file (Douglas-Peucker within a tolerance, topology
  kept, re-validated, 1 decimal); measurements always come from the unsimplified outline;
- the classification is the nucleus type when it has one (``wsi_nuc.types``), else "Nucleus".

QuPath's rules for an importable detection file (checked by :func:`qupath_problems`): a FeatureCollection
of Features; each geometry a Polygon (or MultiPolygon) in level-0 pixel coordinates with closed, valid
rings; ``properties.objectType`` "detection"; ``properties.classification`` an object with a ``name``
string and a ``color`` of three 0..255 integers; ``properties.measurements`` a flat object of finite
numbers.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import shapely

from ..outlines import clean_polygon  # noqa: F401 - re-exported: the kernel lives with the outlines
from ..types import NUCLEUS_COLOR, classification as type_classification
from .atomic import atomic_file

DEFAULT_COLOR = NUCLEUS_COLOR
_UUID_NS = uuid.UUID("6b1f4a52-8d2e-4c57-9a0e-3f6d2b7c9e11")  # fixed namespace for wsi-nuc objects
_HEADER = '{"type": "FeatureCollection", "features": [\n'
_FOOTER = "\n]}\n"
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # one feature a line, no NaN


def _number(v):
    """JSON-safe number, or None for NaN/inf/non-numbers."""
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return x


def _measurements(nucleus_id: int, measurements: Mapping) -> dict:
    """``nucleus_id`` first, then the measurements that are finite numbers, in their order."""
    meas = {"nucleus_id": int(nucleus_id)}
    vals = measurements.values()
    if (set(map(type, vals)) == {float} and set(map(type, measurements)) == {str}
            and "nucleus_id" not in measurements and math.isfinite(sum(vals))):
        meas.update(measurements)  # the usual case: plain floats, none NaN/inf (else the sum would be)
        return meas
    for k, v in measurements.items():
        x = _number(v)
        if x is not None and k != "nucleus_id":
            meas[str(k)] = x
    return meas


def feature_uuid(nucleus_id: int, namespace: str = "") -> str:
    """Deterministic UUID string for a nucleus (``uuid5`` of namespace and id)."""
    return str(uuid.uuid5(_UUID_NS, f"{namespace}:{int(nucleus_id)}"))


def make_feature(nucleus_id: int, ring: np.ndarray, measurements: Mapping | None = None,
                 color=DEFAULT_COLOR, id_namespace: str = "", classification: str = "Nucleus",
                 compact: bool = False, decimals: int = 2) -> dict:
    """One QuPath detection feature for an already-clean closed ring (see :func:`clean_polygon`).

    Coordinates are written rounded to ``decimals``, each whole number as an integer (``834``, not ``834.0``:
    the same JSON number, two bytes fewer; about half of the vertices of a simplified outline are whole);
    measurements that are NaN/inf or not numbers are left out. ``compact`` leaves out the object ``id`` (QuPath then makes its own; the
    ``nucleus_id`` measurement still names the nucleus) and ``isLocked`` (false when absent).

    >>> f = make_feature(7, np.array([[0, 0], [4, 0], [4, 4], [0, 0]], float), {"area_um2": 2.5})
    >>> f["properties"]["measurements"], f["properties"]["classification"]["name"]
    ({'nucleus_id': 7, 'area_um2': 2.5}, 'Nucleus')
    """
    meas = _measurements(nucleus_id, measurements or {})
    coords = np.round(np.asarray(ring, dtype=np.float64), decimals)
    coords = _compact_coordinates(coords)
    props = {"objectType": "detection",
             "classification": {"name": classification, "color": [int(c) for c in color]}}
    if not compact:
        props["isLocked"] = False
    props["measurements"] = meas
    feat = {"type": "Feature"}
    if not compact:
        feat["id"] = feature_uuid(nucleus_id, id_namespace)
    feat["geometry"] = {"type": "Polygon", "coordinates": [coords]}
    feat["properties"] = props
    return feat


def _open_text(path: Path, mode: str, gz: bool | None = None):
    if path.name.endswith(".gz") if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8", compresslevel=6)
    return open(path, mode, encoding="utf-8", newline="\n")


def write_geojson(path: Path | str, features: Iterable[tuple],
                  color=DEFAULT_COLOR, id_namespace: str = "", clean: bool = True, compact: bool = False,
                  decimals: int = 2) -> int:
    """Stream nuclei to a GeoJSON FeatureCollection; return the number of features written.

    ``features`` yields ``(nucleus_id, polygon_xy_level0 (K, 2), measurements {name: number})``, or
    ``(..., nucleus_type)`` with a type code or name of :mod:`wsi_nuc.types` (0/None/"": no type), which
    becomes the classification with the type's fixed colour; nuclei without a type are "Nucleus" in
    ``color``. Polygons that :func:`clean_polygon` cannot make valid are skipped (not counted);
    ``clean=False`` trusts rings that were already cleaned (closed, valid) and writes them as they are.
    ``compact`` and ``decimals``: see :func:`make_feature`. The file appears under ``path`` only when complete (written to a temporary sibling, then renamed).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "n.geojson")
    >>> write_geojson(p, [(1, np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float), {}, "epithelial")])
    1
    """
    path = Path(path)
    n = 0
    with atomic_file(path) as tmp:
        with _open_text(tmp, "w", gz=path.name.endswith(".gz")) as fh:
            fh.write(_HEADER)
            for item in features:
                nid, xy, meas = item[:3]
                ring = clean_polygon(xy) if clean else xy
                if ring is None:
                    continue
                name, col = type_classification(item[3] if len(item) > 3 else None)
                if name == "Nucleus":
                    col = color
                feat = make_feature(nid, ring, meas, color=col, id_namespace=id_namespace,
                                    classification=name, compact=compact, decimals=decimals)
                if n:
                    fh.write(",\n")
                fh.write(_ENCODER.encode(feat))
                n += 1
            fh.write(_FOOTER)
    return n


def iter_geojson(path: Path | str) -> Iterator[dict]:
    """Yield the features of a GeoJSON file. Files written by :func:`write_geojson` are streamed line by
    line; any other FeatureCollection (or single Feature) is read with ``json.load``."""
    path = Path(path)
    with _open_text(path, "r") as fh:
        first = fh.readline()
        if first == _HEADER:
            for line in fh:
                s = line.strip()
                if not s or s == "]}":
                    continue
                yield json.loads(s.rstrip(","))
            return
        doc = json.load(io.StringIO(first + fh.read()))
    if doc.get("type") == "FeatureCollection":
        yield from doc.get("features", [])
    elif doc.get("type") == "Feature":
        yield doc
    else:
        raise ValueError(f"{path}: not a GeoJSON Feature or FeatureCollection")


def coordinate_decimals(f: float) -> int:
    """Decimals of level-0 coordinates that keep the rounding within 0.25 working px (``f`` level-0 px
    per working px): 1 at 20x (f about 1), 0 from f = 2 (40x) on.

    >>> coordinate_decimals(1.0), coordinate_decimals(2.0), coordinate_decimals(0.5)
    (1, 0, 1)
    """
    d = 0
    while 10.0 ** -d > 0.5 * f and d < 3:
        d += 1
    return d


def simplify_rings(rings: list, tolerance: float, decimals: int = 1) -> list:
    """Thinner copies of clean outlines (closed, valid rings): Douglas-Peucker within ``tolerance``
    (level-0 px) with topology kept, rounded to ``decimals``, collinear and repeated vertices dropped.

    Every output ring is re-checked (valid, a single Polygon, positive area, counter-clockwise); where the
    simplified ring fails any check, or ``tolerance`` <= 0, the input ring is returned unchanged. The
    Hausdorff distance to the input is at most ``tolerance`` plus the rounding (half of
    ``10**-decimals`` per axis). Vectorised over all rings (shapely array functions).

    >>> sq = np.array([[0, 0], [5, 0.2], [10, 0], [10, 10], [0, 10], [0, 0]], float)
    >>> simplify_rings([sq], 0.5)[0].tolist()
    [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]
    """
    out = list(rings)
    todo = [i for i, r in enumerate(rings) if r is not None and len(r) >= 4]
    if tolerance <= 0 or not todo:
        return out
    arrays = [np.asarray(rings[i], dtype=np.float64) for i in todo]
    index = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    geoms = shapely.polygons(shapely.linearrings(np.concatenate(arrays), indices=index))
    simp = shapely.simplify(geoms, float(tolerance), preserve_topology=True)
    ok = (shapely.get_type_id(simp) == 3) & ~shapely.is_empty(simp)
    xy, which = shapely.get_coordinates(shapely.get_exterior_ring(simp[ok]), return_index=True)
    if not len(xy):
        return out
    xy = np.round(xy, decimals)
    rebuilt = shapely.polygons(shapely.linearrings(xy, indices=which))
    rebuilt = shapely.simplify(rebuilt, 0)  # rounding can make repeated or collinear vertices
    good = ((shapely.get_type_id(rebuilt) == 3) & ~shapely.is_empty(rebuilt) & shapely.is_valid(rebuilt)
            & (shapely.area(rebuilt) > 0))
    rebuilt = shapely.orient_polygons(rebuilt, exterior_cw=False)
    rxy, rwhich = shapely.get_coordinates(shapely.get_exterior_ring(rebuilt), return_index=True)
    counts = np.bincount(rwhich, minlength=len(rebuilt))
    starts = np.concatenate([[0], np.cumsum(counts)])
    pos = np.flatnonzero(ok)
    for k in np.flatnonzero(good & (counts >= 4)).tolist():
        out[todo[pos[k]]] = rxy[starts[k]:starts[k + 1]]
    return out


def _compact_coordinates(coords: np.ndarray) -> list:
    """(n, 2) rounded coordinates as nested lists, whole numbers as ints (shorter JSON, same numbers).

    >>> _compact_coordinates(np.array([[834.0, 179.9], [830.2, 180.0]]))
    [[834, 179.9], [830.2, 180]]
    """
    flat = coords.ravel()
    whole = (flat == np.trunc(flat)).tolist()
    vals = [int(v) if w else v for v, w in zip(flat.tolist(), whole)]
    return [vals[i:i + 2] for i in range(0, len(vals), 2)]


def qupath_problems(path: Path | str, max_problems: int = 10) -> list[str]:
    """What in a GeoJSON file would stop QuPath importing it as detections (empty list: nothing).

    The rules of the module docstring, checked on every feature of the file (streamed).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "n.geojson")
    >>> _ = write_geojson(p, [(1, np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float), {"a": 1.5})])
    >>> qupath_problems(p)
    []
    """
    from shapely.geometry import shape

    problems = []
    path = Path(path)
    with _open_text(path, "r") as fh:
        head = fh.read(200)
    if '"FeatureCollection"' not in head:
        return [f"{path.name}: not a FeatureCollection"]
    for k, feat in enumerate(iter_geojson(path)):
        where = f"feature {k}"
        if feat.get("type") != "Feature":
            problems.append(f"{where}: type is not Feature")
        g = feat.get("geometry") or {}
        if g.get("type") not in ("Polygon", "MultiPolygon"):
            problems.append(f"{where}: geometry {g.get('type')!r} is not a Polygon")
        else:
            rings = g["coordinates"] if g["type"] == "Polygon" else [r for p in g["coordinates"] for r in p]
            if any(len(r) < 4 or r[0] != r[-1] for r in rings):
                problems.append(f"{where}: a ring is not closed or has < 4 positions")
            elif not shape(g).is_valid:
                problems.append(f"{where}: invalid polygon ({shapely.is_valid_reason(shape(g))})")
        pr = feat.get("properties") or {}
        if pr.get("objectType") != "detection":
            problems.append(f"{where}: objectType {pr.get('objectType')!r} is not 'detection'")
        c = pr.get("classification")
        if not (isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("color"), list)
                and len(c["color"]) == 3
                and all(isinstance(v, int) and 0 <= v <= 255 for v in c["color"])):
            problems.append(f"{where}: classification {c!r} lacks a name or a [r, g, b] color")
        m = pr.get("measurements", {})
        if not isinstance(m, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in m.values()):
            problems.append(f"{where}: measurements are not a flat object of finite numbers")
        if len(problems) >= max_problems:
            break
    return problems
