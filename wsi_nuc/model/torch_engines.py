"""The PyTorch engines' networks (``torch-fp32``; the INT8 graph is :mod:`wsi_nuc.model.int8`)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def strip_observers(prepared: nn.Module) -> nn.Module:
    """A prepared FX graph (BatchNorm folded, observers inserted) without its observers: the fp32 network
    the INT8 graph approximates."""
    g = prepared.graph
    for n in list(g.nodes):
        if n.op == "call_module" and "activation_post_process" in str(n.target):
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
    g.lint()
    prepared.recompile()
    for name in [k for k, _ in prepared.named_children() if k.startswith("activation_post_process")]:
        delattr(prepared, name)
    return prepared


def folded_fp32(model_dir: Path, cfg: dict) -> nn.Module:
    """The BatchNorm-folded fp32 network of a model folder (INT8 folder: its stored folded weights)."""
    from safetensors.torch import load_file

    from .int8 import prepare
    from .net import build_net

    net = build_net(cfg["arch"])
    if cfg.get("quantized") == "int8":
        q = cfg.get("quantization") or {}
        prepared = prepare(net, q.get("reduce_range", True))
        prepared.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")), strict=False)
        folded = strip_observers(prepared).eval()
    else:
        state = load_file(str(Path(model_dir) / "model.safetensors"))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        folded = _fold_unet(net.eval()) if cfg["arch"].get("kind", "unet") == "unet" else net.eval()
    return folded


def _fold_unet(net: nn.Module) -> nn.Module:
    """Conv + BatchNorm + ReLU of every U-Net block fused into one convolution (eval mode)."""
    from torch.ao.quantization import fuse_modules

    for block in [*net.enc, *net.dec]:
        fuse_modules(block, [["0", "1", "2"], ["3", "4", "5"]], inplace=True)
    return net


class TorchFp32(nn.Module):
    """An fp32 network run channels-last (oneDNN's preferred layout on CPU)."""

    def __init__(self, net: nn.Module, cfg, stride: int):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.cfg, self.stride = cfg, int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))
