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
- measurements that are NaN/inf are omitted (JSON has no NaN; QuPath treats missing as NaN).
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
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from .atomic import atomic_file

DEFAULT_COLOR = (220, 40, 40)
_UUID_NS = uuid.UUID("6b1f4a52-8d2e-4c57-9a0e-3f6d2b7c9e11")  # fixed namespace for wsi-nuc objects
_HEADER = '{"type": "FeatureCollection", "features": [\n'
_FOOTER = "\n]}\n"
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # one feature a line, no NaN


def _largest_polygon(geom) -> Polygon | None:
    """The largest-area Polygon in ``geom`` (any geometry type), holes dropped; None if there is none."""
    if geom is None or geom.is_empty:
        return None
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    polys = []
    for g in parts:
        polys.extend(shapely.get_parts(g) if g.geom_type == "MultiPolygon" else [g])
    if not polys:
        return None
    best = max(polys, key=lambda p: p.area)
    if best.area <= 0:
        return None
    return Polygon(best.exterior)


def clean_polygon(xy: np.ndarray, decimals: int = 2) -> np.ndarray | None:
    """Make one valid, simple polygon ring from vertices ``xy`` (K, 2); None if nothing is left.

    Fast path: if the ring rounded to ``decimals`` is already a valid polygon it is returned with
    collinear vertices removed and counter-clockwise orientation. Otherwise: drop non-finite vertices;
    ``shapely.make_valid`` (bow-ties, spikes, repeated
    points); keep the largest polygon part and its exterior only (holes dropped); snap to a grid of
    ``10**-decimals`` with ``shapely.set_precision`` (validity-preserving); orient counter-clockwise
    (RFC 7946); round; re-validate the rounded ring. Returns a closed (M, 2) float64 ring (first vertex
    repeated at the end), M >= 4.
    """
    a = np.asarray(xy, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"polygon vertices must be (K, 2), got {a.shape}")
    a = a[np.isfinite(a).all(axis=1)]
    if len(a) < 3:
        return None
    grid = 10.0 ** (-decimals)
    # fast path (the usual case): the rounded ring is already valid; dropping collinear vertices and
    # re-orienting keep it valid and do not create new coordinates
    fast = Polygon(np.round(a, decimals))
    if fast.is_valid and fast.area > 0 and not fast.interiors:
        fast = fast.simplify(0)
        if fast.geom_type == "Polygon" and not fast.is_empty:
            ring = np.asarray(orient(fast, sign=1.0).exterior.coords, dtype=np.float64)
            if len(ring) >= 4:
                return ring
    geom = Polygon(a)
    for _ in range(3):
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        poly = _largest_polygon(geom)
        if poly is None:
            return None
        poly = poly.simplify(0)  # removes collinear / repeated vertices only (lossless)
        snapped = _largest_polygon(shapely.set_precision(poly, grid))
        if snapped is None:
            return None
        snapped = orient(snapped, sign=1.0)
        ring = np.round(np.asarray(snapped.exterior.coords, dtype=np.float64), decimals)
        check = Polygon(ring)
        if len(ring) >= 4 and check.is_valid and check.area > 0:
            return ring
        geom = check  # rounding broke it: repair the rounded ring and try again
    return None


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
                 color=DEFAULT_COLOR, id_namespace: str = "", classification: str = "Nucleus") -> dict:
    """One QuPath detection feature for an already-clean closed ring (see :func:`clean_polygon`).

    Coordinates are written rounded to 2 decimals (a no-op for a cleaned ring); measurements that are
    NaN/inf or not numbers are left out.
    """
    meas = _measurements(nucleus_id, measurements or {})
    coords = np.round(np.asarray(ring, dtype=np.float64), 2).tolist()
    return {
        "type": "Feature",
        "id": feature_uuid(nucleus_id, id_namespace),
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": classification, "color": [int(c) for c in color]},
            "isLocked": False,
            "measurements": meas,
        },
    }


def _open_text(path: Path, mode: str, gz: bool | None = None):
    if path.name.endswith(".gz") if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8", compresslevel=6)
    return open(path, mode, encoding="utf-8", newline="\n")


def write_geojson(path: Path | str, features: Iterable[tuple[int, np.ndarray, Mapping]],
                  color=DEFAULT_COLOR, id_namespace: str = "", clean: bool = True) -> int:
    """Stream nuclei to a GeoJSON FeatureCollection; return the number of features written.

    ``features`` yields ``(nucleus_id, polygon_xy_level0 (K, 2), measurements {name: number})``.
    Polygons that :func:`clean_polygon` cannot make valid are skipped (not counted); ``clean=False``
    trusts rings that were already cleaned (closed, valid, 2-decimal) and writes them as they are. The file appears
    under ``path`` only when complete (written to a temporary sibling, then renamed).
    """
    path = Path(path)
    n = 0
    with atomic_file(path) as tmp:
        with _open_text(tmp, "w", gz=path.name.endswith(".gz")) as fh:
            fh.write(_HEADER)
            for nid, xy, meas in features:
                ring = clean_polygon(xy) if clean else xy
                if ring is None:
                    continue
                feat = make_feature(nid, ring, meas, color=color, id_namespace=id_namespace)
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
