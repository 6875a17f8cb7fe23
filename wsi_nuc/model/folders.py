"""Where model folders are and what their ``config.json`` says: shipped names, the default per device, and the
config read with one-line errors. Plain Python (no torch): the ``run`` driver and the INT8 loader use it, and
:mod:`.io` (loading and saving the networks) re-exports it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

SHIPPED = Path(__file__).resolve().parent.parent / "models"
# The default is the best accuracy per CPU-second (see the README's model table): on a CPU the INT8 student
# with its nucleus-type branch (he-types-int8 v0.5); on a CUDA device the same network in fp32 (he-types
# v0.5, with fp16 autocast and types), since INT8 kernels are CPU kernels. It scores above he-teacher v0.2,
# the CUDA default before, on every val set (its card).
DEFAULT_MODEL = "he-types-int8"
CUDA_DEFAULT_MODEL = "he-types"


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
    """A model folder's ``config.json`` (a JSON object), or InputError naming the file and the cause."""
    from ..json_in import read_json

    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise InputError(f"{path}: no such file (a model folder holds config.json and model.safetensors)")
    cfg = read_json(path, "model config", max_bytes=64 << 20)    # size, depth, finite numbers (one owner)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: not a model config (a JSON object expected, got {type(cfg).__name__})")
    return cfg
