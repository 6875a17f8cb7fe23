"""What a slide's writers stream: the final nuclei, in id order, as table chunks, GeoJSON features, zarr
properties and colours, and per-type counts.

The input is the stitcher's result, :class:`wsi_nuc.stitch.FinalNuclei`: per tile (``segment.TileNuclei``:
packed outlines + measurement columns) the surviving indices in id order and the first id, the ids given
once by :func:`wsi_nuc.stitch.number`, so they are the same in every output. Plain functions over it; the
pipeline wires them to the writers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import types as T
from ..morphometry import COLUMNS
from .measures import GEOJSON_MEASUREMENTS, round_column


def has_types(final) -> bool:
    """Whether the nuclei were typed (then every output carries types): any final nucleus has a type, or
    the model typed them and :mod:`wsi_nuc.type_trust` withheld every type (``type_model``)."""
    return any(len(idx) and (("type" in tn.columns and bool((T.codes(tn.columns["type"][idx]) > 0).any()))
                             or "type_model" in tn.columns)
               for tn, idx, _ in final)


# with types, after type and type_prob: the model's own type, why a nucleus is untyped ("" typed), and the
# calibrated probability of each type (wsi_nuc.type_trust)
TRUST_COLUMNS = ("type_model", "untyped_reason", *(f"p_{n.replace('-', '_')}" for n in T.NAMES))


def table_columns(typed: bool, slide: bool = True) -> list[str]:
    """Columns of nuclei.csv / nuclei.parquet: ``slide``, the morphometry columns, then ``type`` ("" for an
    untyped nucleus), ``type_prob`` (the calibrated probability of the type the model gave, kept for
    untyped nuclei) and :data:`TRUST_COLUMNS` when nuclei have types."""
    return (["slide"] if slide else []) + list(COLUMNS) + (["type", "type_prob", *TRUST_COLUMNS] if typed else [])


def _type_columns(tn, idx) -> tuple[np.ndarray, np.ndarray]:
    if "type" in tn.columns:
        codes = T.codes(tn.columns["type"][idx])
    else:
        codes = np.zeros(len(idx), np.int64)
    prob = tn.columns.get("type_prob")
    prob = np.asarray(prob, np.float64)[idx] if prob is not None else np.full(len(idx), np.nan)
    if "type_model" in tn.columns:   # decided by wsi_nuc.type_trust: the model's type's probability is kept
        return codes, np.where(T.codes(tn.columns["type_model"][idx]) > 0, prob, np.nan)
    return codes, np.where(codes > 0, prob, np.nan)


def _trust_chunk(tn, idx) -> dict:
    """:data:`TRUST_COLUMNS` of some nuclei ("" and NaN where the tile has none)."""
    n = len(idx)
    out = {}
    for c in TRUST_COLUMNS:
        v = tn.columns.get(c)
        if c in ("type_model", "untyped_reason"):
            out[c] = (T.names(v[idx]) if c == "type_model" else np.asarray(v, dtype=object)[idx]) \
                if v is not None else np.full(n, "", dtype=object)
        else:
            out[c] = round_column("type_prob", np.asarray(v, np.float64)[idx]) if v is not None \
                else np.full(n, np.nan)
    return out


def table_chunks(final, slide: str, typed: bool) -> Iterator[dict]:
    """One chunk {column: array} per tile with survivors, in id order, rounded by ``measures``."""
    for tn, idx, first in final:
        if not len(idx):
            continue
        chunk = {"slide": [slide] * len(idx),
                 "nucleus_id": np.arange(first, first + len(idx), dtype=np.int64)}
        chunk.update((c, round_column(c, tn.columns[c][idx])) for c in COLUMNS if c != "nucleus_id")
        if typed:
            codes, prob = _type_columns(tn, idx)
            chunk["type"] = T.names(codes)
            chunk["type_prob"] = round_column("type_prob", prob)
            chunk.update(_trust_chunk(tn, idx))
        yield chunk


def geojson_features(final, tolerance: float, typed: bool, decimals: int = 1) -> Iterator[tuple]:
    """``(nucleus_id, ring, measurements, type code)`` of every survivor, in id order.

    Rings are simplified within ``tolerance`` level-0 px (:func:`.geojson.simplify_rings`; 0 keeps them
    as traced); measurements are :data:`measures.GEOJSON_MEASUREMENTS`, rounded, from the unsimplified
    outline (they were measured in the tile).
    """
    from .geojson import simplify_rings

    cols = [c for c in GEOJSON_MEASUREMENTS if c not in ("nucleus_id", "type_prob")]
    for tn, idx, first in final:
        if not len(idx):
            continue
        rings = simplify_rings([tn.polygon(i) for i in idx.tolist()], tolerance, decimals)
        vals = [round_column(c, tn.columns[c][idx]).tolist() for c in cols]
        names = list(cols)
        codes = np.zeros(len(idx), np.int64)
        if typed:
            codes, prob = _type_columns(tn, idx)
            vals.append(round_column("type_prob", prob).tolist())
            names.append("type_prob")
        for j, (ring, row) in enumerate(zip(rings, zip(*vals))):
            yield first + j, ring, dict(zip(names, row)), int(codes[j])


def zarr_properties(final, typed: bool) -> Iterator[dict]:
    """``image-label`` properties of every survivor: label-value (= nucleus_id), nucleus_id, area_um2,
    confidence and, with types, type and type_prob (NaN left out)."""
    for tn, idx, first in final:
        if not len(idx):
            continue
        area = round_column("area_um2", tn.columns["area_um2"][idx]).tolist()
        conf = round_column("confidence", tn.columns["confidence"][idx]).tolist()
        if typed:
            codes, prob = _type_columns(tn, idx)
            tnames = T.names(codes).tolist()
            prob = round_column("type_prob", prob).tolist()
        for j in range(len(idx)):
            nid = first + j
            d = {"label-value": nid, "nucleus_id": nid, "area_um2": area[j]}
            if conf[j] == conf[j]:
                d["confidence"] = conf[j]
            if typed and tnames[j]:
                d["type"] = tnames[j]
                if prob[j] == prob[j]:
                    d["type_prob"] = prob[j]
            yield d


def zarr_colors(final) -> Iterator[dict]:
    """``image-label`` colours: every nucleus its type's colour (untyped ones the plain nucleus colour);
    the same label values as :func:`zarr_properties`, as NGFF validators require."""
    lut = [[*T.type_color(c), 255] for c in range(len(T.TYPES) + 1)]
    for tn, idx, first in final:
        if not len(idx):
            continue
        codes, _ = _type_columns(tn, idx)
        for j, c in enumerate(codes.tolist()):
            yield {"label-value": first + j, "rgba": lut[c]}


def type_counts(final) -> dict[str, int]:
    """Final nuclei per type name (every type listed, zeros included; untyped not counted)."""
    n = np.zeros(len(T.TYPES) + 1, np.int64)
    for tn, idx, _ in final:
        if len(idx) and "type" in tn.columns:
            n += np.bincount(T.codes(tn.columns["type"][idx]), minlength=len(n))[:len(n)]
    return {name: int(n[code]) for code, (name, _) in T.TYPES.items()}


def untyped_counts(final) -> dict:
    """``{"untyped": n, "reasons": {reason: n}, "model_types": {type: n}}`` over the final nuclei: the
    nuclei without a type, why (:data:`wsi_nuc.type_trust.REASONS`; "none" for a nucleus the model itself
    left untyped) and the types the model had given before any was withheld."""
    from ..type_trust import REASONS

    reasons = {r: 0 for r in REASONS}
    model = np.zeros(len(T.TYPES) + 1, np.int64)
    untyped = 0
    for tn, idx, _ in final:
        if not len(idx):
            continue
        codes = T.codes(tn.columns["type"][idx]) if "type" in tn.columns else np.zeros(len(idx), np.int64)
        untyped += int((codes == 0).sum())
        if "untyped_reason" in tn.columns:
            for r, c in zip(*np.unique(np.asarray(tn.columns["untyped_reason"], dtype=object)[idx].astype(str),
                                       return_counts=True)):
                if r:
                    reasons[r] = reasons.get(r, 0) + int(c)
        src = tn.columns.get("type_model", tn.columns.get("type"))
        if src is not None:
            model += np.bincount(T.codes(src[idx]), minlength=len(model))[:len(model)]
    known = sum(reasons.values())
    if untyped > known:
        reasons["none"] = untyped - known
    return {"untyped": untyped, "reasons": reasons,
            "model_types": {name: int(model[code]) for code, (name, _) in T.TYPES.items()}}


def type_summary(counts: dict[str, int], area_mm2: float | None, untyped: dict | None = None,
                 trust: dict | None = None) -> dict:
    """Counts, densities (per mm² of the analysed area) and fractions of the typed nuclei; with ``untyped``
    (:func:`untyped_counts`) also the untyped count, the typed fraction of all nuclei and the reasons, and
    with ``trust`` what the types were trained on and how they were checked.

    >>> type_summary({"other": 1, "inflammatory": 3, "epithelial": 0, "spindle-shaped": 0}, 2.0)["fraction"]
    {'other': 0.25, 'inflammatory': 0.75, 'epithelial': 0.0, 'spindle-shaped': 0.0}
    >>> s = type_summary({"other": 1, "inflammatory": 3}, 2.0, {"untyped": 4, "reasons": {"low_confidence": 4}})
    >>> s["untyped"], s["typed_fraction"], s["untyped_reasons"]
    (4, 0.5, {'low_confidence': 4})
    """
    total = sum(counts.values())
    out = {
        "counts": dict(counts),
        "per_mm2": {k: (round(v / area_mm2, 2) if area_mm2 else None) for k, v in counts.items()},
        "fraction": {k: (round(v / total, 4) if total else None) for k, v in counts.items()},
        "colors": {name: list(rgb) for name, rgb in T.TYPES.values()},
    }
    if untyped is not None:
        n = total + untyped["untyped"]
        out["untyped"] = untyped["untyped"]
        out["typed_fraction"] = round(total / n, 4) if n else None
        out["untyped_reasons"] = dict(untyped["reasons"])
        if "model_types" in untyped:
            out["model_counts"] = dict(untyped["model_types"])
        out["untyped_color"] = list(T.NUCLEUS_COLOR)
    if trust is not None:
        out["check"] = trust
    return out
