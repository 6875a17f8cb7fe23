"""One image or one tile: pixels -> head maps -> instance labels -> owned nuclei (outlines + measurements).

This is the single code path shared by ``wsi-nuc run`` (per tile) and ``wsi-nuc eval`` (per image).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .instances import InstanceParams, labels_from_maps, polygons_level0
from .outlines import pack_polygons
from .tiling import Box, Scale, Tile
from .type_map import N_INSTANCE_MAPS, type_prob_map


@dataclass
class TileNuclei:
    """The nuclei a tile owns, as compact columns (plain data: cheap to pickle and to spool).

    ``coords`` holds every outline's (x, y) level-0 vertices back to back; outline i is
    ``coords[offsets[i]:offsets[i + 1]]``. ``depth`` is how far each centroid lies inside the tile core
    (working px, negative outside, :meth:`wsi_nuc.tiling.Tile.depth`), used to pick a survivor among
    duplicates.
    """

    key: str
    row: int
    col: int
    core: Box
    coords: np.ndarray
    offsets: np.ndarray
    depth: np.ndarray
    columns: dict = field(default_factory=dict)
    cut: int = 0                # nuclei the tile would own that its read window cut (see tiling.Owned)

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def polygon(self, i: int) -> np.ndarray:
        return self.coords[self.offsets[i]:self.offsets[i + 1]]


def segment_maps(maps: np.ndarray, params: InstanceParams) -> np.ndarray:
    """Instance labels for one image's head maps (C, H, W)."""
    return labels_from_maps(maps, params)


def tile_nuclei(tile: Tile, image: np.ndarray, maps: np.ndarray, params: InstanceParams, scale: Scale,
                types: tuple[str, ...] = ()) -> TileNuclei:
    """Segment one tile's read window (marker-controlled watershed) and keep the nuclei it owns.

    ``types``: the model's type names; when given and ``maps`` carries type probabilities, each nucleus
    also gets ``type`` and ``type_prob`` columns (see :func:`owned_nuclei`).
    """
    labels = segment_maps(maps, params)
    tp = type_prob_map(maps) if types else None
    return owned_nuclei(tile, labels, image, maps[0], scale, type_prob=tp, type_names=types)


def owned_nuclei(tile: Tile, labels: np.ndarray, image: np.ndarray, confidence: np.ndarray | None,
                 scale: Scale, type_prob: np.ndarray | None = None, type_names: tuple[str, ...] = ()) -> TileNuclei:
    """The nuclei a tile owns, from the instance labels of its read window.

    1. which nuclei the tile owns: :meth:`wsi_nuc.tiling.Tile.owned` (the nuclei it would own but sees cut
       by its read window are counted in ``cut``);
    2. outlines in level-0 coordinates and per-nucleus measurements;
    3. with ``type_prob`` ((1 + K, H, W), see :mod:`wsi_nuc.type_map`) and ``type_names`` (K names): the
       columns ``type`` (the type's name, a str array) and ``type_prob`` (float64).
    """
    from .morphometry import measure_nuclei
    from .outlines import clean_polygons

    own = tile.owned(labels)
    ids, gy, gx = own.ids, own.y, own.x
    origin = scale.window(tile.read)[:2]          # level-0 (x, y) of the read window's corner
    polys = clean_polygons(polygons_level0(labels, ids, scale.f, origin))
    ok = np.array([p is not None for p in polys], bool) if polys else np.zeros(0, bool)
    ids, gy, gx = ids[ok], gy[ok], gx[ok]
    polys = [p for p in polys if p is not None]
    cols = measure_nuclei(labels, image, ids, scale.work_mpp, scale.level0_mpp, origin, confidence=confidence,
                          outlines=polys)
    if type_prob is not None and type_names:
        cols.update(type_columns(labels, type_prob, ids, type_names, image, scale.work_mpp))
    coords, offsets = pack_polygons(polys)
    depth = tile.depth(gy, gx) if len(ids) else np.zeros(0)
    return TileNuclei(tile.key, tile.row, tile.col, tile.core, coords, offsets, depth.astype(float), cols,
                      own.cut)


