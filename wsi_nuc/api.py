"""The Python API: one image from a notebook, or one slide, without the command line.

>>> import wsi_nuc
>>> labels, table = wsi_nuc.segment_image(rgb, mpp=0.5)                      # doctest: +SKIP
>>> summary = wsi_nuc.run_slide("slide.svs", "out", table="parquet")          # doctest: +SKIP

:func:`segment_image` runs the very steps of ``wsi-nuc run`` on an image held in memory (the image is read
as a one-level slide, :class:`wsi_nuc.slide.array_reader.ArrayReader`): tissue, the slide's stain
statistics, 512-px tiles with their halo, the network, the watershed, ownership, stitching, the size rule
and the ids. So the same pixels give the same nuclei, measured and numbered alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

MPP_RANGE = (0.1, 2.0)           # µm/px that the H&E models can segment (as `wsi-nuc run` checks)


def segment_image(rgb: np.ndarray, mpp: float, model: str | None = None, device: str = "auto",
                  min_area_um2: float = 3.0, *, stain="image", origin: tuple[int, int] = (0, 0),
                  tissue_detection: bool = True, types: bool = True, engine: str = "auto",
                  threads: int | None = None, type_threshold: float | None = None,
                  type_check: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Segment, measure and type every nucleus of one RGB image held in memory, as ``wsi-nuc run`` does.

    Parameters
    ----------
    rgb : uint8 array (H, W, 3) (an alpha channel is ignored), e.g. a region read with OpenSlide.
    mpp : microns per pixel of ``rgb`` (e.g. 0.25 at 40x, 0.5 at 20x; 0.1-2).
    model : shipped model name (``wsi-nuc models``) or model folder; None: the default for ``device``.
    device : "auto" (CUDA when present), "cpu" or "cuda".
    min_area_um2 : nuclei smaller than this are removed (the size rule of ``wsi-nuc run``).
    stain : "image": stain statistics of this image taken as ``run`` takes a slide's (24 tissue patches);
        or a slide's statistics to use instead, so that a crop is recoloured as its whole slide was: the
        ``stain_normalisation["slide"]`` of a ``summary.json``, or :func:`slide_stain` of the slide file.
    origin : level-0 (x, y) of the image's top-left pixel in its slide (whole pixels): the tiles are cut on
        that slide's grid, as ``run`` cut them, and centroids and outlines are in slide coordinates
        ((0, 0): the image's own pixels). The network is not shift-invariant below its 16-px grid, so a
        crop segmented at another origin finds other nuclei (centroid F1 about 0.8 against ``run`` on a
        1024² CMU crop).
    tissue_detection : as ``run``: only tiles with tissue are segmented (False: every tile).
    types : the per-nucleus type and ``type_prob`` when the model has a type head.
    type_threshold, type_check : as ``--type-threshold`` and ``--no-type-check``: nuclei without a confident
        type, or in tissue unlike the types' training tissue, get an empty ``type`` (docs/types.md).
    engine : what runs the network (``--engine``; "auto": the fastest here).
    threads : tile threads (default: as ``run``, 2 at most).

    Returns
    -------
    labels : int32 (H, W), 0 background, nucleus i labelled i on the image's own pixel grid (rasterised
        from the outlines, as the OME-Zarr labels are).
    table : {column: 1-D array of N}, in id order: the columns of ``nuclei.csv`` (``nucleus_id`` 1..N as
        ``run`` numbers them; centroids in level-0 px and µm; area, perimeter, shape, colour, haematoxylin
        OD, ``confidence``), ``type`` and ``type_prob`` when typed, and ``outline``: each nucleus' polygon,
        a (K, 2) float array of level-0 (x, y) vertices. Values are rounded as in ``nuclei.csv``. Plain
        numpy, no pandas needed; ``pandas.DataFrame(table)`` or ``pyarrow.table(...)`` take it as it is.

    Raises ``ValueError`` for an argument that is wrong (named as here: ``mpp``, ``device``, ...).

    Examples
    --------
    >>> import numpy as np, wsi_nuc
    >>> labels, table = wsi_nuc.segment_image(np.full((64, 64, 3), 240, np.uint8), mpp=0.5)
    >>> labels.shape, len(table["nucleus_id"])
    ((64, 64), 0)
    """
    a = _check_image(rgb, mpp, device, origin)
    origin = (int(origin[0]), int(origin[1]))
    try:
        return _segment(a, float(mpp), model, device, min_area_um2, stain, origin, tissue_detection, types,
                        engine, threads, type_threshold, type_check)
    except InputError as e:
        raise ValueError(_api_terms(str(e))) from None


