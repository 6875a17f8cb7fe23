"""The network, its heads, and model folders (load/save)."""
from .net import HEADS, NetConfig, UNet
from .io import load_model, save_model, resolve_model_dir, shipped_models

__all__ = ["HEADS", "NetConfig", "UNet", "load_model", "save_model", "resolve_model_dir", "shipped_models"]
