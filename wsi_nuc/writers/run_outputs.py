"""Every output of one slide run from the same surviving nuclei (so ids agree): GeoJSON, table(s), OME-Zarr,
qc.png, and the summary. What each nucleus becomes in each format: :mod:`wsi_nuc.writers.slide_outputs`.

:func:`write_outputs` is the recipe: one named step per output, then the summary; every step iterates the same
final nuclei (:class:`wsi_nuc.stitch.FinalNuclei`: size rule and region applied, ids given once).
"""
from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..run_context import SlidePlan, SlideRun
    from ..stitch import FinalNuclei


def write_outputs(tmp: Path, run: SlideRun, plan: SlidePlan, final: FinalNuclei) -> dict:
    """Write the outputs of the final nuclei (:func:`wsi_nuc.stitch.stitch`: size rule and region applied,
    ids given) into ``tmp``; return the summary (without the total time and ownership marker).

    The vector outputs (GeoJSON, tables) are written in a second thread and qc.png in a third while this one
    writes OME-Zarr: they read the same final nuclei and write different files, and the raster side spends
    much of its time in compression and numpy, outside the GIL (the 1.2-gigapixel mosaic: about 90 s of
    writing instead of 170, peak memory within 2 GiB; see docs/performance.md)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import slide_outputs as so

    from ..slide import read_thumbnail

    trust = decide_types(run, plan, final)
    typed = so.has_types(final)
    vector, raster, qc = [], [], []
    with ThreadPoolExecutor(2, thread_name_prefix="wsi-nuc-writer") as pool:
        written = pool.submit(_write_vector, tmp, run, plan, final, typed, vector)
        with run.timer("write_zarr"):
            thumb = read_thumbnail(run.reader, 2048)   # OME-Zarr's and qc.png's
        # qc.png beside OME-Zarr, unless OME-Zarr reads the slide too (--zarr-image): one reader, one thread
        drawn = None if run.settings.zarr_image else pool.submit(_write_qc, tmp, run, plan, final, typed, thumb, qc)
        zinfo = _write_zarr(tmp, run, plan, final, typed, len(final), raster, thumb)
        tissue_mm2, roi_info = _tissue_area(run, plan, len(final))
        if drawn is None:
            _write_qc(tmp, run, plan, final, typed, thumb, qc)
        else:
            drawn.result()
        n = written.result()
    raster += qc
    if n != len(final):
        raise RuntimeError(f"GeoJSON holds {n} nuclei, the final set {len(final)}")
    summary = build_summary(run, plan, n, tissue_mm2, zinfo, vector + raster, cut=final.cut)
    if roi_info is not None:
        summary["roi"] = roi_info
    if typed:
        summary["types"] = so.type_summary(so.type_counts(final), tissue_mm2, so.untyped_counts(final), trust)
    return summary


def decide_types(run: SlideRun, plan: SlidePlan, final: FinalNuclei) -> dict | None:
    """Withhold the types the model is not entitled to (:mod:`wsi_nuc.type_trust`), in the final nuclei's
    columns, before any writer reads them; what was checked (for summary.json), None without types."""
    from ..type_trust import decide_final

    st = run.settings
    if not st.types:
        return None
    return decide_final(final, run.mcfg, plan.stain, getattr(st, "type_threshold", None),
                        getattr(st, "type_check", True))


def _write_vector(tmp, run, plan, final, typed, outputs) -> int:
    """GeoJSON and the table(s); returns the nuclei written."""
    n = _write_geojson(tmp, run, plan, final, typed, outputs)
    _write_tables(tmp, run, final, typed, outputs)
    return n


def _stem(run: SlideRun) -> str:
    from ..errors import as_text
    from ..ownership import slide_stem

    return as_text(slide_stem(run.info.path))     # written into UTF-8 files: a non-UTF-8 name as U+FFFD


def _write_geojson(tmp, run, plan, final, typed, outputs) -> int:
    from . import slide_outputs as so
    from .geojson import coordinate_decimals, write_geojson

    st, f = run.settings, plan.geom.f
    with run.timer("write_geojson"):
        name = "nuclei.geojson.gz" if st.geojson_gz else "nuclei.geojson"
        dec = coordinate_decimals(f) if st.simplify > 0 else 2
        n = write_geojson(tmp / name, so.geojson_features(final, st.simplify * f, typed, dec),
                          clean=False, compact=True)  # cleaned per tile, rounded by simplify_rings
        outputs.append(name)
    return n


def _write_tables(tmp, run, final, typed, outputs) -> None:
    from . import slide_outputs as so
    from .table import write_csv, write_parquet

    cols, stem, table = so.table_columns(typed), _stem(run), run.settings.table
    if table in ("csv", "both"):
        with run.timer("write_csv"):
            write_csv(tmp / "nuclei.csv", cols, so.table_chunks(final, stem, typed))
            outputs.append("nuclei.csv")
    if table in ("parquet", "both"):
        with run.timer("write_parquet"):
            write_parquet(tmp / "nuclei.parquet", cols, so.table_chunks(final, stem, typed))
            outputs.append("nuclei.parquet")


def _write_zarr(tmp, run, plan, final, typed, n, outputs, thumb):
    """nuclei.ome.zarr (``thumb``: the slide's (rgb, scale) thumbnail, for its image); returns its summary entry."""
    from . import slide_outputs as so
    from .final_index import FinalIndex
    from .ome_zarr import PROPERTIES_MAX, write_ome_zarr

    geom, grid, own_image = plan.geom, plan.grid, run.settings.zarr_image
    with run.timer("write_zarr"):
        index = FinalIndex(final, geom.f)
        small = n <= PROPERTIES_MAX
        zinfo = write_ome_zarr(tmp / "nuclei.ome.zarr", (grid.height, grid.width), index, geom.f,
                               geom.level0_mpp, thumbnail=None if own_image else thumb,
                               image_reader=run.reader if own_image else None,
                               properties=so.zarr_properties(final, typed) if small else None,
                               colors=so.zarr_colors(final) if typed and small else None,
                               slide_name=_stem(run))
        zinfo["properties"] = small
        outputs.append("nuclei.ome.zarr")
    return zinfo


def _tissue_area(run, plan, n) -> tuple[float, dict | None]:
    """Analysed tissue (mm²): all of it, or with a region the tissue inside it (and the region's summary)."""
    tissue, roi, mpp = plan.tissue, plan.roi, run.info.mpp
    tissue_mm2 = float(tissue.area_mm2(mpp))
    if roi is None:
        return tissue_mm2, None
    px_mm2 = (tissue.scale * float(mpp) / 1000.0) ** 2
    tissue_mm2 = float(np.count_nonzero(tissue.mask & roi.fraction_of(tissue.mask, tissue.scale))) * px_mm2
    roi_mm2 = roi.area_mm2(mpp)
    return tissue_mm2, {"path": roi.path, "kind": "polygons" if roi.geometry is not None else "mask",
                        "area_mm2": round(roi_mm2, 4), "tissue_area_mm2": round(tissue_mm2, 4),
                        "nucleus_count": n, "nuclei_per_mm2": round(n / roi_mm2, 2) if roi_mm2 > 0 else None,
                        **({"roi_class": roi.roi_class} if getattr(roi, "roi_class", None) else {}),
                        **(getattr(roi, "parts", None) or {})}


def _write_qc(tmp, run, plan, final, typed, thumb, outputs) -> None:
    from ..licence import qc_footer
    from ..version import build_version

    mcfg = run.mcfg
    with run.timer("write_qc"):
        write_qc(tmp / "qc.png", run.reader, plan.tissue, final, run.info.mpp,
                 title=f"{_stem(run)}  |  model {mcfg.get('name', run.model_dir.name)} v{mcfg.get('version', '?')}"
                       f"  |  wsi-nuc {build_version()}",
                 typed=typed, thumb=thumb, f=plan.geom.f, min_area_um2=run.settings.min_area_um2,
                 roi=plan.roi, footer=qc_footer(mcfg) + (f"\n{types_note(mcfg)}" if typed else ""))
        outputs.append("qc.png")


def types_note(mcfg: dict) -> str:
    """qc.png's line on what the types are worth (the model card has the figures)."""
    from ..type_trust import CONFIG_KEY, TRAINED_ON

    block = mcfg.get(CONFIG_KEY) or {}
    checked = f"types checked on {block['checked_on']}" if block.get("checked_on") else \
        "types not checked on other tissue"
    return (f"types learned on {block.get('trained_on', TRAINED_ON)}; untyped where not confident or the "
            f"tissue is unfamiliar (see the model card)\n{checked}")


def build_summary(run: SlideRun, plan: SlidePlan, n: int, tissue_mm2: float, zinfo: dict, outputs: list,
                  cut: int = 0) -> dict:
    """summary.json's common part: slide, scale, tiles, tissue, counts, zarr, timings, model, software, settings.

    ``nuclei_cut_by_halo`` (``cut``): nuclei that the tile owning them saw cut by its read window, so larger
    than the halo allows; that tile dropped them (a neighbour may still have kept them whole). Non-zero:
    a larger ``--halo`` keeps them."""
    from ..licence import licence_record
    from ..version import software_record

    info, geom, grid, st, mcfg = run.info, plan.geom, plan.grid, run.settings, run.mcfg
    return {
        "slide": {**info.to_dict(), "path": str(info.path)},
        "working_mpp": geom.work_mpp,
        "level0_per_working_px": geom.f,
        "tiles": {"core_px": grid.tile, "halo_px": grid.halo, "count": len(grid)},
        "tissue_area_mm2": round(tissue_mm2, 4),
        "tissue_detection": st.tissue_detection,
        "nucleus_count": n,
        "nuclei_cut_by_halo": int(cut),
        "nuclei_per_mm2": round(n / tissue_mm2, 2) if tissue_mm2 > 0 else None,
        "min_area_um2": st.min_area_um2,
        "ome_zarr": {**zinfo, "resolution": "working", "scale_um": geom.work_mpp,
                     "level0_px_per_label_px": geom.f},
        "seconds": dict(run.timer.stages),
        "model": {"name": mcfg.get("name", run.model_dir.name), "version": mcfg.get("version"),
                  "path": str(run.model_dir), "licence": licence_record(mcfg)},
        "software": {**software_record(), "python": platform.python_version(), **_versions()},
        "settings": {k: v for k, v in asdict(st).items() if k not in ("quiet", "dashboard", "wait", "overwrite")},
        "outputs": outputs + ["summary.json"],
    }


def _versions() -> dict:
    """Installed versions of the packages a result depends on (from package metadata: nothing is
    imported, so the driver never loads torch just to name its version)."""
    from importlib.metadata import version, PackageNotFoundError

    out = {}
    for pkg in ("torch", "openslide-python", "openslide-bin", "tiffslide", "dask", "distributed", "zarr",
                "scikit-image", "shapely", "kornia", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_qc(path: Path, reader, tissue, final, level0_mpp: float, title: str | None = None,
             typed: bool = False, thumb=None, f: float = 1.0, min_area_um2: float | None = None, roi=None,
             footer: str | None = None) -> None:
    """qc.png from the surviving nuclei: zoom windows picked by ``writers.qc_data.pick_zooms``; ``roi`` (a
    :class:`wsi_nuc.roi.Roi`) outlined on the thumbnails; ``footer`` the licence line."""
    from ..slide import read_thumbnail
    from .qc import write_qc_png
    from .qc_data import qc_inputs

    thumb, scale = thumb if thumb is not None else read_thumbnail(reader, 1024)
    kw = qc_inputs(reader, final, level0_mpp, f, typed)
    region = None
    if roi is not None:            # the region on a grid of at most 512 px a side (the panels' size)
        k = max(1, -(-max(thumb.shape[:2]) // 512))
        region = roi.fraction_of(np.zeros((-(-thumb.shape[0] // k), -(-thumb.shape[1] // k)), bool), scale * k)
    write_qc_png(path, thumb, scale, tissue.mask, level0_mpp=level0_mpp, title=title,
                 min_area_um2=min_area_um2, region_mask=region, footer=footer, **kw)
