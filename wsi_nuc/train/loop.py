"""Supervised training of a multi-head U-Net on a dataset folder: resumable, logged, checkpointed.

Steps: (1) load the train/val images at the working mpp; (2) draw augmented crops and their targets;
(3) optimise the head losses with AdamW and a warm-up + cosine schedule; (4) every few minutes write a
checkpoint; (5) every ``val_every`` steps score val loss; (6) at the end export a model folder.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import write_config
from ..dataset import list_stems, load_at_mpp, read_index
from ..model.io import save_model
from ..model.net import build_net, count_params, net_macs_per_pixel
from ..scale import median_area_um2
from ..stainnorm import LabStats, lab_stats, normalise
from .augment import AugmentConfig, augment
from .losses import head_losses
from .sources import all_samples, load_sources, make_batch as draw_batch
from .targets import make_targets

NORM_MEAN, NORM_STD = 0.5, 0.25


def to_input(batch_rgb: np.ndarray, norm: dict | None = None) -> torch.Tensor:
    """(B, H, W, 3) RGB 0..255 -> normalised (B, 3, H, W) float tensor."""
    mean, std = (norm or {}).get("mean", NORM_MEAN), (norm or {}).get("std", NORM_STD)
    x = torch.from_numpy(np.ascontiguousarray(batch_rgb, dtype=np.float32)).permute(0, 3, 1, 2)
    return (x / 255.0 - mean) / std


def input_norm(cfg: dict) -> dict:
    """The input normalisation of a config: ``data.norm``, else the v0.1/v0.2 models' (0.5, 0.25)."""
    return dict(cfg["data"].get("norm") or {"mean": NORM_MEAN, "std": NORM_STD})


def build_training_net(cfg: dict):
    """The network of ``cfg["model"]``; ``pretrained: mobilenet_v2_imagenet`` loads the converted
    ImageNet encoder (:mod:`wsi_nuc.train.tflite_import`)."""
    arch = dict(cfg["model"])
    pretrained = arch.pop("pretrained", None)
    net = build_net(arch)
    if pretrained:
        if pretrained != "mobilenet_v2_imagenet" or not hasattr(net, "encoder"):
            raise ValueError(f"model.pretrained: {pretrained!r} does not fit this architecture")
        from .tflite_import import load_encoder

        load_encoder(net.encoder)
    return net


def stack_targets(targets: list[dict]) -> dict:
    return {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}


def load_split(data_cfg: dict, split: str, mpp) -> list:
    samples = []
    for root in data_cfg["roots"]:
        meta = read_index(root)
        for stem in list_stems(root, split):
            s = load_at_mpp(root, stem, mpp, meta)
            if s.labels is not None:
                samples.append(s)
    return samples


def make_batch(samples, size, n, aug_cfg, rng):
    imgs, tgts = [], []
    for _ in range(n):
        s = samples[rng.integers(len(samples))]
        img, lab = augment(s.image, s.labels, size, aug_cfg, rng)
        imgs.append(img)
        tgts.append(make_targets(lab))
    return to_input(np.stack(imgs)), stack_targets(tgts)


def val_batches(samples, size):
    """Deterministic tiles covering each val image (no augmentation)."""
    for s in samples:
        h, w = s.labels.shape
        for y in range(0, max(h - size, 0) + 1, size):
            for x in range(0, max(w - size, 0) + 1, size):
                img = s.image[y:y + size, x:x + size].astype(np.float32)
                lab = s.labels[y:y + size, x:x + size]
                if img.shape[:2] != (size, size):
                    continue
                yield to_input(img[None]), stack_targets([make_targets(lab)])


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def normalise_stain(cfg: dict, train_set: list, *others: list) -> LabStats | None:
    """With ``data.stain_norm`` on, Reinhard-normalise every image (in place) to the pooled CIELAB
    statistics of the training images, and return those (the model's target); else None."""
    if not cfg["data"].get("stain_norm"):
        return None
    target = lab_stats([s.image for s in train_set])
    for samples in (train_set, *others):
        for s in samples:
            s.image = normalise(s.image, lab_stats(s.image), target)
    return target


