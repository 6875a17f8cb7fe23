"""OME-Zarr (OME-NGFF 0.4, zarr format 2) of a slide's nuclei: a label pyramid under an image.

Layout written at ``path`` (``OUT/<stem>/nuclei.ome.zarr``)::

    nuclei.ome.zarr/                  image group: multiscales (axes c, y, x) + omero (RGB rendering)
      0/ [1/ ...]                     uint8 (3, h, w): the slide thumbnail (one level, longest side
                                      ``thumb_px``), or with ``image=`` the slide itself at the label
                                      levels' resolutions (``--zarr-image``)
      labels/                         {"labels": ["nuclei"]}
        nuclei/                       multiscales (axes y, x) + image-label (source, colors, properties)
          0/                          uint32 (H, W) at the working resolution (0.5 µm/px): nucleus_id
          1/, 2/, ...                 each level half the one above, nearest neighbour (level k pixel
                                      (r, c) = level 0 pixel (2^k r, 2^k c)), down to about ``min_side``

Why zarr format 2 and NGFF 0.4: napari-ome-zarr, QuPath's OME-Zarr reader, vizarr and ome-zarr-py all
read it; 0.5 (zarr v3) is not yet read by all of them. The arrays are written with ``zarr`` directly,
chunk by chunk (ome-zarr-py's writers take whole in-memory or dask arrays; these labels come from
polygons, one chunk at a time): level 0 is rasterised chunk by chunk from the final outlines (see
:mod:`.rasterise`; empty chunks are never written), each further level is read back from the level
above one block at a time, so memory stays at a few chunks whatever the slide size.

Coordinates: every level of both pyramids is scaled in micrometres and translated so that world
coordinates are level-0 pixel coordinates × level-0 mpp, with level-0 pixel centres at integer
multiples of the level-0 mpp (as a level-0 image shown with scale only): a dataset whose pixel covers
``d`` level-0 pixels has scale ``d × mpp0`` and translation ``(d - 1) / 2 × mpp0`` (image levels, whose
pixels average their footprint); the nearest-neighbour label levels keep the translation of label level 0,
``(f - 1) / 2 × mpp0``, as their pixel (r, c) is label pixel (2^k r, 2^k c). The labels
therefore overlay the thumbnail, the slide's own pyramid and the GeoJSON exactly.

``image-label``: ``source.image`` points at the parent image; ``properties`` give, for every
``label-value`` (= ``nucleus_id``), the id, area, confidence and, when nuclei have types, ``type`` and
``type_prob``; ``colors`` (only when nuclei have types) give each label its type's colour (without types
napari's own per-label colours keep touching nuclei apart). Both are left out above
:data:`PROPERTIES_MAX` nuclei (napari's reader would spend minutes on a million); the label value is the
``nucleus_id`` of the table all the same. Label value 0 is background. The
``.zattrs`` of ``labels/nuclei`` is written as a stream, so millions of properties need no more memory
than one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .atomic import atomic_dir
from .rasterise import rasterise_blocks

NOTE = ("labels are at the working resolution; multiply by f to get level-0 pixels "
        "(working pixel (r, c) covers level-0 x in [c*f, (c+1)*f), y in [r*f, (r+1)*f))")

NGFF_VERSION = "0.4"
# napari-ome-zarr turns every property into a napari feature row (about 80 µs a nucleus here: 2.1 s of a
# 6.7 s first view for 27k nuclei); above this many nuclei properties and colours are left out so that a
# whole slide (a million nuclei) still opens in seconds. Label value = nucleus_id either way.
PROPERTIES_MAX = 50_000


def level_shapes(shape: tuple[int, int], min_side: int = 1024) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels: level 0, then halved (rounding up) while the longer side of the
    level above exceeds ``min_side``.

    >>> level_shapes((3000, 5000), 1024)
    [(3000, 5000), (1500, 2500), (750, 1250), (375, 625)]
    >>> level_shapes((500, 600))
    [(500, 600)]
    """
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _transform(d: float, mpp0: float, ndim_extra: int = 0, centre: float | None = None) -> list[dict]:
    """NGFF coordinateTransformations of a dataset whose pixel is ``d`` level-0 pixels wide and whose
    pixel 0 is centred at level-0 ``centre`` (default ``d / 2``: the middle of the pixel's footprint)."""
    centre = d / 2.0 if centre is None else centre
    s, t = d * mpp0, (centre - 0.5) * mpp0
    return [{"type": "scale", "scale": [1.0] * ndim_extra + [s, s]},
            {"type": "translation", "translation": [0.0] * ndim_extra + [t, t]}]


def _axes(channel: bool) -> list[dict]:
    yx = [{"name": "y", "type": "space", "unit": "micrometer"},
          {"name": "x", "type": "space", "unit": "micrometer"}]
    return ([{"name": "c", "type": "channel"}] if channel else []) + yx


