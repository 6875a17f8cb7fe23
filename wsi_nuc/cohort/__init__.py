"""Many slides on one Dask cluster: cohort input, manifest, resume, failure isolation.

    run_cohort("cohort.csv", "out/", RunSettings())  ->  out/<slide stem>/...      (exactly `wsi-nuc run`)
                                                         out/cohort.csv             (manifest, one row a slide)
                                                         out/cohort_summary.csv     (per-slide morphometry)

A cohort is a CSV with a ``path`` column (every other column is carried into both outputs; relative paths
resolve against the CSV's folder; an optional ``mpp`` column overrides the resolution per slide), a folder
(its slide files, not recursive), a glob (``'slides/**/*.svs'``; ``**`` recurses) or one slide file.

Slides run concurrently on one shared ``distributed.Client``: a few slides at once (driver threads, each
calling :func:`wsi_nuc.pipeline.run_slide`, which streams its tiles with a bounded number of tasks in
flight), so driver memory is bounded by the slides in flight, not by the cohort. A slide that fails is
recorded with its reason and the others go on. The manifest is rewritten atomically as slides finish, so
an interrupted cohort resumes: finished slides (manifest says done *and* their output folder is
complete) are skipped, unfinished ones restart from their finished tiles (the pipeline's tile spool).

Modules: :mod:`.inputs` (reading the cohort), :mod:`.manifest` (the two tables), :mod:`.resume` (what is finished),
:mod:`.progress` (the progress line), :mod:`.run` (the run loop).
"""
from __future__ import annotations

from .inputs import SLIDE_EXTENSIONS, Cohort, CohortSlide, read_cohort
from .manifest import (DONE, FAILED, MANIFEST, MANIFEST_COLUMNS, MEASURES, PENDING, SKIPPED, STATS, SUMMARY,
                       SUMMARY_COLUMNS, TYPE_COLUMNS, CohortResult, Tables, read_rows, slide_morphometry)
from .progress import Progress
from ..run_context import RESULT_SETTINGS
from .resume import finished_summary
from .run import LOCK, cohort_lock, default_parallel_slides, run_cohort

__all__ = ["DONE", "FAILED", "LOCK", "MANIFEST", "MANIFEST_COLUMNS", "MEASURES", "PENDING", "RESULT_SETTINGS",
           "SKIPPED", "SLIDE_EXTENSIONS", "STATS", "SUMMARY", "SUMMARY_COLUMNS", "TYPE_COLUMNS", "Cohort", "CohortResult",
           "CohortSlide", "Progress", "Tables", "cohort_lock", "default_parallel_slides", "finished_summary",
           "read_cohort", "read_rows", "run_cohort", "slide_morphometry"]