def model_meta(cfg: dict, train_set: list | None = None, stain: LabStats | None = None) -> dict:
    """config.json fields of a trained model; with ``train_set``, also the median area (µm²) of its
    training nuclei, by which images of unknown scale are scaled (:mod:`wsi_nuc.scale`)."""
    meta = {
        "name": cfg.get("name", "model"),
        "version": cfg.get("version", "0.1.0"),
        "mpp": cfg["data"].get("mpp"),
        "norm": input_norm(cfg),
        "postprocess": cfg.get("postprocess", {}),
        "licence": cfg.get("licence", ""),
        "training_data": cfg.get("training_data", ""),
    }
    mpp = cfg["data"].get("mpp")
    if train_set and mpp:
        meta["nucleus_area_um2"] = round(median_area_um2([s.labels for s in train_set], mpp), 2)
    if stain is not None:
        meta["stain_norm"] = stain.to_dict()
    types = (cfg.get("model") or {}).get("types")
    if (cfg.get("model") or {}).get("kind") == "mobileunet" and types is None:
        from ..model.mobilenet import TYPE_NAMES

        types = list(TYPE_NAMES)
    if types:
        meta["types"] = list(types)
    return meta


def train(cfg: dict, out_dir: str | Path, log=print) -> Path:
    """Train (or resume) a run in ``out_dir``; returns the exported model folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.resolved.yaml")
    tc = cfg["train"]
    torch.set_num_threads(int(tc.get("threads", 2)))
    torch.manual_seed(int(tc.get("seed", 0)))
    mpp = cfg["data"].get("mpp")
    norm = input_norm(cfg)
    net = build_training_net(cfg)
    opt = make_optimizer(param_groups(net, tc), tc)
    aug_cfg = augment_config(cfg)
    weights = tc.get("loss_weights", {})
    type_w = tc.get("type_class_weights")
    ckpt = out / "checkpoint.pt"
    step, cpu_s = resume(ckpt, net, opt, log)
    rng = np.random.default_rng(int(tc.get("seed", 0)) + step)
    train_src = load_sources(cfg["data"], "train")
    val_src = load_sources(cfg["data"], "val")
    train_set = all_samples(train_src)
    stain = normalise_stain(cfg, train_set, all_samples(val_src))
    log(" / ".join(f"{s.name}: {len(s.samples)} train, {len(v.samples)} val (weight {s.weight})"
                   for s, v in zip(train_src, val_src)) + f"; mpp={mpp}")
    log(f"params={count_params(net):,} MACs/px={net_macs_per_pixel(net):,.0f}")
    total, bs, size = int(tc["steps"]), int(tc["batch"]), int(tc["crop"])
    logf = open(out / "log.jsonl", "a")
    last_ckpt = time.time()
    t_cpu0 = time.process_time()
    run_loss = None
    while step < total:
        net.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, tc["lr"], int(tc.get("warmup", 50))) * g.get("lr_mult", 1.0)
        imgs, tgts = draw_batch(train_src, size, bs, aug_cfg, rng)
        loss, parts = head_losses(net(to_input(imgs, norm)), stack_targets(tgts), weights, type_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        lv = float(loss.detach())
        run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
        if step % 10 == 0:
            rec = {"step": step, "loss": lv, "ema": run_loss, "lr": opt.param_groups[0]["lr"],
                   "cpu_s": cpu_s + time.process_time() - t_cpu0, "time": time.time(), **parts}
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
        if step % int(tc.get("val_every", 100)) == 0 or step == total:
            vl = {v.name: validate_images(net, v.samples, weights, norm, type_w) for v in val_src}
            logf.write(json.dumps({"step": step, "val_loss": float(np.mean(list(vl.values()))),
                                   "val": vl}) + "\n")
            logf.flush()
            log(f"step {step}/{total} loss {run_loss:.4f} val " + " ".join(f"{k} {v:.4f}" for k, v in vl.items()))
        if time.time() - last_ckpt > float(tc.get("checkpoint_minutes", 5)) * 60 or step == total:
            save_checkpoint(ckpt, net, opt, step, cpu_s + time.process_time() - t_cpu0)
            last_ckpt = time.time()
        if step % int(tc.get("snapshot_every", 250)) == 0:
            save_model(net, out / "snapshots" / f"step{step:06d}", model_meta(cfg, train_set, stain))
    cpu_s += time.process_time() - t_cpu0
    meta = model_meta(cfg, train_set, stain)
    meta["training"] = {"steps": step, "cpu_hours": round(cpu_s / 3600, 2)}
    model_dir = save_model(net, out / "model", meta)
    logf.close()
    return model_dir


def param_groups(net, tc: dict) -> list[dict]:
    """A pretrained encoder learns at ``train.encoder_lr_mult`` times the rest's rate."""
    mult = float(tc.get("encoder_lr_mult", 1.0))
    enc = getattr(net, "encoder", None)
    if enc is None or mult == 1.0:
        return [{"params": list(net.parameters()), "lr_mult": 1.0}]
    enc_ids = {id(p) for p in enc.parameters()}
    return [{"params": list(enc.parameters()), "lr_mult": mult},
            {"params": [p for p in net.parameters() if id(p) not in enc_ids], "lr_mult": 1.0}]