def _multiscales(name: str, downsamples: list[float], mpp0: float, channel: bool,
                 centre: float | None = None) -> list[dict]:
    return [{
        "version": NGFF_VERSION,
        "name": name,
        "axes": _axes(channel),
        "datasets": [{"path": str(k), "coordinateTransformations": _transform(d, mpp0, int(channel), centre)}
                     for k, d in enumerate(downsamples)],
        "type": "nearest" if not channel else "mean",
    }]


def _create(group, name: str, shape, chunks, dtype):
    import numcodecs
    import zarr

    compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    chunks = tuple(min(c, max(s, 1)) for c, s in zip(chunks, shape))
    if int(zarr.__version__.split(".")[0]) >= 3:
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                  compressors=compressor, chunk_key_encoding={"name": "v2", "separator": "/"})
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                compressor=compressor, dimension_separator="/")


def _open_group(path: Path, mode: str = "w"):
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    return zarr.open_group(str(path), mode=mode)


def _blocks(shape, chunk) -> Iterator[tuple[int, int, int, int]]:
    h, w = shape
    for y0 in range(0, h, chunk):
        for x0 in range(0, w, chunk):
            yield y0, x0, min(y0 + chunk, h), min(x0 + chunk, w)


def _downsample_levels(group, shapes, chunk: int, reduce: Callable[[np.ndarray], np.ndarray],
                       dtype, channel: bool = False) -> None:
    """Levels 1.. of ``group``: each block of level k from a (2 chunk)² block of level k - 1."""
    for k in range(1, len(shapes)):
        prev = group[str(k - 1)]
        shape = ((3,) if channel else ()) + shapes[k]
        arr = _create(group, str(k), shape, ((3,) if channel else ()) + (chunk, chunk), dtype)
        for y0, x0, y1, x1 in _blocks(shapes[k], chunk):
            src = prev[..., 2 * y0:2 * y1, 2 * x0:2 * x1]
            if not src.any() and not channel:
                continue                                   # empty label chunk: the fill value
            out = reduce(src)[..., :y1 - y0, :x1 - x0]
            arr[..., y0:y1, x0:x1] = out


def _nearest(a: np.ndarray) -> np.ndarray:
    return a[..., ::2, ::2]


def _mean2(a: np.ndarray) -> np.ndarray:
    """2x2 mean of a (c, h, w) uint8 block (edge rows/columns repeated when odd)."""
    h, w = a.shape[-2:]
    a = np.pad(a, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge").astype(np.uint16)
    s = a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def _omero(name: str) -> dict:
    chans = [{"label": c, "color": col, "window": {"start": 0, "end": 255, "min": 0, "max": 255},
              "active": True, "coefficient": 1, "family": "linear", "inverted": False}
             for c, col in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))]
    return {"name": name, "version": NGFF_VERSION, "channels": chans, "rdefs": {"model": "color"}}


def _write_label_attrs(path: Path, name: str, downsamples: list[float], mpp0: float,
                       properties: Iterable[dict] | None, colors: Iterable[dict] | None,
                       extra: dict) -> None:
    """``labels/<name>/.zattrs``, streamed: properties and colours one entry at a time."""
    # nearest-neighbour levels sample the top-left level-0 label pixel: pixel 0 of every level is centred
    # where label pixel 0 is, at level-0 f / 2
    head = {"multiscales": _multiscales(name, downsamples, mpp0, channel=False, centre=downsamples[0] / 2)}
    enc = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    tmp = path / ".zattrs.partial"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(head)[:-1])
        fh.write(', "wsi_nuc": ' + json.dumps(extra))
        fh.write(', "image-label": {"version": "%s", "source": {"image": "../../"}' % NGFF_VERSION)
        for key, items in (("colors", colors), ("properties", properties)):
            if items is None:
                continue
            fh.write(f', "{key}": [')
            for k, item in enumerate(items):
                fh.write(("," if k else "") + "\n" + enc.encode(item))
            fh.write("\n]")
        fh.write("}}\n")
    tmp.replace(path / ".zattrs")


