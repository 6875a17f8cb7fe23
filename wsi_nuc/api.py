"""The Python API: one image from a notebook, or one slide, without the command line.

>>> import wsi_nuc
>>> labels, table = wsi_nuc.segment_image(rgb, mpp=0.5)                      # doctest: +SKIP
>>> summary = wsi_nuc.run_slide("slide.svs", "out", table="parquet")          # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def segment_image(rgb: np.ndarray, mpp: float, model: str | None = None, device: str = "cpu",
                  min_area_um2: float = 3.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Segment and measure every nucleus of one RGB image held in memory.

    The image is resampled to the model's working scale (0.5 µm/px for the H&E models), segmented with
    the same network, watershed and measurements as ``wsi-nuc run``, and the labels come back on the
    image's own pixel grid.

    Parameters
    ----------
    rgb : uint8 array (H, W, 3) (an alpha channel is ignored).
    mpp : microns per pixel of ``rgb`` (e.g. 0.25 at 40x, 0.5 at 20x).
    model : shipped model name (``wsi-nuc models``) or model folder; None: the default for ``device``.
    device : "cpu", "cuda" or "auto".
    min_area_um2 : nuclei smaller than this are removed (the rule of ``wsi-nuc run``).

    Returns
    -------
    labels : int32 (H, W), 0 background, nucleus i labelled i (1..N, in centroid order).
    table : {column: 1-D array of N}: ``nucleus_id`` and the columns of ``nuclei.csv`` (centroids in
        the image's pixels and µm, area, perimeter, shape, colour, haematoxylin OD); ``confidence`` is
        NaN here (``wsi-nuc run`` has it). ``pandas.DataFrame(table)`` makes a data frame of it.

    Examples
    --------
    >>> import numpy as np, wsi_nuc
    >>> labels, table = wsi_nuc.segment_image(np.full((64, 64, 3), 240, np.uint8), mpp=0.5)
    >>> labels.shape, len(table["nucleus_id"])
    ((64, 64), 0)
    """
    from .instances import InstanceParams, polygons_level0
    from .morphometry import measure_nuclei
    from .outlines import clean_polygons
    from .predict import get_predictor
    from .segment import segment_image as _segment

    a = _check_image(rgb, mpp)
    predictor = get_predictor(model, device)
    params = InstanceParams.from_dict(predictor.config.get("postprocess") or {})
    labels = _segment(a, predictor, params, image_mpp=float(mpp)).astype(np.int32)
    labels, ids = _numbered(_without_small(labels, float(mpp), min_area_um2))
    outlines = clean_polygons(polygons_level0(labels, ids, 1.0))
    cols = measure_nuclei(labels, a, ids, float(mpp), float(mpp),
                          outlines=[o if o is not None else np.zeros((0, 2)) for o in outlines])
    return labels, {"nucleus_id": ids.astype(np.int64), **cols}


def _check_image(rgb, mpp) -> np.ndarray:
    """The RGB channels of a uint8 (H, W, 3+) array, contiguous; ValueError naming what is wrong."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
        raise ValueError(f"rgb must be a uint8 (H, W, 3) array, got {a.dtype} {a.shape}")
    if not (mpp and mpp > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    return np.ascontiguousarray(a[..., :3])


def _without_small(labels: np.ndarray, mpp: float, min_area_um2: float) -> np.ndarray:
    """``labels`` without nuclei smaller than ``min_area_um2`` (the size rule of ``wsi-nuc run``)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if min_area_um2 and len(ids):
        area = np.bincount(labels.ravel())[ids] * mpp ** 2
        small = ids[area < min_area_um2]
        if len(small):
            labels[np.isin(labels, small)] = 0
    return labels


def _numbered(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 1..N in centroid (y, x) order, as in the slide outputs, and the ids 1..N."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids):
        return labels, ids
    from scipy import ndimage as ndi

    cy, cx = np.array(ndi.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2).T
    order = ids[np.lexsort((cx, cy))]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[labels], np.arange(1, len(order) + 1)


def run_slide(path: str | Path, out: str | Path, **settings) -> dict:
    """Segment every nucleus of a whole slide and write its outputs to ``out/<slide stem>/`` — exactly
    ``wsi-nuc run PATH --out OUT``.

    Parameters
    ----------
    path : the slide (anything ``wsi-nuc info`` opens).
    out : output folder.
    **settings : fields of ``wsi_nuc.pipeline.RunSettings`` (the command's options, with underscores):
        ``model``, ``device``, ``tile``, ``halo``, ``mpp``, ``tissue_detection``, ``workers``,
        ``scheduler``, ``batch``, ``quiet``, ``geojson_gz``, ``simplify``, ``table``, ``zarr_image``,
        ``min_area_um2``, ``roi``, ... An unknown name raises ``TypeError``.

    Returns
    -------
    The summary (the content of ``summary.json``) plus ``output``: the slide's output folder.

    Examples
    --------
    >>> import wsi_nuc
    >>> s = wsi_nuc.run_slide("CMU-1-Small-Region.svs", "out", quiet=True)    # doctest: +SKIP
    >>> s["nucleus_count"], s["output"]                                      # doctest: +SKIP
    (2830, 'out/CMU-1-Small-Region')
    """
    from dataclasses import fields

    from .pipeline import RunSettings, run_slide as _run

    known = {f.name for f in fields(RunSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return _run(path, out, RunSettings(**settings))