def _segment(a, mpp, model, device, min_area_um2, stain, origin, tissue_detection, types, engine, threads,
             type_threshold=None, type_check=True):
    """The recipe of ``wsi-nuc run`` without the files: plan the tiles, segment them here, stitch, tabulate."""
    from .graph import Geometry, TaskSettings, run_tiles_here
    from .model.engine_choice import resolve_engine
    from .model.io import check_model_dir, resolve_model_dir
    from .run_context import RunSettings
    from .slide.array_reader import ArrayReader
    from .stitch import stitch
    from .tiling import Box, Scale, make_grid
    from .tissue import detect_tissue, full_mask
    from .validate import check_postprocess, tile_align, validate_settings

    model_dir = resolve_model_dir(model, device)
    mcfg = check_model_dir(model_dir)
    check_postprocess(mcfg, model_dir)
    st, _ = validate_settings(RunSettings(model=model, device=device, min_area_um2=min_area_um2, types=types,
                                          engine=engine), tile_align(mcfg))
    image = ArrayReader(a, mpp)                    # tissue and the image's own stain statistics
    ox, oy = origin
    placed = ArrayReader(a, mpp, origin=origin)    # the tiles: on the grid of the slide the image came from
    scale = Scale(mpp, float(mcfg.get("mpp") or mpp))
    tissue = detect_tissue(image) if tissue_detection else full_mask(image.info)

    def keep(core) -> bool:                        # a tile core with tissue of the image in it
        b = scale.to_level0(core)
        return tissue.fraction_in(Box(b.y0 - oy, b.x0 - ox, b.y1 - oy, b.x1 - ox)) > 0

    H, W = scale.work_shape(placed.info.height, placed.info.width)
    grid = make_grid(H, W, st.tile, st.halo, align=tile_align(mcfg), margin=st.margin, keep=keep)
    stats = _stain(stain, image, tissue, scale, *scale.work_shape(*a.shape[:2])) if mcfg.get("stain_norm") else None
    task = TaskSettings(str(model_dir), device, None, None, dict(mcfg.get("postprocess") or {}), stats, types, 1,
                        resolve_engine(engine, model_dir, mcfg, device))
    tiles = run_tiles_here(Geometry(placed.path, mpp, scale), list(grid), task, threads=threads,
                           reader=placed) if len(grid) else []
    final = stitch(tiles, grid.band, min_area_um2 or 0.0, None)
    if types:
        from .type_trust import decide_final

        decide_final(final, mcfg, stats, type_threshold, type_check)
    return nuclei_table(final, Box(oy, ox, oy + a.shape[0], ox + a.shape[1]))


def _stain(stain, reader, tissue, scale, H: int, W: int) -> dict | None:
    """The stain statistics the tiles are recoloured with (see ``segment_image``'s ``stain``)."""
    from .stainnorm import LabStats, check_colour, slide_stats

    if isinstance(stain, str) and stain == "image":
        stats = slide_stats(reader, tissue, scale.f, H, W)
        check_colour(stats, "rgb")
        return stats.to_dict() if stats is not None else None
    if isinstance(stain, LabStats):
        return stain.to_dict()
    if isinstance(stain, dict):
        try:
            return LabStats.from_dict(stain).to_dict()
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"stain: not a set of stain statistics ({e}); expected the 'slide' entry of a "
                             f"summary.json's 'stain_normalisation', or wsi_nuc.slide_stain(path)") from None
    raise ValueError(f"stain must be 'image', a slide's statistics (dict) or a LabStats, got {stain!r}")


