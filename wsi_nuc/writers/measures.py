"""Which measurements each output carries, and how many decimals each one means.

One table for all writers, so the GeoJSON, the CSV/Parquet table and the zarr ``properties`` agree on
every number they share:

- lengths and areas in µm (``*_um``, ``*_um2``): 0.01 (a working pixel is 0.5 µm; finer is noise);
- level-0 pixel coordinates: 0.1 px;
- ratios and probabilities in 0..1 (eccentricity, solidity, circularity, confidence, type_prob) and
  haematoxylin optical density: 0.001;
- angles in degrees and mean RGB (0..255): 0.1;
- ids and type codes: integers.

The GeoJSON carries the measurements that QuPath cannot compute from the outline itself, plus the
shape figures users filter on (:data:`GEOJSON_MEASUREMENTS`); the table carries them all.

>>> round_columns({"area_um2": np.array([12.3456]), "solidity": np.array([0.98765])})
{'area_um2': array([12.35]), 'solidity': array([0.988])}
"""
from __future__ import annotations

import numpy as np

DECIMALS = {
    "centroid_x_px": 1, "centroid_y_px": 1, "centroid_x_um": 2, "centroid_y_um": 2,
    "area_um2": 2, "perimeter_um": 2, "equivalent_diameter_um": 2, "major_axis_um": 2, "minor_axis_um": 2,
    "eccentricity": 3, "solidity": 3, "circularity": 3, "orientation_deg": 1,
    "mean_r": 1, "mean_g": 1, "mean_b": 1, "mean_h_od": 3, "confidence": 3, "type_prob": 3,
}

# GeoJSON measurements: what QuPath cannot compute from the outline (id, confidence, haematoxylin OD,
# type probability) plus the two figures users filter on most (area from the pixels, circularity).
# QuPath's "Add shape features" gives perimeter, solidity, axes and more from the outline; the table
# has every measurement. nucleus_id links a detection to its table row and zarr label. Kept short so a
# detection costs <= 500 bytes (a million nuclei: < 500 MB).
GEOJSON_MEASUREMENTS = ("nucleus_id", "area_um2", "circularity", "mean_h_od", "confidence", "type_prob")

# zarr image-label properties, beside label-value
ZARR_PROPERTIES = ("nucleus_id", "area_um2", "confidence", "type", "type_prob")


def round_column(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the decimals of measurement ``name`` (unchanged when it has no rule).

    >>> round_column("orientation_deg", np.array([-12.345])).tolist()
    [-12.3]
    """
    d = DECIMALS.get(name)
    a = np.asarray(values)
    if d is None or a.dtype.kind != "f":
        return a
    return np.round(a.astype(np.float64, copy=False), d)


def round_columns(columns: dict) -> dict:
    """Every float column of ``{name: 1-D array}`` rounded by :data:`DECIMALS` (a new dict)."""
    return {k: round_column(k, v) for k, v in columns.items()}
