"""INT8 static quantisation: calibrate on real crops, store in safetensors, rebuild, compare with fp32."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_nuc.model.io import load_model, save_model
from wsi_nuc.model.net import NetConfig, UNet
from wsi_nuc.train.quantize import calibration_crops, load_int8, quantize_model


def dataset(shared: Path) -> Path:
    root = shared / "data" / "monuseg2018-train"
    if not (root / "dataset.json").is_file():
        pytest.skip(f"dataset not found: {root}")
    return root


def small_model(tmp_path: Path, root: Path) -> Path:
    """A random small UNet whose BatchNorm statistics are estimated on real crops (as after training)."""
    torch.manual_seed(0)
    net = UNet(NetConfig(base=8, depth=3, max_channels=16))
    crops = calibration_crops(str(root), 0.5, 8, 64, seed=3)
    x = (torch.from_numpy(crops.astype(np.float32)).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None                                   # cumulative average
    with torch.no_grad():
        net.train()(x)
    return save_model(net.eval(), tmp_path / "fp32", {"name": "small", "mpp": 0.5,
                                                       "norm": {"mean": 0.5, "std": 0.25}})


def test_int8_from_safetensors_matches_fp32(shared, tmp_path):
    torch.set_num_threads(1)
    root = dataset(shared)
    src = small_model(tmp_path, root)
    out = quantize_model(src, str(root), tmp_path / "int8", n_crops=8, batch=4, crop=64, bench=False,
                         log=None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantized"] == "int8" and cfg["quantization"]["calibration_crops"] == 8
    assert cfg["arch"]["base"] == 8
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))        # plain tensors, no pickle
    assert any(k.endswith("histogram") for k in state)
    assert not any("running_mean" in k for k in state)       # BatchNorm folded into the convs
    fp32, _ = load_model(src)
    q1, q2 = load_int8(out), load_int8(out)
    x = torch.from_numpy(calibration_crops(str(root), 0.5, 2, 64, seed=5).astype(np.float32))
    x = (x.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        a, b, c = fp32(x), q1(x), q2(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert torch.equal(b, c), "rebuilding from disk must be deterministic"
    pa, pb = torch.sigmoid(a[:, 0]), torch.sigmoid(b[:, 0])
    assert float((pa - pb).abs().mean()) < 0.05
    rel = float((a - b).abs().mean() / a.abs().mean())
    assert rel < 0.1, rel
    assert q1.stride == 4
    with pytest.raises(Exception):
        load_int8(src)                                        # not an INT8 folder


def test_type_branch_int8_keeps_the_trunks_outputs(shared, tmp_path):
    """A type branch on the shipped default's trunk, quantised with ``observers_from`` the default: the six
    instance maps of the INT8 graph are bit for bit the default's (the last concatenation stays in float and
    the trunk keeps its activation scales), so the nuclei are the default's; the branch's logits follow."""
    from wsi_nuc.model.io import resolve_model_dir
    from wsi_nuc.train.distill import warm_start

    torch.set_num_threads(1)
    root = dataset(shared)
    torch.manual_seed(0)
    net = UNet(NetConfig(base=16, depth=4, max_channels=96, types=("a", "b", "c", "d"), type_branch=8))
    warm_start(net, "he-student")
    _, meta = load_model("he-student")
    src = save_model(net.eval(), tmp_path / "fp32", {k: meta[k] for k in ("name", "mpp", "norm", "stain_norm")}
                     | {"types": ["a", "b", "c", "d"]})
    out = quantize_model(src, str(root), tmp_path / "int8", n_crops=8, batch=4, crop=64, bench=False, log=None,
                         observers_from="he-student-int8")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["observers_from"] == "he-student-int8"
    src_cal = json.loads((resolve_model_dir("he-student-int8") / "config.json").read_text())["calibration"]
    assert cfg["calibration"]["ece_after"] == src_cal["ece_after"]   # v0.2's LTS carried over, same logits
    assert (out / "lts.safetensors").read_bytes() == (resolve_model_dir("he-student-int8") / "lts.safetensors").read_bytes()
    x = torch.from_numpy(calibration_crops(str(root), 0.5, 2, 128, seed=5).astype(np.float32))
    x = (x.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        typed, plain = load_int8(out)(x), load_int8("he-student-int8")(x)
    assert typed.shape[1] == 6 + 5 and torch.equal(typed[:, :6], plain)
    with pytest.raises(Exception, match="not this model's"):
        quantize_model(small_model(tmp_path, root), str(root), tmp_path / "bad", n_crops=4, batch=4, crop=64,
                       bench=False, log=None, observers_from="he-student-int8")