@torch.no_grad()
def validate_images(net, samples, weights, norm, type_w=None, stride: int = 32) -> float:
    """Mean loss over whole val images, each cropped to a multiple of ``stride`` (no augmentation)."""
    from .sources import type_target

    net.eval()
    losses = []
    for s in samples:
        h, w = (n - n % stride for n in s.labels.shape)
        if h < stride or w < stride:
            continue
        lab = s.labels[:h, :w]
        t = make_targets(lab)
        t["types"] = type_target(lab, s.types)
        x = to_input(s.image[None, :h, :w].astype(np.float32), norm)
        losses.append(float(head_losses(net(x), stack_targets([t]), weights, type_w)[0]))
    return float(np.mean(losses)) if losses else float("nan")


def make_optimizer(params, tc: dict) -> torch.optim.Optimizer:
    """AdamW over ``params`` (parameters, or groups from :func:`param_groups`)."""
    return torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc.get("weight_decay", 1e-4))


def augment_config(cfg: dict) -> AugmentConfig:
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in (cfg.get("augment") or {}).items()})


def resume(ckpt: Path, net, opt, log=print, extra: dict | None = None) -> tuple[int, float]:
    """Load a checkpoint into ``net``/``opt`` (and each ``extra`` module by key) if it exists;
    returns (step, cpu seconds so far)."""
    if not ckpt.exists():
        return 0, 0.0
    state = torch.load(ckpt, weights_only=True)
    net.load_state_dict(state["model"])
    for key, module in (extra or {}).items():
        if module is not None and key in state:
            module.load_state_dict(state[key])
    opt.load_state_dict(state["optim"])
    log(f"resumed from {ckpt} at step {int(state['step'])}")
    return int(state["step"]), float(state["cpu_s"])


def save_checkpoint(path: Path, net, opt, step, cpu_s, extra: dict | None = None) -> None:
    """Atomic checkpoint: keys model/optim/step/cpu_s (+ ``extra``, e.g. distillation adapters)."""
    tmp = path.with_suffix(".tmp")
    state = {"model": net.state_dict(), "optim": opt.state_dict(), "step": step, "cpu_s": cpu_s}
    state.update(extra or {})
    torch.save(state, tmp)
    tmp.replace(path)


@torch.no_grad()
def validate(net, val_set, size, weights) -> float:
    net.eval()
    losses = [float(head_losses(net(x), t, weights)[0]) for x, t in val_batches(val_set, size)]
    return float(np.mean(losses)) if losses else float("nan")