def write_ome_zarr(path: Path | str, shape_work: tuple[int, int], polygons, f: float, level0_mpp: float,
                   thumbnail: tuple[np.ndarray, float] | None = None, image_reader=None,
                   properties: Iterable[dict] | None = None, colors: Iterable[dict] | None = None,
                   chunk: int = 1024, min_side: int = 1024, name: str = "nuclei",
                   slide_name: str = "slide") -> dict:
    """Write the OME-Zarr image + label pyramid at ``path`` (appears only when complete).

    Parameters
    ----------
    shape_work : (rows, cols) of the label image at the working resolution.
    polygons : object with ``query(box)`` (``writers.final_index.FinalIndex``) or a callable of the same
        signature yielding ``(nucleus_id, polygon_level0 (K, 2))`` for at least the outlines touching that
        working-pixel box (a :class:`wsi_nuc.tiling.Box`).
    f, level0_mpp : level-0 pixels per working pixel; µm per level-0 pixel.
    thumbnail : ``(rgb (h, w, 3) uint8, level-0 px per thumbnail px)``: the parent image (one level).
    image_reader : a slide reader: the parent image is then the slide itself at the label levels'
        resolutions (level 0 read with ``read_region`` chunk by chunk, the rest 2x2 means).
    properties, colors : iterables of dicts for ``image-label`` (streamed), or None.
    chunk : chunk edge of every level; min_side : the pyramid stops near this longest side.

    Returns a dict describing what was written (levels, shapes, max label) for ``summary.json``.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "n.ome.zarr")
    >>> sq = np.array([[2, 2], [10, 2], [10, 10], [2, 10]], float)
    >>> write_ome_zarr(p, (8, 8), lambda box: [(1, sq)], 2.0, 0.25, chunk=4, min_side=4)["levels"]
    2
    """
    path = Path(path)
    h, w = int(shape_work[0]), int(shape_work[1])
    f = float(f)
    mpp0 = float(level0_mpp)
    query = polygons.query if hasattr(polygons, "query") else polygons
    shapes = level_shapes((h, w), min_side)
    label_ds = [f * 2 ** k for k in range(len(shapes))]
    with atomic_dir(path) as tmp:
        root = _open_group(tmp)
        image_ds, image_shapes = _write_image(root, (h, w), f, shapes, label_ds, thumbnail, image_reader, chunk)
        root.attrs.update({"multiscales": _multiscales(slide_name, image_ds, mpp0, channel=True),
                           "omero": _omero(slide_name)})
        labels_root = root.create_group("labels")
        labels_root.attrs.update({"labels": [name]})
        g = labels_root.create_group(name)
        lab0 = _create(g, "0", (h, w), (chunk, chunk), "uint32")
        max_id = rasterise_blocks(lab0, query, f, chunk)
        _downsample_levels(g, shapes, chunk, _nearest, "uint32")
        extra = {"level0_mpp": mpp0, "mpp_work": f * mpp0, "f": f, "note": NOTE, "background": 0,
                 "ids": "label value = nucleus_id in nuclei.geojson / nuclei.csv",
                 "overlaps": "smaller polygon wins; equal areas: lower id", "max_label": max_id}
        _write_label_attrs(tmp / "labels" / name, name, label_ds, mpp0, properties, colors, extra)
    return {"path": path.name, "ngff": NGFF_VERSION, "levels": len(shapes),
            "label_shapes": [list(s) for s in shapes], "label_scale_um": [d * mpp0 for d in label_ds],
            "image": "slide" if image_reader is not None else "thumbnail",
            "image_shapes": [list(s) for s in image_shapes], "chunk": chunk, "max_label": max_id}


def _write_image(root, shape: tuple[int, int], f: float, shapes, label_ds, thumbnail, image_reader, chunk: int):
    """The parent image: the slide at the label levels' resolutions (``image_reader``), else the thumbnail
    (or a white stand-in). Returns its downsamples (level-0 px per pixel) and level shapes."""
    h, w = shape
    if image_reader is not None:
        from ..slide import read_region

        arr = _create(root, "0", (3, h, w), (3, chunk, chunk), "uint8")
        for y0, x0, y1, x1 in _blocks((h, w), chunk):
            rgb = read_region(image_reader, x0 * f, y0 * f, (x1 - x0) * f, (y1 - y0) * f, x1 - x0, y1 - y0)
            arr[:, y0:y1, x0:x1] = np.moveaxis(rgb, -1, 0)
        _downsample_levels(root, shapes, chunk, _mean2, "uint8", channel=True)
        return label_ds, shapes
    if thumbnail is None:
        thumb, ts = np.full((max(1, h // 64), max(1, w // 64), 3), 255, np.uint8), 64.0 * f
    else:
        thumb, ts = np.asarray(thumbnail[0])[..., :3].astype(np.uint8), float(thumbnail[1])
    arr = _create(root, "0", (3,) + thumb.shape[:2], (3, chunk, chunk), "uint8")
    arr[:] = np.moveaxis(thumb, -1, 0)
    return [ts], [thumb.shape[:2]]


def read_labels(path: Path | str, level: int = 0, name: str = "nuclei") -> np.ndarray:
    """One level of the label pyramid as a numpy array (for tests and small slides).

    >>> # read_labels("OUT/slide/nuclei.ome.zarr")  -> uint32 (H, W) at the working resolution
    """
    import zarr

    return np.asarray(zarr.open_group(str(Path(path) / "labels" / name), mode="r")[str(level)][:])
