"""One resumable training driver for ``train`` and ``distill``: schedule, checkpoints, logs, snapshots, export.

A run is a :class:`Job`: the network being trained, its optimiser, a ``step_loss(x, t)`` function (the only
thing ``train`` and ``distill`` do differently), a ``validate()`` function, extra modules to checkpoint
(distillation adapters) and the ``config.json`` fields of the exported model. :func:`run_job`:

1. resumes from ``OUT/checkpoint.pt`` when it exists (model, optimiser, extras, step, CPU seconds);
2. per step: sets the warm-up + cosine learning rate (each parameter group times its ``lr_mult``), takes
   the step's weighted multi-source batch (drawn from ``(seed, step)``, prepared ahead by a worker process:
   :mod:`wsi_nuc.train.prefetch`), and takes one optimiser step on the device, precision and memory layout
   of :mod:`wsi_nuc.train.speed` (bfloat16 autocast where the hardware has it, channels-last);
3. every 10 steps appends a line to ``OUT/log.jsonl``; every ``val_every`` steps validates and prints a
   line a person can read; every ``checkpoint_minutes`` writes the checkpoint atomically; every
   ``snapshot_every`` steps exports a snapshot model folder; with ``train.ema: D`` (e.g. 0.998) it keeps an
   exponential moving average of the weights and buffers (decay D per step, checkpointed; a run resumed
   with it for the first time starts it from the current weights), exported beside each snapshot as
   ``stepNNNNNN-ema``;
4. at the end exports ``OUT/model`` (the averaged weights when ``train.ema`` is on) with the steps,
   samples and CPU-hours; ``train.stop_at: N`` instead
   stops at step N with a checkpoint and a snapshot (equal-sample comparisons of runs on one schedule), and
   ``train.max_minutes: M`` after M minutes of training (a GPU lease of fixed length). SIGTERM (the end
   of a session, a batch system's time limit) ends the step under way, writes the checkpoint and exits 143.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..model.io import save_model
from ..stainnorm import LabStats, lab_stats, normalise
from .augment import augment_config
from .prefetch import Batches
from .sources import Source, all_samples, load_sources
from .speed import step_settings

from ..model.inputs import DEFAULT_NORM, to_input  # noqa: F401 - to_input: the training batches' input


def stack_targets(targets: list[dict]) -> dict:
    return {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}


def input_norm(cfg: dict) -> dict:
    """The input normalisation of a config: ``data.norm``, else the v0.1/v0.2 models' (0.5, 0.25)."""
    return dict(cfg["data"].get("norm") or DEFAULT_NORM)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def schedule_lr(step: int, tc: dict) -> float:
    """The base learning rate of ``step``: warm-up + cosine over ``train.steps``; with ``train.cooldown:
    [S, L]`` it falls linearly from step S's rate to the cosine floor over L steps (a cooled-down branch
    of a long run, as in warm-up-stable-decay schedules: what the run would score if it ended at S)."""
    total, base, warmup = int(tc["steps"]), float(tc["lr"]), int(tc.get("warmup", 50))
    cool = tc.get("cooldown")
    if not cool or step < int(cool[0]):
        return lr_at(step, total, base, warmup)
    start, length = int(cool[0]), max(1, int(cool[1]))
    top, floor = lr_at(start, total, base, warmup), 0.02 * base
    return floor + (top - floor) * max(0.0, 1.0 - (step - start) / length)


def stop_step(tc: dict) -> int:
    """Where a run stops: ``train.steps``, or earlier at ``train.stop_at`` or a cool-down's end."""
    total = int(tc["steps"])
    cool = tc.get("cooldown")
    ends = [total, int(tc.get("stop_at") or total)] + ([int(cool[0]) + int(cool[1])] if cool else [])
    return min(ends)


@dataclass
class TrainData:
    """The sources of a run at the working scale, stain-normalised when the config asks for it."""

    train: list[Source]
    val: list[Source]
    norm: dict
    stain: LabStats | None = None

    def describe(self) -> str:
        return " / ".join(f"{s.name}: {len(s.samples)} train, {len(v.samples)} val (weight {s.weight})"
                          for s, v in zip(self.train, self.val))


def stain_target(cfg: dict) -> LabStats | None:
    """``data.stain_target``: a model (name or folder) whose ``stain_norm`` target to keep, e.g. when a
    student must see its warm-start model's colours; None to pool the training images' statistics."""
    name = cfg["data"].get("stain_target")
    if not name:
        return None
    from ..model.io import read_model_config, resolve_model_dir

    return LabStats.from_dict(read_model_config(resolve_model_dir(name, "cpu")).get("stain_norm"))


