"""A run's checkpoint carried as one safetensors file (``wsi_nuc.train.carry``) resumes where it stopped."""
from __future__ import annotations

import json

import pytest
import torch

from wsi_nuc.cli import main
from wsi_nuc.train import carry
from wsi_nuc.train.carry import export, restore


def test_carried_checkpoint_resumes_the_run(shared, tmp_path, capsys):
    data = shared / "data" / "monuseg2018-train"
    run, moved = tmp_path / "run", tmp_path / "elsewhere"
    sets = ["--set", f"data.roots=[{data}]", "--set", "model.base=4", "--set", "model.depth=3",
            "--set", "train.steps=4", "--set", "train.stop_at=2", "--set", "train.batch=2",
            "--set", "train.crop=64", "--set", "train.val_every=1000", "--set", "train.threads=1",
            "--set", "train.ema=0.9"]
    assert main(["train", "configs/he-teacher.yaml", "--out", str(run), *sets]) == 0
    carried = tmp_path / "state" / "run.safetensors"
    assert export(run, carried)["step"] == 2
    assert carried.stat().st_size < 0.85 * (run / "checkpoint.pt").stat().st_size   # moments in bfloat16
    assert restore(carried, moved) == {"step": 2, "cpu_s": pytest.approx(torch.load(
        run / "checkpoint.pt", weights_only=True)["cpu_s"])}
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(moved / "checkpoint.pt", weights_only=True)
    for part in ("model", "ema"):                  # the weights and their average: bit for bit
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert a["optim"]["param_groups"] == b["optim"]["param_groups"]
    m, r = a["optim"]["state"][0]["exp_avg_sq"], b["optim"]["state"][0]["exp_avg_sq"]
    assert r.dtype == torch.float32 and torch.allclose(m, r, rtol=1e-2, atol=0) and not torch.equal(m, r)
    with pytest.raises(FileExistsError):           # never replaces a checkpoint that is there
        restore(carried, moved)
    with pytest.raises(SystemExit) as stop:        # the command line: one line naming the file, exit 2
        carry.main(["restore", str(carried), str(moved)])
    assert stop.value.code == 2 and "checkpoint.pt" in capsys.readouterr().err
    sets[sets.index("train.stop_at=2")] = "train.stop_at=4"
    assert main(["train", "configs/he-teacher.yaml", "--out", str(moved), *sets]) == 0
    assert "resumed from" in capsys.readouterr().out
    log = [json.loads(x) for x in (moved / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][-1] == 4
