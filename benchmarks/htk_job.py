"""HistomicsTK 1.4's classical nucleus pipeline on a whole slide region in memory, one process, one thread.

    /work/htk-venv/bin/python benchmarks/htk_job.py SLIDE --json OUT.json [--anot OUT.anot]

Run by ``bench_histomicstk.py`` with HistomicsTK's own venv (it imports nothing of wsi-nuc). It does what
HistomicsTK's NucleiDetection CLI (``histomicstk/cli/NucleiDetection/NucleiDetection.py``) does for one tile,
with the CLI's own defaults (parsed from its ``NucleiDetection.xml`` by its own ``CLIArgumentParser``), except
that the tile is the WHOLE slide at the analysis magnification (20x = level 0 for CMU-1-Small-Region, so
2220 x 2967 px) instead of 1024-px tiles with an 84-px overlap run by Dask:

1. ``read``: ``large_image.getTileSource`` (openslide source) and one ``tileIterator`` tile covering the
   whole image at ``analysis_mag``, pixels decoded into memory (RGBA uint8).
2. ``reinhard_stats``: source Lab mean / std by ``reinhard_stats_rgb`` over every pixel of the region. This is
   the CLI's in-memory branch (taken when the image has no magnification); for a WSI the CLI instead samples
   1 % of the tissue pixels (``reinhard_stats``: random, via Dask and a low-res tissue mask). The region
   branch is deterministic and needs no Dask.
3. ``detect_tile_nuclei`` (``histomicstk/segmentation/nuclear/detect_tile_nuclei.py``), HistomicsTK's own
   function, called once on that tile. Its steps, each timed by a thin wrapper around the module attribute
   it calls (no copy of HistomicsTK's code here):
   - ``reinhard``: Reinhard normalisation to the CLI's default target (mu_lab 8.63234435, -0.11501964,
     0.03868433; std_lab 0.57506023, 0.10403329, 0.01364062),
   - ``deconvolution``: colour deconvolution, stain matrix hematoxylin / eosin / null
     (``stain_color_map``; channel 0 = nuclear stain); then ``stain < foreground_threshold`` (60, untimed,
     inside ``detect_tile_nuclei``),
   - ``kofahi``: ``detect_nuclei_kofahi`` (min_radius 6, max_radius 20, min_nucleus_area 80,
     local_max_search_radius 10): mask closing / opening (disk 3) and hole filling (``kofahi_morph``, the
     remainder), ``cdog`` (multiscale DoG, sigma 6/sqrt2 .. 20/sqrt2), ``max_clustering``, ``split``
     (conn 8), ``area_open``,
   - ``outlines``: ``create_tile_nuclei_annotations`` with the default format ``boundary``: every nucleus's
     traced boundary (``trace_object_boundaries``) as a polyline annotation element in base pixels.
   ``ignore_border_nuclei`` is False by default and the tile has no overlap, so no border deletion runs.
4. ``remove_overlap``: ``remove_overlap_nuclei`` (the CLI default ``remove_overlapping_nuclei_segmentation``
   True; shapely STRtree over the polygons; with one tile it drops nothing or almost nothing).
5. ``write``: the annotation JSON file as the CLI writes it (``json.dump``, compact separators).

Not run (the CLI runs them for a WSI with tiles): the low-res foreground mask (``simple_mask``) and the tile
foreground fractions, which only decide which tiles to skip, and the Dask client. ``imports`` is the time to
import HistomicsTK and large_image. OMP / OpenBLAS / MKL / NUMBA thread counts are set to 1 before any import.
Seconds per step, the step sum, the process's CPU seconds (``RUSAGE_SELF``) and the nucleus counts (after
Kofahi, after overlap removal) go to ``--json``.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402

T0 = time.perf_counter()
SECONDS: dict[str, float] = {}


def timed(module, name: str, key: str) -> None:
    """Replace ``module.name`` by a wrapper adding its wall seconds to SECONDS[key]."""
    fn = getattr(module, name)

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            SECONDS[key] = SECONDS.get(key, 0.0) + time.perf_counter() - t
    setattr(module, name, wrapper)


def step(key: str, fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    SECONDS[key] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("--json", required=True, help="write the timings here")
    ap.add_argument("--anot", default=os.devnull, help="annotation file (default: written to /dev/null)")
    a = ap.parse_args()

    t = time.perf_counter()
    import large_image
    import numpy as np

    import histomicstk
    import histomicstk.filters.shape as htk_shape
    import histomicstk.preprocessing.color_deconvolution as htk_cdeconv
    import histomicstk.preprocessing.color_normalization as htk_cnorm
    import histomicstk.segmentation.label as htk_label
    import histomicstk.segmentation.nuclear as htk_nuclear
    from histomicstk.cli import utils as cli_utils
    SECONDS["imports"] = time.perf_counter() - t

    # the CLI's defaults, from its own XML, parsed as the CLI parses them
    xml = os.path.join(os.path.dirname(histomicstk.__file__), "cli", "NucleiDetection", "NucleiDetection.xml")
    args = cli_utils.CLIArgumentParser(xml).parse_args([a.slide, a.anot])
    args.style = None if not args.style or args.style.startswith("{#control") else args.style
    args.frame = None if not args.frame or args.frame.startswith("{#control") else args.frame

    for mod, name, key in [(htk_cnorm, "reinhard", "reinhard"),
                           (htk_cdeconv, "color_deconvolution", "deconvolution"),
                           (htk_nuclear, "detect_nuclei_kofahi", "kofahi"),
                           (htk_shape, "cdog", "kofahi_cdog"),
                           (htk_nuclear, "max_clustering", "kofahi_max_clustering"),
                           (htk_label, "split", "kofahi_split"),
                           (htk_label, "area_open", "kofahi_area_open"),
                           (cli_utils, "create_tile_nuclei_annotations", "outlines")]:
        timed(mod, name, key)

    def read():
        ts = large_image.getTileSource(args.inputImageFile, style=args.style)
        it = {"tile_size": {"width": ts.sizeX, "height": ts.sizeY}, "scale": {"magnification": args.analysis_mag},
              "tile_overlap": {"x": 0, "y": 0}, "format": large_image.tilesource.TILE_FORMAT_NUMPY}
        tile = next(iter(ts.tileIterator(**it)))
        tile["tile"]  # decode now (large_image's tile dicts load lazily)
        return ts, tile

    ts, tile = step("read", read)
    mu, sigma = step("reinhard_stats", htk_cnorm.reinhard_stats_rgb, np.asarray(tile["tile"])[:, :, :3])
    nuclei = step("detect_tile_nuclei", htk_nuclear.detect_tile_nuclei, tile, args, mu, sigma)
    n_kofahi = len(nuclei)
    if args.remove_overlapping_nuclei_segmentation:
        nuclei = step("remove_overlap", htk_label.remove_overlap_nuclei, nuclei, args.nuclei_annotation_format)

    def write():
        annotation = {"name": "nuclei-" + args.nuclei_annotation_format, "elements": nuclei,
                      "attributes": {"src_mu_lab": mu.tolist(), "src_sigma_lab": sigma.tolist(),
                                     "params": vars(args), "cli": "NucleiDetection",
                                     "version": histomicstk.__version__}}
        with open(args.outputNucleiAnnotationFile, "w") as f:
            json.dump(annotation, f, separators=(",", ":"), sort_keys=False)

    step("write", write)
    k = SECONDS
    k["kofahi_morph"] = k["kofahi"] - sum(k.get(s, 0.0) for s in
                                          ("kofahi_cdog", "kofahi_max_clustering", "kofahi_split", "kofahi_area_open"))
    k["detect_other"] = k["detect_tile_nuclei"] - sum(k.get(s, 0.0) for s in
                                                      ("reinhard", "deconvolution", "kofahi", "outlines"))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    pkgs = ["histomicstk", "large-image", "large-image-source-openslide", "openslide-python", "openslide-bin",
            "numpy", "scipy", "scikit-image", "shapely"]
    out = {"seconds": {s: round(v, 4) for s, v in k.items()},
           "in_process_wall": round(time.perf_counter() - T0, 4),
           "cpu": round(ru.ru_utime + ru.ru_stime, 4), "max_rss_mib": round(ru.ru_maxrss / 1024, 1),
           "nuclei_kofahi": n_kofahi, "nuclei": len(nuclei),
           "image": {"width": int(tile["width"]), "height": int(tile["height"]),
                     "magnification": tile["magnification"], "mm_x": tile["mm_x"], "source": ts.name},
           "params": {p: getattr(args, p) for p in (
               "reference_mu_lab", "reference_std_lab", "stain_1", "stain_2", "stain_3", "foreground_threshold",
               "min_radius", "max_radius", "local_max_search_radius", "min_nucleus_area", "ignore_border_nuclei",
               "remove_overlapping_nuclei_segmentation", "nuclei_annotation_format", "analysis_mag")},
           "src_mu_lab": mu.tolist(), "src_sigma_lab": sigma.tolist(),
           "versions": {p: version(p) for p in pkgs}, "python": sys.version.split()[0],
           "threads_env": {v: os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                      "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