def model_types(cfg: dict) -> list[str] | None:
    """The type names of the config's network: ``model.types``, else a MobileNet U-Net's default ones."""
    arch = cfg.get("model") or {}
    if arch.get("types") is None and arch.get("kind") == "mobileunet":
        from ..model.mobilenet import TYPE_NAMES

        return list(TYPE_NAMES)
    return list(arch["types"]) if arch.get("types") else None


def load_data(cfg: dict) -> TrainData:
    """Load ``data.roots`` (train and val splits); with ``data.stain_norm`` Reinhard-normalise every image
    to the pooled CIELAB statistics of the training images, or to ``data.stain_target`` (the model's
    ``stain_norm`` target)."""
    types = model_types(cfg)
    train, val = load_sources(cfg["data"], "train", types), load_sources(cfg["data"], "val", types)
    stain = None
    if cfg["data"].get("stain_norm"):
        stain = stain_target(cfg) or lab_stats([s.image for s in all_samples(train)])
        for s in all_samples(train) + all_samples(val):
            s.image = normalise(s.image, lab_stats(s.image), stain)
    return TrainData(train, val, input_norm(cfg), stain)


def val_images(data: TrainData, stride: int = 32, device="cpu"):
    """Per val source: (name, [(x, targets)]) over whole images cropped to a multiple of ``stride``,
    on ``device``."""
    from .sources import type_target
    from .targets import make_targets

    for src in data.val:
        items = []
        for s in src.samples:
            h, w = (n - n % stride for n in s.labels.shape)
            if h < stride or w < stride:
                continue
            lab = s.labels[:h, :w]
            t = make_targets(lab)
            t["types"] = type_target(lab, s.types)
            x = to_input(s.image[None, :h, :w].astype(np.float32), data.norm, device)
            items.append((x, {k: v.to(device) for k, v in stack_targets([t]).items()}))
        yield src.name, items


@dataclass
class Job:
    cfg: dict
    out: Path
    net: nn.Module
    opt: torch.optim.Optimizer
    data: TrainData
    step_loss: Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]
    validate: Callable[[], dict]
    meta: Callable[[], dict]
    extra: dict = field(default_factory=dict)      # name -> module, checkpointed with the model


def resume(ckpt: Path, net, opt, log=print, extra: dict | None = None) -> tuple[int, float]:
    """Load a checkpoint into ``net``/``opt`` (and each ``extra`` module by key) if it exists;
    returns (step, cpu seconds so far)."""
    if not ckpt.exists():
        return 0, 0.0
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    net.load_state_dict(state["model"])
    for key, module in (extra or {}).items():
        if module is not None and key in state:
            module.load_state_dict(state[key])
    opt.load_state_dict(state["optim"])
    log(f"resumed from {ckpt} at step {int(state['step'])}")
    return int(state["step"]), float(state["cpu_s"])


def save_checkpoint(path: Path, net, opt, step, cpu_s, extra: dict | None = None) -> None:
    """Atomic checkpoint: keys model/optim/step/cpu_s (+ ``extra`` state dicts)."""
    tmp = path.with_suffix(".tmp")
    state = {"model": net.state_dict(), "optim": opt.state_dict(), "step": step, "cpu_s": cpu_s}
    state.update(extra or {})
    torch.save(state, tmp)
    tmp.replace(path)


def one_step(job: Job, speed, batch) -> tuple[float, dict]:
    """One optimiser step on a batch of (images, targets) arrays, then the weight average's update (``train.ema``);
    returns (loss, loss parts)."""
    imgs, tgts = batch
    x = to_input(imgs, job.data.norm, speed.device).contiguous(memory_format=speed.memory_format())
    t = {k: v.to(speed.device) for k, v in stack_targets(tgts).items()}
    with speed.autocast():
        loss, parts = job.step_loss(x, t)
    job.opt.zero_grad(set_to_none=True)
    loss.backward()
    job.opt.step()
    if job.extra.get("ema") is not None:
        job.extra["ema"].update_parameters(job.net)
    return float(loss.detach()), parts


