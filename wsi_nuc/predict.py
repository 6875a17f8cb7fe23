"""Batched inference on a device: RGB tiles in, per-pixel head maps out (probabilities / offsets)."""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .model.io import read_model_config, resolve_model_dir
from .refine import RefineParams, calibrated_fg, load_lts, refine_maps

# Output channels of ``Predictor.maps`` (after the activations).
MAP_CHANNELS = ("fg", "boundary", "dist", "hv_x", "hv_y", "centre")
N_MAPS = len(MAP_CHANNELS)  # a type head's softmax (background + K types) follows these


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import InputError

        raise InputError("--device cuda: no CUDA device is available here")
    return torch.device(device)


@dataclass
class Predictor:
    """A loaded network on a device, with its config (working mpp, normalisation, post-processing)."""

    net: torch.nn.Module
    config: dict
    device: torch.device
    lts: torch.nn.Module | None = None      # local temperature scaling head (calibrated fg), if fitted
    engine: str = "torch"                   # what runs the network (wsi_nuc.model.engines)

    @property
    def mpp(self) -> float | None:
        return self.config.get("mpp")

    @cached_property
    def stain_target(self):
        """The training images' CIELAB statistics when the model normalises stain, else None."""
        from .stainnorm import LabStats

        return LabStats.from_dict(self.config.get("stain_norm"))

    @cached_property
    def types(self) -> tuple[str, ...]:
        """Names of the model's nucleus types (``"types"`` in config.json), in channel order; () without a
        type head. See :mod:`wsi_nuc.type_map`."""
        from .type_map import model_types

        return model_types(self.config)

    @property
    def stride(self) -> int:
        return int(getattr(self.net, "stride", 16))

    @torch.inference_mode()
    def maps(self, images: np.ndarray, stain=None) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C, H, W) float32 maps; pads to the stride by mirroring, crops back.

        C is 6 (:data:`MAP_CHANNELS`), or 6 + 1 + K for a model with K nucleus types: channels 6.. are then
        the softmax over background and the types (``type_prob``, see :func:`wsi_nuc.type_map.type_prob_map`).

        A model with ``stain_norm`` in its config first Reinhard-normalises the images: from ``stain``
        (a :class:`~wsi_nuc.stainnorm.LabStats` of the slide or image they come from) when given, else
        from each image's own statistics.
        """
        target = self.stain_target
        if target is not None:
            from .stainnorm import lab_stats, normalise

            images = np.stack([normalise(im, stain if stain is not None else lab_stats(im), target)
                               for im in images])
        b, h, w, _ = images.shape
        s = self.stride
        ph, pw = -h % s, -w % s
        if ph or pw:
            images = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="symmetric")
        norm = self.config.get("norm", {"mean": 0.5, "std": 0.25})
        x = torch.from_numpy(np.array(images, copy=True)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0).sub_(norm["mean"]).div_(norm["std"])
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.net(x)
        else:
            out = self.net(x)
        out = out.float().contiguous()  # INT8 graphs return channels-last: slices of it are slow
        act = torch.empty_like(out)
        act[:, 0] = calibrated_fg(out[:, 0], self.lts, x)
        act[:, [1, 2, 5]] = torch.sigmoid(out[:, [1, 2, 5]])
        act[:, 3:5] = torch.tanh(out[:, 3:5])
        nt = len(self.types)
        if nt:
            if out.shape[1] < N_MAPS + 1 + nt:
                raise ValueError(f"model {self.config.get('name')}: config.json names {nt} types but the network "
                                 f"has {out.shape[1]} output channels (need {N_MAPS + 1 + nt})")
            act[:, N_MAPS:N_MAPS + 1 + nt] = torch.softmax(out[:, N_MAPS:N_MAPS + 1 + nt], dim=1)
            act = act[:, :N_MAPS + 1 + nt]
        else:
            act = act[:, :N_MAPS]
        act = act[:, :, :h, :w]
        rp = RefineParams.from_dict(self.config.get("refine"))
        if rp.enabled:
            act = refine_maps(act, self.mpp, rp)
        return act.cpu().numpy()


_CACHE: dict = {}


def get_predictor(model: str | None = None, device: str = "auto", threads: int | None = None,
                  engine: str | None = None) -> Predictor:
    """The process's predictor for (model, device, engine): loaded once per worker process, then reused.

    ``engine``: None runs the model as it is stored (an INT8 folder by torch-int8, an fp32 one by
    torch-fp32); ``auto`` picks the fastest for this machine (:mod:`wsi_nuc.model.engine_choice`); or a
    name of :data:`wsi_nuc.model.engines.ENGINES`.
    """
    model = str(resolve_model_dir(model, device))
    cfg = read_model_config(Path(model))
    if device == "auto" and cfg.get("quantized") == "int8":
        device = "cpu"  # INT8 kernels are CPU kernels
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    if engine is None:
        from .model.engine_choice import default_engine

        engine = default_engine(cfg, dev.type)
    elif engine == "auto":
        from .model.engine_choice import choose_engine

        engine = choose_engine(Path(model), cfg, dev.type)
    key = (str(model), str(dev), engine, os.getpid())
    if key not in _CACHE:
        from .model.engines import build_engine

        net = build_engine(engine, Path(model), cfg, dev)
        cfg = dict(cfg, path=str(model))
        cfg.setdefault("name", Path(model).name)
        lts = load_lts(cfg["path"], cfg)
        _CACHE[key] = Predictor(net, cfg, dev, lts.to(dev).eval() if lts is not None else None, engine)
    return _CACHE[key]
