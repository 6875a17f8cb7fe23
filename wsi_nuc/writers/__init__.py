"""Output writers: GeoJSON detections (QuPath), CSV/Parquet morphometry, OME-Zarr image + label pyramid
(napari), QC image. ``rasterise`` turns outlines into label blocks, ``final_index`` finds the outlines of a
block, ``ome_zarr`` writes the pyramid; ``slide_outputs`` is what each writer is fed, ``run_outputs`` the
recipe of one slide's outputs.

Everything is written atomically (a temporary sibling renamed into place on success) and streamed
(no writer needs all nuclei of a slide in memory at once).
"""
from .atomic import atomic_dir, atomic_file, safe_child, safe_name
from .geojson import (clean_polygon, feature_uuid, iter_geojson, make_feature, qupath_problems, simplify_rings,
                      write_geojson)
from .rasterise import rasterise
from .ome_zarr import write_ome_zarr
from .qc import write_qc_png
from .table import format_value, write_csv, write_parquet

__all__ = [
    "atomic_dir", "atomic_file", "safe_child", "safe_name",
    "clean_polygon", "feature_uuid", "iter_geojson", "make_feature", "qupath_problems", "simplify_rings",
    "write_geojson",
    "rasterise", "write_ome_zarr",
    "write_qc_png",
    "format_value", "write_csv", "write_parquet",
]
