"""Training (a few steps, resumable), targets, and `wsi-nuc eval` on the real MoNuSeg data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wsi_nuc.cli import main
from wsi_nuc.train.targets import make_targets


def test_targets_on_hand_made_labels():
    lab = np.zeros((12, 12), np.int32)
    lab[2:7, 2:7] = 1          # 5x5 square
    lab[2:7, 7:10] = 2         # touches nucleus 1 on its right
    t = make_targets(lab)
    assert t["fg"].sum() == 25 + 15
    assert t["dist"][4, 4] == pytest.approx(1.0) and t["dist"][2, 2] < 0.5
    assert t["boundary"][4, 6] == 1 and t["boundary"][4, 4] == 0
    assert t["weight"][4, 6] > 1 and t["weight"][10, 10] == 1       # touching border weighted up
    assert t["hv"][0, 4, 2] == pytest.approx(-1.0) and t["hv"][0, 4, 6] == pytest.approx(1.0)
    assert t["centre"][4, 4] == pytest.approx(1.0) and t["centre"][0, 11] < 0.01


def test_train_few_steps_resume_and_eval(shared, tmp_path, capsys):
    data = shared / "data" / "monuseg2018-train"
    out = tmp_path / "run"
    sets = ["--set", f"data.roots=[{data}]", "--set", "model.base=4", "--set", "model.depth=3",
            "--set", "train.steps=2", "--set", "train.batch=2", "--set", "train.crop=64",
            "--set", "train.val_every=1000", "--set", "train.threads=1"]
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets]) == 0
    assert (out / "model" / "model.safetensors").exists() and (out / "config.resolved.yaml").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2
    sets[sets.index("train.steps=2")] = "train.steps=3"
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets]) == 0
    assert "resumed" in capsys.readouterr().out
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["training"]["steps"] == 3 and cfg["mpp"] == 0.5
    # a dataset without a split: eval scores every image and writes predictions at the original size
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    meta = json.loads((data / "dataset.json").read_text())
    stem = meta["split"]["val"][0]
    shutil.copy(data / "images" / f"{stem}.png", ds / "images")
    shutil.copy(data / "labels" / f"{stem}.tif", ds / "labels")
    (ds / "dataset.json").write_text(json.dumps({"name": "x", "mpp": 0.25}))
    pred = tmp_path / "pred"
    assert main(["eval", str(ds), "--model", str(out / "model"), "--json", "--save-predictions", str(pred),
                 "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"aji", "aji_pooled", "pq", "dq", "sq", "f1", "dice", "map_dsb"} <= set(res)
    assert res["split"] == "all"
    import tifffile

    p = tifffile.imread(pred / f"{stem}.tif")
    assert p.shape == (1000, 1000) and p.dtype in (np.uint16, np.uint32)


def test_shipped_model_on_val(shared, capsys):
    """The shipped default model scores far above chance on the MoNuSeg val split."""
    data = shared / "data" / "monuseg2018-train"
    assert main(["eval", str(data), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["split"] == "val"
    assert res["aji"] > 0.45 and res["pq"] > 0.35 and res["dice"] > 0.7


def test_eval_bad_dataset(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_models_lists_every_shipped_model_with_its_card_figures(capsys):
    from wsi_nuc.cli import main
    from wsi_nuc.model.io import DEFAULT_MODEL, read_model_config, resolve_model_dir, shipped_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    for name in shipped_models():
        line = next(ln for ln in out if ln[2:].split()[0] == name)
        aji = read_model_config(resolve_model_dir(name))["metrics"]["val"]["aji"]
        assert f"{aji:.3f}" in line
        assert line.startswith("*") == (name == DEFAULT_MODEL)


def test_weight_average_starts_on_resume_and_is_exported(shared, tmp_path, capsys):
    """``train.ema`` turned on for a run that has a checkpoint without it: the average starts from the
    resumed weights, is checkpointed, and is what the snapshots' ``-ema`` folders and the final model hold."""
    from safetensors.numpy import load_file

    data = shared / "data" / "monuseg2018-train"
    out = tmp_path / "run"
    sets = ["--set", f"data.roots=[{data}]", "--set", "model.base=4", "--set", "model.depth=3",
            "--set", "train.steps=6", "--set", "train.stop_at=2", "--set", "train.batch=2",
            "--set", "train.crop=64", "--set", "train.val_every=1000", "--set", "train.threads=1",
            "--set", "train.snapshot_every=2", "--set", "train.lr=0.01"]
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets]) == 0
    assert not (out / "snapshots" / "step000002-ema").exists()
    sets[sets.index("train.stop_at=2")] = "train.stop_at=4"
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets, "--set", "train.ema=0.5"]) == 0
    import torch

    assert "ema" in torch.load(out / "checkpoint.pt", weights_only=True)
    raw4 = load_file(out / "snapshots" / "step000004" / "model.safetensors")
    ema4 = load_file(out / "snapshots" / "step000004-ema" / "model.safetensors")
    raw2 = load_file(out / "snapshots" / "step000002" / "model.safetensors")
    k = next(k for k in raw4 if k.endswith("weight") and raw4[k].ndim == 4)
    # decay 0.5 from the step-2 weights over steps 3 and 4: strictly between the raw weights of steps 2 and 4
    assert not np.allclose(ema4[k], raw4[k]) and not np.allclose(ema4[k], raw2[k])
    assert json.loads((out / "snapshots" / "step000004-ema" / "config.json").read_text())["ema"] == 0.5
    sets[sets.index("train.stop_at=4")] = "train.stop_at=6"
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets, "--set", "train.ema=0.5"]) == 0
    final = load_file(out / "model" / "model.safetensors")
    assert json.loads((out / "model" / "config.json").read_text())["ema"] == 0.5
    assert not np.allclose(final[k], load_file(out / "snapshots" / "step000006" / "model.safetensors")[k])
