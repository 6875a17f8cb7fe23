"""The multi-head U-Net: one encoder-decoder, one 1x1 head per output map.

Heads (channels of the output tensor, in this order):

- ``fg``       foreground logit
- ``boundary`` logit of the one-pixel rim of each nucleus (touching borders weighted up in training)
- ``dist``     per-nucleus normalised distance to the border, 0 at the rim, 1 at the centre
- ``hv``       HoVer-Net-style horizontal and vertical offsets to the nucleus centre, in [-1, 1]
- ``centre``   logit of a small Gaussian blob at each nucleus centroid

BatchNorm is used (not GroupNorm): batch 8 of 256-px crops gives stable statistics, and BatchNorm folds
into the preceding convolution at inference, which both speeds up the CPU path and makes static INT8
quantisation exact to set up.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
from torch import nn
import torch.nn.functional as F

from .heads import HEADS  # noqa: F401 - the U-Net's heads are the package's (re-exported)


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a U-Net; stored in the model's ``config.json``."""

    base: int = 32                 # channels at full resolution
    depth: int = 4                 # number of resolution levels (depth - 1 downsamplings)
    max_channels: int = 256
    in_channels: int = 3
    heads: tuple = HEADS
    types: tuple = ()              # nucleus-type names: a type head of len(types) + 1 logits follows

    def channels(self) -> list[int]:
        return [min(self.base * 2**i, self.max_channels) for i in range(self.depth)]

    @property
    def out_channels(self) -> int:
        return len(self.heads) + (len(self.types) + 1 if self.types else 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = list(self.heads)
        d["types"] = list(self.types)
        if not self.types:
            del d["types"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        """From a model's ``arch`` (an unknown key is an InputError; ``kind: unet`` names this family)."""
        from ..errors import known_fields

        d = dict(d)
        if d.get("kind") == "unet":
            del d["kind"]
        d = known_fields(cls, d, "arch")
        for k in ("heads", "types"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net returning ``(B, len(heads), H, W)`` raw outputs; H and W must be multiples of 2**(depth-1).

    ``forward(x, return_features=True)`` also returns the decoder features (coarse to fine), which
    distillation matches with 1x1 adapters.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels()
        self.enc = nn.ModuleList()
        cin = cfg.in_channels
        for c in ch:
            self.enc.append(_block(cin, c))
            cin = c
        self.dec = nn.ModuleList()
        for i in range(len(ch) - 2, -1, -1):
            self.dec.append(_block(ch[i + 1] + ch[i], ch[i]))
        self.head = nn.Conv2d(ch[0], cfg.out_channels, 1)
        with torch.no_grad():  # sparse heads start near their prior (CenterNet-style bias init)
            for name, b in (("boundary", -2.0), ("centre", -4.0)):
                if name in cfg.heads:
                    self.head.bias[cfg.heads.index(name)] = b

    @property
    def stride(self) -> int:
        return 2 ** (self.cfg.depth - 1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        feats = []
        for j, block in enumerate(self.dec):
            skip = skips[-2 - j]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
            feats.append(x)
        out = self.head(x)
        return (out, feats) if return_features else out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(cfg: NetConfig) -> float:
    """Multiply-accumulates per input pixel of the convolutions (BatchNorm/ReLU/pool ignored)."""
    ch = cfg.channels()
    total = 0.0
    cin = cfg.in_channels
    for i, c in enumerate(ch):
        total += 9 * (cin * c + c * c) / 4**i
        cin = c
    for i in range(len(ch) - 2, -1, -1):
        total += 9 * ((ch[i + 1] + ch[i]) * ch[i] + ch[i] * ch[i]) / 4**i
    total += ch[0] * cfg.out_channels
    return total


def build_net(arch: dict) -> nn.Module:
    """The network an ``arch`` dict describes: ``kind: mobileunet`` (v0.3) or the plain U-Net (default)."""
    if arch.get("kind") == "mobileunet":
        from .mobilenet import MobileUNet, MobileUNetConfig

        return MobileUNet(MobileUNetConfig.from_dict(arch))
    return UNet(NetConfig.from_dict(arch))


def net_macs_per_pixel(net: nn.Module) -> float:
    if getattr(net.cfg, "kind", None) == "mobileunet":
        from .mobilenet import macs_per_pixel as mobile_macs

        return mobile_macs(net.cfg)
    return macs_per_pixel(net.cfg)
