"""Output writers: GeoJSON detections (QuPath), CSV morphometry, OME-Zarr labels (napari), QC image.

Everything is written atomically (a temporary sibling renamed into place on success) and streamed
(no writer needs all nuclei of a slide in memory at once).
"""
from .atomic import atomic_dir, atomic_file, safe_child, safe_name
from .geojson import clean_polygon, feature_uuid, iter_geojson, make_feature, write_geojson
from .labels_zarr import PolygonIndex, rasterise, write_labels_zarr
from .qc import write_qc_png
from .table import format_value, write_csv

__all__ = [
    "atomic_dir", "atomic_file", "safe_child", "safe_name",
    "clean_polygon", "feature_uuid", "iter_geojson", "make_feature", "write_geojson",
    "PolygonIndex", "rasterise", "write_labels_zarr",
    "write_qc_png",
    "format_value", "write_csv",
]
