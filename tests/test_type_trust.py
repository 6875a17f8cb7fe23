"""Types a user can trust (wsi_nuc.type_trust): calibration on real CoNSeP val nuclei, the tissue check on a
real skin crop and on CoNSeP, the user's threshold, and the untyped path through every writer."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from test_types_pipeline import consep, tiny_model  # noqa: F401 - fixtures
from wsi_nuc.cli import main
from wsi_nuc.type_trust import REASONS, TypeTrust, calibrate, decide

MODEL = "he-types-int8"
# every 4th CoNSeP val crop (20 of 80, all five val tiles)
VAL_EVERY = 4
# CMU-1-Small-Region, level-0 px: a stretch of epidermis (keratinocytes, checked by eye) and dermis beside it
EPIDERMIS = (1190, 790, 290, 450)     # x, y, w, h
DERMIS = (850, 1000, 210, 700)


@pytest.fixture(scope="module")
def predictor():
    from wsi_nuc.predict import get_predictor

    p = get_predictor(MODEL, "cpu")
    if "types_calibration" not in p.config:
        pytest.skip(f"{MODEL} has no types_calibration block")
    return p


@pytest.fixture(scope="module")
def val_nuclei(consep, predictor):
    """Raw per-nucleus data of a quarter of CoNSeP val, paired with the true nuclei."""
    from wsi_nuc.dataset import list_stems
    from wsi_nuc.train import calibrate_types as ct

    import wsi_nuc.dataset as ds

    stems = list_stems(consep, "val")[::VAL_EVERY]
    real = ds.list_stems
    try:   # collect() reads the stems through wsi_nuc.dataset.list_stems
        ds.list_stems = lambda root, split: stems if split == "val" else real(root, split)
        return ct.collect(consep, "val", predictor)
    finally:
        ds.list_stems = real


def test_fitted_temperature_lowers_nll_and_ece_on_consep_val_nuclei(val_nuclei):
    from wsi_nuc.train.calibrate_types import fit_temperature, nll, reliability

    d = val_nuclei
    m = d["true"] > 0
    q, t, true = d["q"][m], d["types"][m], d["true"][m]
    assert m.sum() > 300
    temp = fit_temperature(q, true)
    rows = np.arange(len(t))
    p0, p1 = calibrate(q, 1.0), calibrate(q, temp)
    assert nll(p1, true) < nll(p0, true)
    assert reliability(p1[rows, t - 1], t == true)["ece"] < reliability(p0[rows, t - 1], t == true)["ece"]


@pytest.mark.slow
def test_stored_temperature_lowers_nll_and_ece_on_all_consep_val(consep, predictor):
    """The shipped temperature, on every CoNSeP val crop (the set it was fitted on), about a minute."""
    from wsi_nuc.train.calibrate_types import collect, nll, reliability

    d = collect(consep, "val", predictor)
    m = d["true"] > 0
    q, t, true = d["q"][m], d["types"][m], d["true"][m]
    assert m.sum() > 300
    temp = predictor.config["types_calibration"]["temperature"]
    assert temp != 1.0
    rows = np.arange(len(t))
    p0, p1 = calibrate(q, 1.0), calibrate(q, temp)
    assert nll(p1, true) < nll(p0, true)
    assert reliability(p1[rows, t - 1], t == true)["ece"] < reliability(p0[rows, t - 1], t == true)["ece"]


def test_thresholds_reach_the_stated_precision_on_consep_val(val_nuclei, predictor):
    """Where the model gives a type by default, it is right at least about as often as the card says."""
    d = val_nuclei
    trust = TypeTrust.from_config(predictor.config)
    r = decide(d["types"], d["q"], None, trust)
    for k, name in enumerate(trust.types, start=1):
        kept = (r["type"] == k) & (d["true"] > 0)
        if kept.sum() >= 50:
            assert (d["true"][kept] == k).mean() >= 0.75, name


def test_tissue_check_keeps_most_consep_val_types(val_nuclei, predictor):
    d = val_nuclei
    trust = TypeTrust.from_config(predictor.config)
    r = decide(d["types"], d["q"], d["features"], trust)
    tissue = r["reason"] == 1 + REASONS.index("unfamiliar_tissue")
    assert tissue.mean() < 0.15
    assert (r["reason"] == 1 + REASONS.index("stain")).sum() == 0
    assert (r["type"] > 0).mean() > 0.6


def test_shape_prior_makes_consep_val_types_more_likely(val_nuclei, predictor):
    """The stored shape prior (wsi_nuc.type_prior) makes the true types of real CoNSeP val nuclei more
    likely, each way at its own temperature; at weight 0 it leaves the network's types as they are."""
    from wsi_nuc import type_prior
    from wsi_nuc.train.calibrate_types import fit_temperature, nll

    prior = predictor.config["types_calibration"].get("prior")
    assert prior and prior["weight"] > 0
    d, names = val_nuclei, TypeTrust.from_config(predictor.config).types
    m = d["true"] > 0
    true = d["true"][m]
    c0, q0 = type_prior.apply(d["types"][m], d["q"][m], d["features"][m], prior, names, weight=0.0)
    assert np.array_equal(c0, d["types"][m]) and np.array_equal(q0, d["q"][m])
    c1, q1 = type_prior.apply(d["types"][m], d["q"][m], d["features"][m], prior, names)
    assert nll(calibrate(q1, fit_temperature(q1, true)), true) < nll(calibrate(q0, fit_temperature(q0, true)), true)
    assert (c1 == true).mean() >= (c0 == true).mean()


