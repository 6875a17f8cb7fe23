"""Guess an image's scale (µm/px) from the sizes of the nuclei a model finds in it.

Datasets without a known scale (``mpp`` null, as in DSB 2018) would otherwise be read as if their pixels
were the model's working pixels. A 0.5 µm/px model then sees 40x nuclei four times too large and splits
or misses them. Instead the image is segmented once at its own pixels, the median nucleus area is
compared with the median of the model's training nuclei of known scale (``nucleus_area_um2`` in its
config; :func:`wsi_nuc.train.sources.known_scale_samples`), and the
scale that makes the two agree is used for a second pass.
"""
from __future__ import annotations

import numpy as np

MIN_NUCLEI = 5          # fewer found nuclei: too little evidence, keep the image's own pixels
MAX_ZOOM_OUT = 4.0      # the estimate is clamped to [working / 4, working * 2]
MAX_ZOOM_IN = 2.0
TOLERANCE = 0.1         # estimates within 10 % of the working scale are taken as the working scale


def median_area_px(labels: np.ndarray) -> float | None:
    """Median pixel area of the labelled instances (None when there are none)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(areas)) if len(areas) else None


def median_area_um2(label_images, mpp: float) -> float:
    """Median nucleus area in µm² over label images that share the scale ``mpp``."""
    areas = [np.bincount(np.asarray(lab).ravel())[1:] for lab in label_images]
    areas = np.concatenate([a[a > 0] for a in areas]) if areas else np.zeros(0)
    if not len(areas):
        raise ValueError("no labelled nuclei to measure")
    return float(np.median(areas)) * float(mpp) ** 2


def estimate_mpp(labels: np.ndarray, work_mpp: float, nucleus_area_um2: float) -> float:
    """The image's scale implied by ``labels``, instance labels predicted at its own pixels while
    taking them for ``work_mpp`` pixels: the scale at which their median area is the training median.
    Returns ``work_mpp`` when fewer than :data:`MIN_NUCLEI` nuclei were found or the estimate is within
    :data:`TOLERANCE` of it."""
    n = int(np.count_nonzero(np.bincount(np.asarray(labels).ravel())[1:]))
    area = median_area_px(labels)
    if n < MIN_NUCLEI or area is None:
        return float(work_mpp)
    est = float(np.sqrt(nucleus_area_um2 / area))
    est = min(max(est, work_mpp / MAX_ZOOM_OUT), work_mpp * MAX_ZOOM_IN)
    return float(work_mpp) if abs(est / work_mpp - 1) <= TOLERANCE else est
