"""The training step's speed settings: batches from (seed, step) alone, prefetched or inline alike; bf16
only where the hardware has it; fp32 losses under autocast; stop_at for equal-sample comparisons;
NuInsSeg's JPEG images read."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsi_nuc.cli import main
from wsi_nuc.dataset import list_stems, load_sample
from wsi_nuc.train.augment import AugmentConfig
from wsi_nuc.train.prefetch import Batches
from wsi_nuc.train.sources import load_sources
from wsi_nuc.train.speed import cpu_has_native_bf16, cpu_prefers_channels_last, fp32_losses, step_settings


def test_auto_settings_follow_the_hardware():
    s = step_settings({})
    assert s.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert s.bf16 == (s.device == "cuda" or cpu_has_native_bf16())
    assert s.channels_last == (s.bf16 or (s.device == "cpu" and cpu_prefers_channels_last()))
    assert step_settings({"precision": "fp32"}).channels_last == cpu_prefers_channels_last()
    assert step_settings({"channels_last": True}).channels_last
    assert not step_settings({"precision": "fp32", "channels_last": False, "prefetch": 0}).bf16
    assert step_settings({"precision": "bf16", "device": "cpu"}).bf16
    for bad in ({"precision": "fp16"}, {"prefetch": -1}, {"device": "tpu"}, {"channels_last": "maybe"}):
        with pytest.raises(ValueError, match="train."):
            step_settings(bad)


def test_losses_run_in_fp32_under_bf16_autocast():
    seen = {}

    @fp32_losses
    def loss(a, b):
        seen["dtypes"] = (a.dtype, b.dtype, torch.mm(a, b).dtype)
        return torch.mm(a, b).sum()

    a = torch.ones(4, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss(a, torch.ones(4, 4))
    assert seen["dtypes"] == (torch.float32,) * 3


def test_prefetched_batches_equal_inline_batches(shared):
    srcs = load_sources({"roots": [str(shared / "data" / "monuseg2018-train")], "mpp": 0.5}, "train")
    cfg = AugmentConfig()
    inline = Batches(srcs, 64, 2, cfg, seed=3, start=5, stop=8, workers=0)
    with Batches(srcs, 64, 2, cfg, seed=3, start=5, stop=8, workers=2) as ahead:
        for step in (5, 6, 7):
            (i1, t1), (i2, t2) = inline.get(step), ahead.get(step)
            assert np.array_equal(i1, i2)
            assert all(np.array_equal(a[k], b[k]) for a, b in zip(t1, t2) for k in a)
        assert ahead.worker_cpu_s() >= 0.0
    assert not np.array_equal(inline.get(5)[0], inline.get(6)[0])


def test_nuinsseg_jpeg_images_are_read(shared):
    root = shared / "data" / "nuinsseg-train"
    stems = list_stems(root, "val")
    assert len(stems) > 20
    s = load_sample(root, stems[0])
    assert s.image.dtype == np.uint8 and s.image.shape[:2] == s.labels.shape and s.labels.max() > 0


def test_stop_at_then_resume_to_the_end(shared, tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["--set", f"data.roots=[{shared / 'data' / 'monuseg2018-train'}]", "--set", "model.base=4",
            "--set", "model.depth=3", "--set", "train.steps=3", "--set", "train.batch=2",
            "--set", "train.crop=64", "--set", "train.val_every=1000", "--set", "train.threads=1",
            "--set", "train.stop_at=2"]
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets]) == 0
    assert (out / "snapshots" / "step000002" / "model.safetensors").exists()
    assert not (out / "model").exists()
    sets[-1] = "train.stop_at=0"
    assert main(["train", "configs/he-teacher.yaml", "--out", str(out), *sets]) == 0
    assert "resumed" in capsys.readouterr().out
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["training"]["steps"] == 3 and cfg["training"]["samples"] == 6


def test_cooldown_branch_falls_linearly_from_the_long_runs_rate():
    """``train.cooldown: [S, L]``: the long run's schedule up to S, then a straight fall to the cosine floor
    at S + L, where the branch stops (the long run's own schedule, total steps included, is untouched)."""
    from wsi_nuc.train.driver import lr_at, schedule_lr, stop_step

    tc = {"steps": 12000, "lr": 1e-3, "warmup": 200}
    assert stop_step(tc) == 12000 and stop_step(dict(tc, stop_at=300)) == 300
    cool = dict(tc, cooldown=[4500, 500])
    assert stop_step(cool) == 5000 and stop_step(dict(cool, stop_at=4700)) == 4700
    for step in (0, 100, 4499):
        assert schedule_lr(step, cool) == schedule_lr(step, tc) == lr_at(step, 12000, 1e-3, 200)
    top = lr_at(4500, 12000, 1e-3, 200)
    assert schedule_lr(4500, cool) == pytest.approx(top)
    assert schedule_lr(4750, cool) == pytest.approx((top + 2e-5) / 2)
    assert schedule_lr(5000, cool) == pytest.approx(2e-5)
    assert schedule_lr(4750, cool) < lr_at(4750, 12000, 1e-3, 200)


def test_gpu_script_runs_for_its_minutes_and_leaves_a_resumable_checkpoint(shared, tmp_path):
    """The prepared GPU script, on the CPU with a tiny config: it stops on its clock with a checkpoint and a
    snapshot, and the run resumes from them."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    env = dict(os.environ, DEVICE="cpu", PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    tiny = ["--set", f"data.roots=[{shared / 'data' / 'monuseg2018-train'}]", "--set", "model.base=4",
            "--set", "model.depth=3", "--set", "train.batch=2", "--set", "train.crop=64",
            "--set", "train.val_every=100000", "--set", "train.threads=1", "--set", "train.prefetch=0"]
    p = subprocess.run(["bash", "workflows/gpu/train-teacher-cuda.sh", "0.05", str(run), "configs/he-teacher.yaml",
                        *tiny], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "stopped at step" in p.stdout and "device cpu" in p.stdout
    assert (tmp_path / "out" / "checkpoint.pt").exists() and (tmp_path / "out" / "snapshot" / "model.safetensors").exists()
    import torch

    step = int(torch.load(run / "checkpoint.pt", weights_only=True)["step"])
    assert 0 < step < 1500
    assert main(["train", "configs/he-teacher.yaml", "--out", str(run), *tiny,
                 "--set", f"train.stop_at={step + 1}"]) == 0
    assert int(torch.load(run / "checkpoint.pt", weights_only=True)["step"]) == step + 1


def test_sigterm_writes_the_checkpoint_and_leaves_no_worker(shared, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "run"
    args = [sys.executable, "-m", "wsi_nuc.cli", "train", "configs/he-teacher.yaml", "--out", str(out),
            "--set", f"data.roots=[{shared / 'data' / 'monuseg2018-train'}]", "--set", "model.base=4",
            "--set", "model.depth=3", "--set", "train.batch=2", "--set", "train.crop=64",
            "--set", "train.val_every=100000", "--set", "train.threads=1", "--set", "train.steps=100000",
            "--set", "train.checkpoint_minutes=100", "--set", "train.prefetch=1"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():
        assert time.time() - t0 < 300 and p.poll() is None
        time.sleep(0.5)
    workers = psutil.Process(p.pid).children()
    assert workers
    p.send_signal(signal.SIGTERM)
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 143, text[-2000:]
    assert "checkpoint written at step" in text
    import torch

    assert int(torch.load(out / "checkpoint.pt", weights_only=True)["step"]) >= 10
    time.sleep(1)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)



def test_crop_resizing_is_ndimage_zoom_faster(shared):
    """The scale jitter's resize gives ndimage.zoom's image (to float32 rounding) and its labels exactly, on a
    real MoNuSeg image, shrinking and enlarging."""
    from scipy import ndimage as ndi

    from wsi_nuc.train.augment import resize_linear, resize_nearest

    root = shared / "data" / "monuseg2018-train"
    sample = load_sample(root, list_stems(root, "train")[0])
    img, lab = sample.image, sample.labels
    for src in (193, 300, 341):
        im = img[:src, :src].astype(np.float32)
        la = lab[:src, :src]
        z = 256 / src
        want = ndi.zoom(im, (z, z, 1), order=1, grid_mode=True, mode="nearest")[:256, :256]
        want_lab = ndi.zoom(la, z, order=0, grid_mode=True, mode="nearest")[:256, :256]
        got = resize_linear(im, 256)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-3
        assert np.array_equal(resize_nearest(la, 256), want_lab)
