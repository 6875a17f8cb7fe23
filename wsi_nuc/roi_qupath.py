"""The region a QuPath GeoJSON export means: annotations in, ``Ignore*`` annotations out, detections skipped.

QuPath writes objects as GeoJSON in level-0 pixels (File → Export objects as GeoJSON, or a script's
``exportObjectsToGeoJson``), in any of these shapes, all read here:

- a FeatureCollection ("Export as FeatureCollection" ticked);
- a bare JSON array of Features (unticked, and what many scripts write);
- one Feature, or a bare geometry (Polygon, MultiPolygon, GeometryCollection).

Which features make the region (:func:`select_region_parts`):

1. only annotations: a feature whose ``properties.objectType`` is ``detection``, ``cell``, ``tile`` (or
   another non-annotation type), or whose QuPath 0.2 ``id`` is ``PathDetectionObject`` / ``PathCellObject``
   / ``PathTileObject``, is skipped (exporting "all objects" from a project with detections must not
   turn each detection into region); a feature with no ``objectType`` (plain GeoJSON) counts as an
   annotation;
2. an annotation classed ``Ignore*`` (QuPath's class for "leave this out"; any class name starting with
   ``Ignore``) is subtracted from the region;
3. with ``roi_class``, only annotations of that class (``classification.name``, exact) are included;
   otherwise every other annotation, classed or not;
4. with ``Ignore*`` annotations but nothing to include, the region is the whole slide minus them.

Polygons and MultiPolygons count (holes respected, overlaps merged); other geometry types are ignored.

>>> doc = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
...         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}},
...        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
...         "properties": {"objectType": "detection"}}]
>>> parts = select_region_parts(doc)
>>> len(parts.include), len(parts.exclude), parts.skipped, parts.classes
(1, 0, {'detection': 1}, ['Tumor'])
"""
from __future__ import annotations

from dataclasses import dataclass, field

ANNOTATION = "annotation"
# QuPath 0.2 wrote the object's Java class as the feature id instead of properties.objectType
_LEGACY_TYPES = {"PathAnnotationObject": ANNOTATION, "PathDetectionObject": "detection",
                 "PathCellObject": "cell", "PathTileObject": "tile", "TMACoreObject": "tma_core"}
_POLYGONS = ("Polygon", "MultiPolygon")


@dataclass
class RegionParts:
    """The geometries (GeoJSON dicts) a QuPath export contributes to a region."""

    include: list = field(default_factory=list)    # annotations that make the region
    exclude: list = field(default_factory=list)    # Ignore* annotations, subtracted
    skipped: dict = field(default_factory=dict)    # objectType -> count of features left out
    classes: list = field(default_factory=list)    # class names of the annotations seen (sorted, unique)
    not_class: int = 0                             # annotations left out by roi_class


def is_ignore_class(name: str | None) -> bool:
    """QuPath's ``Ignore*`` class (and any class named ``Ignore...``).

    >>> is_ignore_class("Ignore*"), is_ignore_class("ignore"), is_ignore_class("Tumor"), is_ignore_class(None)
    (True, True, False, False)
    """
    return bool(name) and name.strip().lower().startswith("ignore")


def class_name(props: dict) -> str | None:
    """The class of a QuPath object: ``classification.name`` (or its ``names`` joined as QuPath shows a
    derived class, ``A: B``); None when unclassified."""
    c = props.get("classification") if isinstance(props, dict) else None
    if isinstance(c, str):
        return c or None
    if not isinstance(c, dict):
        return None
    if isinstance(c.get("name"), str) and c["name"]:
        return c["name"]
    names = c.get("names")
    if isinstance(names, list) and names:
        return ": ".join(str(n) for n in names)
    return None


def object_type(feature: dict) -> str:
    """``annotation``, ``detection``, ``cell``, ``tile``, ... of a QuPath feature (``annotation`` when it
    does not say: plain GeoJSON)."""
    props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
    t = props.get("objectType")
    if isinstance(t, str) and t:
        return t.strip().lower()
    legacy = _LEGACY_TYPES.get(str(feature.get("id") or props.get("type") or ""))
    return legacy or ANNOTATION


def features_of(doc) -> list[dict]:
    """The Features of any QuPath/GeoJSON shape: a FeatureCollection, an array of Features, one Feature,
    or a bare geometry (as a Feature without properties)."""
    if isinstance(doc, list):
        return [f for d in doc for f in features_of(d)]
    if not isinstance(doc, dict):
        return []
    t = doc.get("type")
    if t == "FeatureCollection":
        return [f for d in doc.get("features") or [] for f in features_of(d)]
    if t == "Feature":
        return [doc]
    if isinstance(t, str):
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    return []


def polygons_of(geometry) -> list[dict]:
    """Every Polygon / MultiPolygon in a GeoJSON geometry (GeometryCollections opened)."""
    if not isinstance(geometry, dict):
        return []
    t = geometry.get("type")
    if t in _POLYGONS:
        return [geometry]
    if t == "GeometryCollection":
        return [g for x in geometry.get("geometries") or [] for g in polygons_of(x)]
    return []


def select_region_parts(doc, roi_class: str | None = None) -> RegionParts:
    """Sort a QuPath export's polygons into what the region includes and excludes (see the module docstring)."""
    parts = RegionParts()
    classes = set()
    for f in features_of(doc):
        kind = object_type(f)
        polys = polygons_of(f.get("geometry"))
        if kind != ANNOTATION:
            parts.skipped[kind] = parts.skipped.get(kind, 0) + 1
            continue
        name = class_name(f.get("properties") or {})
        if name:
            classes.add(name)
        if is_ignore_class(name):
            parts.exclude.extend(polys)
        elif roi_class is None or name == roi_class:
            parts.include.extend(polys)
        elif polys:
            parts.not_class += 1
    parts.classes = sorted(classes)
    return parts


def describe(parts: RegionParts) -> dict:
    """What ``summary.json``'s ``roi`` records about the parts used (counts of polygons and skipped objects)."""
    return {"polygons": len(parts.include), "ignore_polygons": len(parts.exclude),
            "skipped_objects": dict(sorted(parts.skipped.items()))}
