"""``--engine auto``: which engine runs a model fastest on this machine (placeholder, see below)."""
from __future__ import annotations

from pathlib import Path


def choose_engine(model_dir: Path, cfg: dict, device: str = "cpu") -> str:
    from .engines import default_engine

    return default_engine(cfg, device)
