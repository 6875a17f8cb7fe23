"""What one slide run knows: its settings (:class:`RunSettings`), its checked inputs (:class:`SlideRun`), its
tiling plan (:class:`SlidePlan`) and its stage clock (:class:`Timer`). The pipeline's steps and the output
writers take these instead of long parameter lists."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunSettings:
    """Everything a slide run depends on (CLI flags map 1:1 onto these)."""

    model: str | None = None
    device: str = "auto"
    tile: int = 512                 # core edge, working px
    halo: int = 64                  # context on each side, working px (> largest nucleus radius)
    mpp: float | None = None        # override of the slide's level-0 mpp
    tissue_detection: bool = True
    workers: int | None = None
    scheduler: str | None = None
    batch: int | None = None        # tiles per forward pass; None: 1 on CPU (fastest there), 8 on CUDA
    tiles_per_task: int = 4
    margin: int = 8                 # ownership slack, px; duplicates in it are resolved by the stitcher
    quiet: bool = False
    geojson_gz: bool = False        # nuclei.geojson.gz instead of nuclei.geojson
    simplify: float = 0.5           # GeoJSON outline tolerance, working px (0: as traced)
    table: str = "csv"              # "csv" | "parquet" | "both"
    zarr_image: bool = False        # the slide itself as the OME-Zarr parent image (else a thumbnail)
    min_area_um2: float = 3.0       # smaller nuclei are dropped from every output
    dashboard: bool = False         # print the Dask dashboard link
    roi: str | None = None          # region of interest: QuPath GeoJSON or mask image (wsi_nuc/roi.py)
    roi_class: str | None = None    # only the ROI GeoJSON's annotations of this class (--roi-class)
    types: bool = True              # per-nucleus type and type_prob when the model has a type head (--no-types)
    wait: bool = False              # output locked by another run: wait for it (else InputError at once)
    overwrite: bool = False         # replace wsi-nuc results of another slide with the same name
    tta: int = 1                    # test-time augmentation: maps averaged over 1, 4 or 8 flips/rotations
    engine: str = "auto"            # what runs the network: auto | torch-int8 | torch-fp32 | onnx-int8 | onnx-fp32
    type_threshold: float | None = None  # one confidence threshold for every type (default: the model's, per type)
    type_check: bool = True         # withhold types the model is not entitled to (wsi_nuc.type_trust); False: keep all


# "The same run": every RunSettings field that changes a result, with the first stage whose results it
# changes. "tiles": the nuclei of a tile (the tile spool's key, :func:`wsi_nuc.spool.spool_key`); "outputs":
# the files on top (a cohort's resume redoes a slide made otherwise, :mod:`wsi_nuc.cohort.resume`). Both
# also compare the resolved model folder. The other fields (model as named, device, workers, scheduler,
# batch, tiles_per_task, quiet, dashboard, wait, overwrite) change how a run goes, not what it makes.
RESULT_SETTINGS = {"tile": "tiles", "halo": "tiles", "margin": "tiles", "mpp": "tiles", "types": "tiles", "tta": "tiles",
                   "tissue_detection": "outputs", "roi": "outputs", "roi_class": "outputs", "min_area_um2": "outputs",
                   "geojson_gz": "outputs", "simplify": "outputs", "table": "outputs", "zarr_image": "outputs",
                   "type_threshold": "outputs", "type_check": "outputs"}


def result_settings(settings: "RunSettings", stage: str = "outputs") -> dict:
    """{field: value} of the settings that make two runs the same run up to ``stage`` ("tiles" or "outputs").

    >>> result_settings(RunSettings(), "tiles")
    {'tile': 512, 'halo': 64, 'margin': 8, 'mpp': None, 'types': True, 'tta': 1}
    """
    if stage not in ("tiles", "outputs"):
        raise ValueError(f"stage must be 'tiles' or 'outputs', got {stage!r}")
    stages = ("tiles",) if stage == "tiles" else ("tiles", "outputs")
    return {k: getattr(settings, k) for k, s in RESULT_SETTINGS.items() if s in stages}


def changed_settings(old: dict, settings: "RunSettings") -> list[str]:
    """The result settings (stage "outputs") in which ``settings`` differ from ``old`` (a summary.json's
    ``settings``); a field ``old`` lacks was not an option yet, so that run had its default.

    >>> changed_settings({"tile": 512, "halo": 32, "mpp": 0.25}, RunSettings(mpp=0.25 + 1e-12, types=False))
    ['halo', 'types']
    """
    import math

    defaults = RunSettings()
    out = []
    for k, new in result_settings(settings).items():
        was = old.get(k, getattr(defaults, k))
        if isinstance(was, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
            same = math.isclose(was, new, rel_tol=1e-9)
        else:
            same = was == new or (k == "roi" and not was and not new)
        if not same:
            out.append(k)
    return out


@dataclass
class Timer:
    stages: dict = field(default_factory=dict)
    on_stage: object = None         # callable(stage name), e.g. a SlideProgress's stage()

    def __call__(self, name):
        timer = self

        class _T:
            def __enter__(self):
                if timer.on_stage is not None:
                    timer.on_stage(name)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[name] = round(timer.stages.get(name, 0) + time.perf_counter() - self.t0, 3)

        return _T()


@dataclass(frozen=True)
class SlideRun:
    """One slide run after its input checks: the open slide, the model and where the outputs go."""

    path: Path                  # the slide, as given
    out: Path                   # the output folder (OUT)
    final: Path                 # OUT/<stem>: where the outputs are moved at the end
    identity: dict              # the slide's size and first-MiB hash (ownership marker)
    settings: RunSettings       # validated, tile and halo on the model's grid
    reader: object              # the open SlideReader
    model_dir: Path
    mcfg: dict                  # the model's config.json
    timer: Timer
    t_start: float              # perf_counter() at the start, for the total time
    roi: object = None          # roi.Roi, with --roi (read with the other inputs)

    @property
    def info(self):
        return self.reader.info


@dataclass(frozen=True)
class SlidePlan:
    """Where and how the slide is segmented: tissue, region, tile grid, scale, stain statistics, task settings."""

    tissue: object              # tissue.TissueMask
    grid: object                # tiling.Grid, in working pixels
    geom: object                # graph.Geometry: level-0 <-> working scale
    roi: object = None          # roi.Region, with --roi
    stain: dict | None = None   # the slide's stain statistics (models with stain normalisation)
    task: object = None         # graph.TaskSettings: what each tile task needs