def test_shape_prior_weight_is_chosen_by_what_shape_tells(val_nuclei, predictor):
    """Fitted on half the images of real nuclei and chosen on the other half, as calibrate_types does with
    train and val, the weight is positive; with the shapes shuffled between nuclei (shape then says nothing
    of the type) it is 0 or next to it."""
    from wsi_nuc import type_prior
    from wsi_nuc.train.calibrate_types import choose_prior_weight

    names = TypeTrust.from_config(predictor.config).types
    d = val_nuclei
    shuffled = {**d, "features": d["features"][np.random.default_rng(0).permutation(len(d["features"]))]}
    weights = []
    for data in (d, shuffled):
        fit_on = {k: v[data["image"] % 2 == 0] for k, v in data.items() if k != "stain"}
        chosen_on = {k: v[data["image"] % 2 == 1] for k, v in data.items() if k != "stain"}
        w, path = choose_prior_weight(chosen_on, type_prior.fit(fit_on["features"], fit_on["true"], names), names)
        weights.append((w, path))
    (w_real, path), (w_shuffled, _) = weights
    assert w_real > 0 and path[w_real] < path[0.0]
    assert w_shuffled <= 0.1


def test_shape_prior_takes_other_features(val_nuclei, predictor):
    """calibrate_types --prior-features: a prior fitted on other features of real nuclei stores them and
    reads them (changing a nucleus' density moves its probabilities), and the default stays shape only."""
    from wsi_nuc import type_prior
    from wsi_nuc.train.calibrate_types import fit
    from wsi_nuc.type_features import FEATURES

    names = TypeTrust.from_config(predictor.config).types
    d = {k: v for k, v in val_nuclei.items() if k != "stain"}
    use = ("log_area", "elongation", "density")
    prior = type_prior.fit(d["features"], d["true"], names, use)
    assert prior["features"] == list(use) and all(len(m) == 3 for m in prior["mean"].values())
    m = (d["true"] > 0) & np.isfinite(d["features"]).all(1)
    f = d["features"][m].copy()
    _, q1 = type_prior.apply(d["types"][m], d["q"][m], f, prior, names, weight=1.0)
    f[:, FEATURES.index("density")] += 10
    _, q2 = type_prior.apply(d["types"][m], d["q"][m], f, prior, names, weight=1.0)
    assert not np.allclose(q1, q2)
    assert fit.__defaults__[-1] is None and type_prior.PRIOR_FEATURES == ("log_area", "elongation")


