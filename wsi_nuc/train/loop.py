"""Supervised training of a multi-head network on annotated sources: the ``train`` step on the driver.

Steps: (1) build the network (optionally from the ImageNet MobileNetV2 encoder); (2) load the sources at
the working scale (:func:`wsi_nuc.train.driver.load_data`); (3) optimise the head losses (and the type
losses where types are known) with AdamW, the encoder at ``train.encoder_lr_mult`` of the rate;
(4) validate per source; (5) export a model folder (:func:`wsi_nuc.train.driver.run_job`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import write_config
from ..model.net import build_net, count_params, net_macs_per_pixel
from ..scale import median_area_um2
from .driver import Job, TrainData, input_norm, load_data, model_types, run_job, val_images
from .losses import head_losses
from .sources import known_scale_samples


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


def model_meta(cfg: dict, data: TrainData | None = None) -> dict:
    """config.json fields of a trained model; with ``data``, also the median area (µm²) of its training
    nuclei of known scale, by which images of unknown scale are scaled (:mod:`wsi_nuc.scale`), and its
    stain target."""
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
    if data is not None and mpp:
        labels = [s.labels for s in known_scale_samples(data.train)]
        meta["nucleus_area_um2"] = round(median_area_um2(labels, mpp), 2)
    if data is not None and data.stain is not None:
        meta["stain_norm"] = data.stain.to_dict()
    types = model_types(cfg)
    if types:
        meta["types"] = list(types)
    return meta


def make_optimizer(params, tc: dict) -> torch.optim.Optimizer:
    """AdamW over ``params`` (parameters, or groups from :func:`param_groups`)."""
    return torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc.get("weight_decay", 1e-4))


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
def validate(net, data: TrainData, weights: dict, type_w=None) -> dict:
    """Mean loss per val source over whole images (no augmentation), and their mean."""
    net.eval()
    per = {}
    for name, items in val_images(data, getattr(net, "stride", 32), next(net.parameters()).device):
        losses = [float(head_losses(net(x), t, weights, type_w)[0]) for x, t in items]
        per[name] = float(np.mean(losses)) if losses else float("nan")
    return {"val_loss": float(np.nanmean(list(per.values()))) if per else float("nan"), "val": per}


def train(cfg: dict, out_dir: str | Path, log=print) -> Path:
    """Train (or resume) a run in ``out_dir``; returns the exported model folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.resolved.yaml")
    tc = cfg["train"]
    torch.set_num_threads(int(tc.get("threads", 2)))
    torch.manual_seed(int(tc.get("seed", 0)))
    net = build_training_net(cfg)
    opt = make_optimizer(param_groups(net, tc), tc)
    weights, type_w = tc.get("loss_weights", {}), tc.get("type_class_weights")
    data = load_data(cfg)
    log(data.describe() + f"; mpp={cfg['data'].get('mpp')}")
    log(f"params={count_params(net):,} MACs/px={net_macs_per_pixel(net):,.0f}")
    job = Job(cfg, out, net, opt, data,
              step_loss=lambda x, t: head_losses(net(x), t, weights, type_w),
              validate=lambda: validate(net, data, weights, type_w),
              meta=lambda: model_meta(cfg, data))
    return run_job(job, log)
