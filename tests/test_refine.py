"""Calibration (LTS, ECE) and ambiguous-pixel morphological refinement, on real MoNuSeg images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsi_nuc.model.io import save_model
from wsi_nuc.model.net import NetConfig, UNet
from wsi_nuc.refine import (
    RefineParams,
    ambiguous_mask,
    calibrated_fg,
    disk,
    load_lts,
    nucleus_confidence,
    refine_fg,
    refine_maps,
    uncertainty,
)
from wsi_nuc.train.calibrate import expected_calibration_error, fit_lts, network_logits, save_lts

VAL = ("TCGA-21-5784-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1")


def real_pairs(shared: Path, stems=VAL, size: int = 160):
    from wsi_nuc.dataset import load_at_mpp, read_index

    root = shared / "data" / "monuseg2018-train"
    if not (root / "dataset.json").is_file():
        pytest.skip(f"dataset not found: {root}")
    meta = read_index(root)
    out = []
    for stem in stems:
        s = load_at_mpp(root, stem, 0.5, meta)
        out.append((s.image[:size, :size], s.labels[:size, :size]))
    return out


class OverConfident(nn.Module):
    """A fg 'network' that calls dark pixels nucleus with far too much confidence (logit scale 40)."""

    stride = 1

    def forward(self, x):
        darkness = -x.mean(dim=1, keepdim=True)          # normalised: nuclei are dark
        logit = 40.0 * (darkness - 0.2)
        return torch.cat([logit] + [torch.zeros_like(logit)] * 5, dim=1)


def test_ece_basics():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = rng.uniform(size=20000) < p                      # perfectly calibrated
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.where(p > 0.5, 1.0, 0.0), y) > 0.2   # hard 0/1: over-confident


def test_lts_lowers_ece_of_overconfident_predictor(shared):
    torch.set_num_threads(1)
    pairs = real_pairs(shared)
    torch.manual_seed(0)
    head = fit_lts(OverConfident(), pairs, steps=20)
    st = head.stats
    assert st["ece_before"] > 0.05
    assert st["ece_after"] < 0.5 * st["ece_before"]
    assert st["nll_after"] < st["nll_before"]
    assert st["temperature_mean"] > 2.0                   # it learned to soften the logits
    # uncertainty is 0 at p in {0, 1} and 1 at p = 0.5
    assert torch.allclose(uncertainty(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 1.0, 0.0]))


def test_lts_saved_in_model_folder_round_trips(shared, tmp_path):
    torch.set_num_threads(1)
    pairs = real_pairs(shared, VAL[:1], 96)
    save_model(UNet(NetConfig(base=4, depth=2, max_channels=8)), tmp_path / "m", {"name": "m", "mpp": 0.5})
    head = fit_lts(OverConfident(), pairs, use_rgb=True, steps=5)
    save_lts(head, tmp_path / "m", {"split": "val"})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["calibration"]["method"] == "lts" and cfg["calibration"]["use_rgb"] is True
    assert "ece_before" in cfg["calibration"] and "ece_after" in cfg["calibration"]
    assert (tmp_path / "m" / "lts.safetensors").is_file()
    again = load_lts(tmp_path / "m")
    logit, x = network_logits(OverConfident(), pairs[0][0])
    with torch.no_grad():
        assert torch.equal(calibrated_fg(logit, head, x), calibrated_fg(logit, again, x))
    assert load_lts(tmp_path / "nothing", {"name": "x"}) is None
    assert torch.equal(calibrated_fg(logit, None), torch.sigmoid(logit))


def test_nucleus_confidence():
    lab = np.array([[1, 1, 0], [2, 0, 0]])
    p = np.array([[0.9, 0.7, 0.1], [0.6, 0.2, 0.0]])
    assert nucleus_confidence(lab, p) == pytest.approx([0.0, 0.8, 0.6])


def test_radius_tied_to_mpp():
    p = RefineParams()
    assert p.radius_px(0.5) == 2 and p.radius_px(0.25) == 4 and p.radius_px(2.0) == 1
    assert int(disk(2).sum()) == 13 and disk(2).shape == (5, 5)


def test_refine_changes_only_ambiguous_pixels(shared):
    _, lab = real_pairs(shared, VAL[:1], 128)[0]
    from wsi_nuc.train.targets import make_targets

    t = make_targets(lab)
    g = torch.Generator().manual_seed(0)
    # a noisy fg probability map with spurs, and the true boundary as the predicted boundary
    fg = torch.from_numpy(t["fg"])[None].clone()
    fg = (0.7 * fg + 0.3 * torch.rand(fg.shape, generator=g)).clamp(0, 1)
    spur = torch.zeros_like(fg)
    spur[:, ::7, :] = 0.6
    fg = torch.maximum(fg, spur)
    bd = torch.from_numpy(t["boundary"])[None]
    unc = uncertainty(fg)
    params = RefineParams(enabled=True, u_thr=0.5, near_px=2)
    out, amb = refine_fg(fg, unc, bd, 0.5, params, return_mask=True)
    assert torch.equal(amb, ambiguous_mask(unc, bd, params))
    changed = out != fg
    assert bool(changed.any()), "refinement should change some ambiguous pixels"
    assert not bool((changed & ~amb).any()), "a pixel outside the ambiguous set changed"
    # ambiguity needs both conditions
    assert not bool((amb & (unc <= 0.5)).any())
    far = ambiguous_mask(unc, torch.zeros_like(bd), params)
    assert not bool(far.any())
    # numpy maps in, numpy maps out; only channel 0 changes
    maps = np.concatenate([fg.numpy(), bd.numpy(), np.zeros((4, *fg.shape[1:]), np.float32)])
    rm = refine_maps(maps, 0.5, params)
    assert isinstance(rm, np.ndarray) and np.array_equal(rm[1:], maps[1:])
    assert np.array_equal(rm[0], out[0].numpy())


def test_lts_weighs_each_source_the_same(shared):
    """With ``groups``, a source's weight does not grow with its pixel count: repeating one source's images
    fits the same head; without groups it does not."""
    torch.set_num_threads(1)
    a, b = real_pairs(shared, VAL[:1], 96), real_pairs(shared, VAL[1:], 96)
    b = [(255 - (255 - rgb) // 2, lab) for rgb, lab in b]            # a paler source: other temperatures
    logit, _ = network_logits(OverConfident(), b[0][0])

    def fit(pairs, groups):          # the fitted temperature map on one image
        with torch.no_grad():
            return fit_lts(OverConfident(), pairs, steps=8, groups=groups).temperature(logit, None)

    once = fit(a + b, ["a", "b"])
    assert torch.allclose(fit(a * 3 + b, ["a"] * 3 + ["b"]), once, rtol=1e-3)
    assert not torch.allclose(fit(a * 3 + b, None), once, rtol=1e-3)


def test_dataset_spec(shared, tmp_path):
    from wsi_nuc.train.calibrate import dataset_spec

    dsb = shared / "data" / "dsb2018-stage1-train"
    assert dataset_spec(f"{dsb}:colour_brightfield") == (dsb, "colour_brightfield")
    assert dataset_spec(str(dsb)) == (dsb, None)
    assert dataset_spec(str(tmp_path / "no:such")) == (tmp_path / "no:such", None)