def _cmu_crop(shared, region):
    from wsi_nuc.slide import open_slide, read_region

    x, y, w, h = region
    r = open_slide(str(shared / "slides" / "CMU-1-Small-Region.svs"))
    return read_region(r, x, y, w, h, w, h)


def _cmu_stain(shared):
    """The slide's stain statistics (its tissue pixels, all of the slide), as ``run`` normalises a tile
    with the slide's and not the tile's own."""
    from wsi_nuc.stainnorm import lab_stats

    return lab_stats(_cmu_crop(shared, (0, 0, 2220, 2967)))


@pytest.mark.parametrize("region, withheld", [(EPIDERMIS, True), (DERMIS, False)])
def test_tissue_check_on_real_skin(shared, predictor, region, withheld):
    """The epidermis, whose keratinocytes the model calls spindle-shaped, is caught in good part; the dermis
    beside it, typed sensibly, mostly is not."""
    from wsi_nuc.instances import InstanceParams
    from wsi_nuc.segment import segment_image_detail

    rgb = _cmu_crop(shared, region)
    params = InstanceParams.from_dict(predictor.config["postprocess"])
    _, d = segment_image_detail(rgb, predictor, params, 0.499, stain=_cmu_stain(shared))
    trust = TypeTrust.from_config(predictor.config)
    r = decide(d["types"], d["q"], d["features"], trust)
    spindle = d["types"] == 1 + trust.types.index("spindle-shaped")
    tissue = r["reason"] == 1 + REASONS.index("unfamiliar_tissue")
    assert spindle.sum() > 30
    if withheld:
        assert tissue[spindle].mean() > 0.3
    else:
        assert tissue[spindle].mean() < 0.2


def test_threshold_override_and_no_check():
    t = TypeTrust(("a", "b"), thresholds=(0.9, 0.9))
    q = np.array([[0.8, 0.2], [0.3, 0.7]])
    assert decide([1, 2], q, None, t)["type"].tolist() == [0, 0]
    cfg = {"types": ["a", "b"], "types_calibration": {"temperature": 1.0, "thresholds": {"a": 0.9, "b": 0.9}}}
    assert TypeTrust.from_config(cfg).thresholds == (0.9, 0.9)
    low = TypeTrust.from_config(cfg, threshold=0.5)
    assert low.thresholds == (0.5, 0.5) and low.threshold_source == "user"
    assert decide([1, 2], q, None, low)["type"].tolist() == [1, 2]
    off = TypeTrust.from_config(cfg, abstain=False)
    assert decide([1, 2], q, None, off)["type"].tolist() == [1, 2]
    with pytest.raises(ValueError):
        TypeTrust.from_config(cfg, threshold=1.5)
    assert TypeTrust.from_config({"name": "untyped"}) is None


def test_type_flags_reach_the_settings(captured_settings):
    got = captured_settings
    assert main(["run", "x.svs", "--quiet", "--type-threshold", "0.6"]) == 0
    assert main(["batch", "x.svs", "--quiet", "--no-type-check"]) == 0
    assert main(["run", "x.svs", "--quiet"]) == 0
    assert [(st.type_threshold, st.type_check) for st in got] == [(0.6, True), (None, False), (None, True)]
    with pytest.raises(SystemExit):
        main(["run", "x.svs", "--type-threshold", "2"])


# -- the untyped path through every writer, with the constant-type tiny model of test_types_pipeline --

