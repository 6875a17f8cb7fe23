"""The network's input: RGB tiles (0..255) -> the normalised float tensor every model of the package takes.

One function for inference (``predict``), training and distillation (``train.driver``, the typed teacher of
``train.distill``), LTS fitting (``train.calibrate``) and INT8 calibration (``train.quantize``), so a model
always sees the scaling it was trained with: ``(x / 255 - mean) / std`` with the model's ``norm``.

>>> x = to_input(np.full((1, 2, 2, 3), 255, np.uint8), {"mean": 0.5, "std": 0.25})
>>> tuple(x.shape), x.dtype, float(x[0, 0, 0, 0])
((1, 3, 2, 2), torch.float32, 2.0)
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_NORM = {"mean": 0.5, "std": 0.25}     # the v0.1/v0.2 models' (their config.json has no ``norm``)


def to_input(rgb: np.ndarray, norm: dict | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, H, W, 3) RGB 0..255 (uint8 or float) -> (B, 3, H, W) float32 ``(x / 255 - mean) / std`` on ``device``.

    The array is copied (the caller's is never changed) and moved to ``device`` before it is scaled, so a
    GPU receives the uint8 tile. ``norm``: ``{"mean", "std"}`` (a missing key: :data:`DEFAULT_NORM`'s).
    """
    norm = norm or {}
    mean, std = norm.get("mean", DEFAULT_NORM["mean"]), norm.get("std", DEFAULT_NORM["std"])
    x = torch.from_numpy(np.array(rgb, copy=True))
    if device is not None:
        x = x.to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