def weight_average(net: nn.Module, decay: float | None):
    """An exponential moving average of ``net``'s weights and buffers (``train.ema``), or None."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)


def save_snapshot(job: Job, step: int, ema=None) -> None:
    """``OUT/snapshots/stepNNNNNN`` (and ``-ema``, the averaged weights) as model folders."""
    save_model(job.net, job.out / "snapshots" / f"step{step:06d}", job.meta())
    if ema is not None:
        save_model(ema.module, job.out / "snapshots" / f"step{step:06d}-ema",
                   dict(job.meta(), ema=float(job.cfg["train"]["ema"])))


def run_job(job: Job, log=print) -> Path:
    """Train ``job`` to ``train.steps`` (resuming); returns the exported model folder."""
    tc = job.cfg["train"]
    speed = step_settings(tc)
    ema = job.extra.setdefault("ema", weight_average(job.net, tc.get("ema")))
    modules = [job.net] + [m for m in job.extra.values() if m is not None]
    for m in modules:
        m.to(speed.device, memory_format=speed.memory_format())
    extra_state = lambda: {k: m.state_dict() for k, m in job.extra.items() if m is not None}  # noqa: E731
    ckpt = job.out / "checkpoint.pt"
    step, cpu_s = resume(ckpt, job.net, job.opt, log, job.extra)
    aug_cfg = augment_config(job.cfg)
    total, bs, size = int(tc["steps"]), int(tc["batch"]), int(tc["crop"])
    stop = stop_step(tc)
    log(f"training step: {speed.describe()}; steps {step} -> {stop} of {total}")
    last_ckpt, t_cpu0, run_loss = time.time(), time.process_time(), None
    t_wall, step0 = time.perf_counter(), step
    deadline = time.time() + float(tc["max_minutes"]) * 60 if tc.get("max_minutes") else None
    term = _TermFlag()
    batches = Batches(job.data.train, size, bs, aug_cfg, int(tc.get("seed", 0)), step, stop, speed.prefetch)
    with term, batches, open(job.out / "log.jsonl", "a") as logf:
        while step < stop:
            for m in modules:
                m.train()
            for g in job.opt.param_groups:
                g["lr"] = schedule_lr(step, tc) * g.get("lr_mult", 1.0)
            lv, parts = one_step(job, speed, batches.get(step))
            step += 1
            if deadline is not None and time.time() > deadline:
                stop = step
            run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
            cpu_now = cpu_s + time.process_time() - t_cpu0 + batches.worker_cpu_s()
            if step % 10 == 0 or step == stop:
                _jsonl(logf, {"step": step, "loss": lv, "ema": run_loss, "lr": job.opt.param_groups[0]["lr"],
                              "cpu_s": cpu_now, "time": time.time(), **parts})
            if step % int(tc.get("val_every", 100)) == 0 or step == stop:
                rate = (step - step0) * bs / (time.perf_counter() - t_wall)
                v = job.validate()
                _jsonl(logf, {"step": step, "samples_per_s": round(rate, 3), **v})
                log(f"step {step}/{total} loss {run_loss:.4f} {rate:.2f} samples/s " + " ".join(
                    f"{k} {val:.4f}" for k, val in _flat(v).items()))
                t_wall, step0 = time.perf_counter(), step
            if time.time() - last_ckpt > float(tc.get("checkpoint_minutes", 5)) * 60 or step == stop:
                save_checkpoint(ckpt, job.net, job.opt, step, cpu_now, extra_state())
                last_ckpt = time.time()
            if step % int(tc.get("snapshot_every", 250)) == 0 or (step == stop < total):
                save_snapshot(job, step, ema)
            if term.set:
                save_checkpoint(ckpt, job.net, job.opt, step, cpu_now, extra_state())
                log(f"SIGTERM: checkpoint written at step {step}; run the same command to resume")
                raise SystemExit(143)
    cpu_s += time.process_time() - t_cpu0 + batches.worker_cpu_s()
    if step < total:
        log(f"stopped at step {step} (train.stop_at / max_minutes); run again to resume")
        return job.out / "snapshots" / f"step{step:06d}"
    meta = dict(job.meta(), training={"steps": step, "samples": step * bs, "cpu_hours": round(cpu_s / 3600, 2)},
                **({} if ema is None else {"ema": float(tc["ema"])}))
    return save_model(job.net if ema is None else ema.module, job.out / "model", meta)


class _TermFlag:
    """SIGTERM sets ``set`` (main thread only) instead of killing the process mid-step."""

    def __init__(self):
        self.set, self.old = False, None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.set = True

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _jsonl(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()


def _flat(v: dict, prefix: str = "") -> dict:
    out = {}
    for k, val in v.items():
        if isinstance(val, dict):
            out.update(_flat(val, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = val
    return out