def test_untyped_nuclei_in_every_output(tiny_model, consep, tmp_path):
    """Every nucleus of the tiny model is "epithelial" at P = 0.711: a threshold of 0.8 leaves all untyped
    (reason low_confidence, probabilities kept), 0.5 types all; both say so in every output."""
    from dataclasses import replace

    from test_types_pipeline import P_EPI, STEMS
    from wsi_nuc.pipeline import RunSettings, run_slide

    slide = tmp_path / "crop.png"
    shutil.copy(consep / "images" / f"{STEMS[0]}.png", slide)
    st = RunSettings(model=str(tiny_model), device="cpu", mpp=0.25, tissue_detection=False, quiet=True,
                     table="both")
    s = run_slide(slide, tmp_path / "hi", replace(st, type_threshold=0.8))
    n = s["nucleus_count"]
    assert n > 10
    ty = s["types"]
    assert ty["untyped"] == n and ty["typed_fraction"] == 0.0
    assert ty["untyped_reasons"]["low_confidence"] == n and ty["model_counts"]["epithelial"] == n
    assert ty["check"]["threshold_source"] == "user" and "CoNSeP" in ty["check"]["trained_on"]
    assert s["settings"]["type_threshold"] == 0.8
    out = tmp_path / "hi" / "crop"
    rows = list(csv.DictReader(open(out / "nuclei.csv")))
    assert len(rows) == n
    assert {r["type"] for r in rows} == {""} and {r["type_model"] for r in rows} == {"epithelial"}
    assert {r["untyped_reason"] for r in rows} == {"low_confidence"}
    assert all(abs(float(r["type_prob"]) - P_EPI) < 2e-3 for r in rows)
    assert all(abs(float(r["p_epithelial"]) - P_EPI) < 2e-3 for r in rows)
    import pyarrow.parquet as pq

    tab = pq.read_table(out / "nuclei.parquet").to_pydict()
    assert set(tab["type"]) == {""} and set(tab["untyped_reason"]) == {"low_confidence"}
    gj = json.loads((out / "nuclei.geojson").read_text())
    assert all(f["properties"].get("classification", {}).get("name", "Nucleus") == "Nucleus"
               for f in gj["features"])
    assert (out / "qc.png").stat().st_size > 0
    props = json.loads((out / "nuclei.ome.zarr" / "labels" / "nuclei" / ".zattrs").read_text())
    il = props["image-label"]
    assert all("type" not in p for p in il.get("properties", []))

    s2 = run_slide(slide, tmp_path / "lo", replace(st, type_threshold=0.5))
    assert s2["types"]["untyped"] == 0 and s2["types"]["typed_fraction"] == 1.0
    assert s2["types"]["counts"]["epithelial"] == s2["nucleus_count"]
    rows = list(csv.DictReader(open(tmp_path / "lo" / "crop" / "nuclei.csv")))
    assert {r["type"] for r in rows} == {"epithelial"} and {r["untyped_reason"] for r in rows} == {""}


def test_api_segment_image_takes_the_threshold(shared):
    import wsi_nuc

    rgb = _cmu_crop(shared, (1190, 790, 256, 256))
    _, none = wsi_nuc.segment_image(rgb, 0.499, MODEL, "cpu", type_threshold=1.0)
    _, every = wsi_nuc.segment_image(rgb, 0.499, MODEL, "cpu", type_check=False)
    assert len(none["type"]) == len(every["type"]) > 10
    assert set(none["type"].tolist()) == {""} and "" not in set(every["type"].tolist())
    assert set(none["untyped_reason"].tolist()) <= {"low_confidence", "unfamiliar_tissue", "stain"}
    assert np.allclose(none["p_spindle_shaped"], every["p_spindle_shaped"], equal_nan=True)


def test_type_threshold_checked_before_any_work():
    from wsi_nuc.errors import InputError
    from wsi_nuc.run_context import RunSettings
    from wsi_nuc.validate import validate_settings

    for bad in (1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(InputError, match="type-threshold"):
            validate_settings(RunSettings(type_threshold=bad))
    assert validate_settings(RunSettings(type_threshold=0.7))[0].type_threshold == 0.7