def type_columns(labels: np.ndarray, type_prob: np.ndarray, ids, type_names, image: np.ndarray | None = None,
                 mpp: float | None = None) -> dict[str, np.ndarray]:
    """``type`` (the model's type names, str array) and ``type_prob`` (float64) of the nuclei ``ids`` of
    ``labels``; also each type's raw probability ``q_<type>`` and, with ``image`` (the tile as read, on the
    grid of ``labels``, ``mpp`` µm/px), the features ``f_<name>`` of :mod:`wsi_nuc.type_features` (float32
    both): what :mod:`wsi_nuc.type_trust` decides from when the outputs are written.

    Examples
    --------
    >>> p = np.zeros((3, 1, 2)); p[2] = 1.0
    >>> c = type_columns(np.array([[1, 1]]), p, [1], ("a", "b"))
    >>> c["type"].tolist(), c["type_prob"].tolist(), c["q_b"].tolist()
    (['b'], [1.0], [1.0])
    """
    from .type_map import nucleus_type_probs
    from .type_trust import f_column, q_column

    t, q = nucleus_type_probs(labels, type_prob, ids)
    names = np.array(["", *type_names])
    rows = np.arange(len(t))
    with np.errstate(invalid="ignore"):
        prob = np.where(t > 0, q[rows, np.maximum(t, 1) - 1], np.nan) if len(t) else np.zeros(0)
    cols = {"type": names[np.clip(t, 0, len(type_names))], "type_prob": prob.astype(np.float64)}
    cols.update((q_column(n), q[:, k].astype(np.float32)) for k, n in enumerate(type_names))
    if image is not None and mpp:
        from .type_features import FEATURES, nucleus_features

        f = nucleus_features(labels, image, ids, float(mpp)).astype(np.float32)
        cols.update((f_column(n), f[:, k]) for k, n in enumerate(FEATURES))
    return cols


def segment_image(rgb: np.ndarray, predictor, params: InstanceParams, image_mpp: float | None = None,
                  max_side: int = 2048) -> np.ndarray:
    """Instance labels of a whole (small) image at its own size, through the model's working scale.

    See :func:`segment_image_typed`, which also types the nuclei.
    """
    return segment_image_typed(rgb, predictor, params, image_mpp, max_side, with_types=False)[0]


