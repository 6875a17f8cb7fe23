"""The examples in the docstrings run and give what they show: the output modules, and the public functions of
the data flow (tiling, stitching, run settings, rasterising)."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["wsi_nuc.tiling", "wsi_nuc.stitch", "wsi_nuc.run_context", "wsi_nuc.writers.rasterise",
           "wsi_nuc.model.inputs", "wsi_nuc.ownership", "wsi_nuc.instances", "wsi_nuc.api",
           "wsi_nuc.types", "wsi_nuc.progress", "wsi_nuc.roi", "wsi_nuc.writers.measures",
           "wsi_nuc.writers.geojson", "wsi_nuc.writers.ome_zarr", "wsi_nuc.writers.table",
           "wsi_nuc.writers.qc", "wsi_nuc.writers.qc_data", "wsi_nuc.writers.slide_outputs",
           "wsi_nuc.cohort.manifest", "wsi_nuc.predict", "wsi_nuc.json_in", "wsi_nuc.slide.mpp",
           "wsi_nuc.dataset_checks", "wsi_nuc.errors", "wsi_nuc.cohort.inputs"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            pytest.skip(f"{name} not present")
        raise
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted > 0
