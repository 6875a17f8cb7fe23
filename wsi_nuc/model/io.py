"""Model folders: ``config.json`` + ``model.safetensors`` (+ ``card.md``); shipped names or paths."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: the driver of `wsi-nuc run` never needs it
    import torch

    from .net import UNet

SHIPPED = Path(__file__).resolve().parent.parent / "models"
# The default is the best accuracy per CPU-second (see the README's model table): the INT8 student on a
# CPU (val a-AJI within 0.01 of the teacher's at about a fifth of its network cost); on a CUDA device the
# fp32 teacher (with fp16 autocast), since INT8 kernels are CPU kernels and the GPU makes its cost small.
DEFAULT_MODEL = "he-student-int8"
CUDA_DEFAULT_MODEL = "he-teacher"


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch (about 1 s) where Linux shows no NVIDIA driver."""
    if os.path.isdir("/proc/driver") and not os.path.exists("/proc/driver/nvidia"):
        return False
    import torch

    return torch.cuda.is_available()


def default_model(device: str = "auto") -> str:
    if device == "cuda" or (device == "auto" and cuda_available()):
        return CUDA_DEFAULT_MODEL
    return DEFAULT_MODEL


def resolve_model_dir(name_or_path: str | Path | None, device: str = "auto") -> Path:
    """A shipped model name (``wsi_nuc/models/<name>``) or a folder holding ``config.json``;
    None means the default for ``device``."""
    name = str(name_or_path or default_model(device))
    cand = Path(name)
    if not cand.is_dir():
        cand = SHIPPED / name
    if not (cand / "config.json").is_file():
        known = ", ".join(shipped_models()) or "none"
        raise InputError(f"{name}: not a model folder or shipped model (shipped: {known})")
    return cand


def shipped_models() -> list[str]:
    if not SHIPPED.is_dir():
        return []
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "config.json").is_file())


def read_model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def save_model(model: "UNet", model_dir: str | Path, meta: dict, half: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors``; ``half`` stores weights as fp16."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    save_file(state, str(model_dir / "model.safetensors"))
    cfg = dict(meta)
    cfg["arch"] = model.cfg.to_dict()
    cfg["storage_dtype"] = "float16" if half else "float32"
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return model_dir


def load_model(name_or_path=None, device: "str | torch.device" = "cpu") -> "tuple[UNet, dict]":
    """Load a model folder without pickle; returns (network in eval mode on ``device``, config dict)."""
    import torch
    from safetensors.torch import load_file

    from .net import build_net

    model_dir = resolve_model_dir(name_or_path, torch.device(device).type)
    cfg = read_model_config(model_dir)
    if cfg.get("quantized") == "int8":
        from .int8 import load_int8

        net = load_int8(model_dir, device)
    else:
        net = build_net(cfg["arch"])
        state = load_file(str(model_dir / "model.safetensors"))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        net.load_state_dict(state)
        net.eval().to(device)
    cfg["path"] = str(model_dir)
    cfg.setdefault("name", model_dir.name)
    return net, cfg


def model_stride(cfg: dict) -> int:
    """The network's total stride from a model's config (without torch): tiles are aligned to it so a
    pixel's prediction does not depend on which tile computed it."""
    arch = cfg.get("arch") or {}
    if arch.get("kind") == "mobileunet":
        return 32
    return 2 ** (int(arch.get("depth", 4)) - 1)