def segment_image_typed(rgb: np.ndarray, predictor, params: InstanceParams, image_mpp: float | None = None,
                        max_side: int = 2048, with_types: bool = True, trust=None
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Instance labels of a whole (small) image at its own size, and the type of each nucleus.

    Returns ``(labels, types, type_prob)``: ``types`` (int64, 1..K in the model's ``types`` order) and
    ``type_prob`` (float64), one per label in ascending label order, both None when the model has no type
    head or ``with_types`` is False. The types are decided on the grid the watershed ran on (the image's
    own when the maps were upsampled to it, the working grid otherwise) and carried to the labels.
    With ``trust`` (a :class:`wsi_nuc.type_trust.TypeTrust`) the nuclei it withholds get type 0 and
    ``type_prob`` is the calibrated probability of the model's type; without it, the model's own types.

    When the image is finer than the working scale (a 40x tile for a 0.5 µm/px model), the head maps are
    upsampled bilinearly to the image's own grid before the watershed (pixel-count thresholds scaled to
    match), so outlines follow its pixels rather than blocks of working pixels: on MoNuSeg val this
    gave +0.004 a-AJI and +0.011 PQ over upsampling the labels. Coarser images are segmented at the
    working scale and their labels resized back (nearest).
    """
    labels, d = segment_image_detail(rgb, predictor, params, image_mpp, max_side, with_types,
                                     features=trust is not None)
    if d is None:
        return labels, None, None
    if trust is None:
        return labels, d["types"], d["type_prob"]
    from .type_trust import decide, stain_familiar

    r = decide(d["types"], d["q"], d["features"], trust, stain_familiar(d["stain"], trust.stain))
    return labels, r["type"], r["prob"]


def segment_image_detail(rgb: np.ndarray, predictor, params: InstanceParams, image_mpp: float | None = None,
                         max_side: int = 2048, with_types: bool = True, features: bool = True, stain=None):
    """``(labels, detail)`` of one image (see :func:`segment_image_typed`): ``detail`` None without types,
    else ``{"types", "type_prob", "q" (N, K raw probabilities), "features" (N, F stain-normalised, or None),
    "stain" (the LabStats used or None)}``, one row per label in ascending order. ``stain``: the
    statistics to normalise with (a crop of a slide: the slide's, as ``run`` does); default the image's."""
    from dataclasses import replace

    from .dataset import resize_image, resize_labels, resample_factor

    h, w = rgb.shape[:2]
    fct = resample_factor(image_mpp, predictor.mpp)
    shape = (max(1, round(h * fct)), max(1, round(w * fct)))
    work = resize_image(rgb, shape)
    if predictor.stain_target is None:
        stain = None
    elif stain is None:
        from .stainnorm import lab_stats

        stain = lab_stats(work)  # one set of statistics for the whole image, also when it is tiled
    if max(shape) > max_side:
        maps = tiled_maps(work, predictor, stain=stain)
    else:
        maps = predictor.maps(work[None], stain)[0]
    if not with_types:
        maps = maps[:N_INSTANCE_MAPS]
    wmpp = predictor.mpp or image_mpp or 1.0
    if shape == (h, w):
        labels = segment_maps(maps, params)
        return labels, _detail(labels, maps, work, wmpp, features, stain, predictor)
    if fct < 1:
        area = 1.0 / (fct * fct)
        fine = replace(params, min_area_px=max(1, round(params.min_area_px * area)),
                       min_marker_px=max(1, round(params.min_marker_px * area)))
        maps = upsample_maps(maps, (h, w))
        labels = segment_maps(maps, fine)
        return labels, _detail(labels, maps, rgb, float(image_mpp), features, stain, predictor)
    labels = segment_maps(maps, params)
    d = _detail(labels, maps, work, wmpp, features, stain, predictor)
    out = resize_labels(labels, (h, w))
    if d is not None:  # nearest resizing may drop a small nucleus: keep the rows of those that remain
        ids = np.unique(labels)
        keep = np.isin(ids[ids > 0], np.unique(out))
        d = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in d.items()}
    return out, d


def _detail(labels: np.ndarray, maps: np.ndarray, image: np.ndarray, mpp: float, features: bool, stain,
            predictor) -> dict | None:
    from .type_map import nucleus_type_probs

    tp = type_prob_map(maps)
    if tp is None:
        return None
    types, q = nucleus_type_probs(labels, tp)
    rows = np.arange(len(types))
    with np.errstate(invalid="ignore"):
        prob = np.where(types > 0, q[rows, np.maximum(types, 1) - 1], np.nan) if len(types) else np.zeros(0)
    f = None
    if features:
        from .type_features import nucleus_features, normalised

        ids = np.unique(labels)
        f = normalised(nucleus_features(labels, image, ids[ids > 0], mpp), stain, predictor.stain_target)
    return {"types": types, "type_prob": prob, "q": q, "features": f, "stain": stain}


def upsample_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel-centred) resize of head maps (C, h, w) to (C, *shape), float32."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0].numpy()


def tiled_maps(img: np.ndarray, predictor, tile: int = 1024, halo: int = 64, stain=None) -> np.ndarray:
    """Head maps of a large image, predicted in overlapping windows (cores pasted, halos discarded)."""
    from .tiling import make_grid

    h, w = img.shape[:2]
    grid = make_grid(h, w, tile, halo, predictor.stride)
    out = None
    for t in grid:
        r = t.read
        pad = ((max(0, -r.y0), max(0, r.y1 - h)), (max(0, -r.x0), max(0, r.x1 - w)), (0, 0))
        win = np.pad(img[max(r.y0, 0):min(r.y1, h), max(r.x0, 0):min(r.x1, w)], pad, constant_values=255)
        m = predictor.maps(win[None], stain)[0]
        if out is None:  # 6 maps, or more with a type head
            out = np.zeros((m.shape[0], h, w), np.float32)
        c = t.core
        out[:, c.y0:c.y1, c.x0:c.x1] = m[:, c.y0 - r.y0:c.y1 - r.y0, c.x0 - r.x0:c.x1 - r.x0]
    return out