def nuclei_table(final, box) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels on the image's grid (``box``: the image's level-0 :class:`~wsi_nuc.tiling.Box`) and the table
    (``nuclei.csv``'s columns and ``outline``) of the stitched nuclei (:class:`wsi_nuc.stitch.FinalNuclei`)."""
    from .writers.rasterise import rasterise
    from .writers.slide_outputs import has_types, table_chunks, table_columns

    typed = has_types(final)
    chunks = list(table_chunks(final, "", typed))
    names = table_columns(typed, slide=False)               # the columns of nuclei.csv, as its writer has them
    table = {c: (np.concatenate([np.asarray(ch[c]) for ch in chunks]) if chunks else _empty(c)) for c in names}
    outlines = [tn.polygon(i) for tn, idx, _ in final for i in idx.tolist()]
    labels = rasterise(zip(table["nucleus_id"].tolist(), outlines), box, 1.0).astype(np.int32)
    table["outline"] = np.empty(len(outlines), dtype=object)
    table["outline"][:] = outlines
    return labels, table


def _empty(column: str) -> np.ndarray:
    if column == "nucleus_id":
        return np.zeros(0, np.int64)
    return np.zeros(0, str) if column in ("type", "untyped_reason", "type_model") else np.zeros(0, np.float64)


def _check_image(rgb, mpp, device, origin) -> np.ndarray:
    """The RGB channels of a uint8 (H, W, 3+) array, contiguous; ValueError naming the argument."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
        raise ValueError(f"rgb must be a uint8 (H, W, 3) array, got {a.dtype} {a.shape}")
    try:
        m = float(mpp)
    except (TypeError, ValueError):
        raise ValueError(f"mpp must be a number of microns per pixel, got {mpp!r}") from None
    if not (np.isfinite(m) and m > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    lo, hi = MPP_RANGE
    if not lo <= m <= hi:
        raise ValueError(f"mpp={m:g} µm/px is outside {lo:g}-{hi:g}: "
                         + ("too coarse for nuclei (a few pixels wide)" if m > hi else
                            "finer than any scanner; is it in µm per pixel?"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    o = tuple(origin) if isinstance(origin, (tuple, list, np.ndarray)) else ()
    if len(o) != 2 or not all(float(v).is_integer() and v >= 0 for v in o):
        raise ValueError(f"origin must be the level-0 (x, y) of the image's top-left pixel in its slide, two whole "
                         f"numbers of pixels >= 0, got {origin!r}")
    return np.ascontiguousarray(a[..., :3])


def _api_terms(message: str) -> str:
    """An error of the shared checks, with the command line's option names put as this API's arguments."""
    for flag, arg in (("--device", "device="), ("--mpp", "mpp="), ("--engine", "engine="), ("--model", "model="),
                      ("--no-types", "types=False"), ("--min-area-um2", "min_area_um2=")):
        message = message.replace(flag + " ", arg).replace(flag, arg.rstrip("="))
    return message


def slide_stain(path: str | Path, model: str | None = None, mpp: float | None = None) -> dict | None:
    """A slide's stain statistics as ``wsi-nuc run`` takes them (tissue, 24 patches at the model's scale):
    pass them as ``segment_image(..., stain=...)`` to segment regions of that slide exactly as ``run`` does.
    None for a model without stain normalisation or a slide without tissue."""
    from .model.io import read_model_config, resolve_model_dir
    from .slide import open_slide
    from .stainnorm import slide_stats
    from .tiling import Scale
    from .tissue import detect_tissue

    try:
        cfg = read_model_config(resolve_model_dir(model))
        if not cfg.get("stain_norm"):
            return None
        with open_slide(str(path), mpp) as reader:
            info = reader.info
            scale = Scale(float(info.mpp), float(cfg.get("mpp") or info.mpp))
            H, W = scale.work_shape(info.height, info.width)
            stats = slide_stats(reader, detect_tissue(reader), scale.f, H, W)
    except InputError as e:
        raise ValueError(_api_terms(str(e))) from None
    return stats.to_dict() if stats is not None else None


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
        ``min_area_um2``, ``roi``, ``roi_class``, ... An unknown name raises ``TypeError``.

    Returns
    -------
    The summary (the content of ``summary.json``) plus ``output``: the slide's output folder.

    Examples
    --------
    >>> import wsi_nuc
    >>> s = wsi_nuc.run_slide("CMU-1-Small-Region.svs", "out", quiet=True)    # doctest: +SKIP
    >>> s["nucleus_count"], s["output"]                                      # doctest: +SKIP
    (2439, 'out/CMU-1-Small-Region')
    """
    from dataclasses import fields

    from .pipeline import RunSettings, run_slide as _run

    known = {f.name for f in fields(RunSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return _run(path, out, RunSettings(**settings))
