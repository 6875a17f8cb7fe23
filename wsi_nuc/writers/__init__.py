"""Output writers: GeoJSON detections (QuPath), CSV/Parquet morphometry, OME-Zarr image + label pyramid
(napari), QC image. ``labels_zarr`` holds the rasteriser (and the single-level writer of earlier versions);
``ome_zarr`` the pyramid the pipeline writes; ``slide_outputs`` what each writer is fed.

Everything is written atomically (a temporary sibling renamed into place on success) and streamed
(no writer needs all nuclei of a slide in memory at once).
"""
from .atomic import atomic_dir, atomic_file, safe_child, safe_name
from .geojson import (clean_polygon, feature_uuid, iter_geojson, make_feature, qupath_problems, simplify_rings,
                      write_geojson)
from .labels_zarr import PolygonIndex, rasterise, write_labels_zarr
from .ome_zarr import write_ome_zarr
from .qc import write_qc_png
from .table import format_value, write_csv, write_parquet

__all__ = [
    "atomic_dir", "atomic_file", "safe_child", "safe_name",
    "clean_polygon", "feature_uuid", "iter_geojson", "make_feature", "qupath_problems", "simplify_rings",
    "write_geojson",
    "PolygonIndex", "rasterise", "write_labels_zarr", "write_ome_zarr",
    "write_qc_png",
    "format_value", "write_csv", "write_parquet",
]
