"""The multi-head U-Net: one encoder-decoder, one 1x1 head per output map.

Heads (channels of the output tensor, in this order):

- ``fg``       foreground logit
- ``boundary`` logit of the one-pixel rim of each nucleus (touching borders weighted up in training)
- ``dist``     per-nucleus normalised distance to the border, 0 at the rim, 1 at the centre
- ``hv``       HoVer-Net-style horizontal and vertical offsets to the nucleus centre, in [-1, 1]
- ``centre``   logit of a small Gaussian blob at each nucleus centroid

A typed net appends ``len(types) + 1`` type logits (background first). Either the 1x1 head gives them
(``type_branch: 0``, v0.3.1), or a light **type branch** (``type_branch: C``): a 3x3 conv of C channels on the
encoder's deepest features, upsampled and joined with the decoder's quarter-resolution features by two 3x3
convs, upsampled and joined with its half-resolution features by a 1x1 conv, then 1x1 to the logits at half
resolution, upsampled. The branch reads the trunk and never writes to it, so a
branch trained on a frozen trunk leaves the instance outputs bit for bit those of the trunk it was given.

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
    type_branch: int = 0           # channels of the type branch (0: type logits from the 1x1 head)

    def channels(self) -> list[int]:
        return [min(self.base * 2**i, self.max_channels) for i in range(self.depth)]

    @property
    def out_channels(self) -> int:
        return len(self.heads) + (len(self.types) + 1 if self.types else 0)

    @property
    def head_channels(self) -> int:
        """Channels of the 1x1 head: all outputs, or the instance heads only when a type branch exists."""
        return len(self.heads) if self.types and self.type_branch else self.out_channels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = list(self.heads)
        d["types"] = list(self.types)
        if not self.types:
            del d["types"]
        if not self.type_branch:
            del d["type_branch"]
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


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TypeBranch(nn.Module):
    """Type logits at half resolution: the encoder's deepest features (the widest context) up to the decoder's
    quarter-resolution features, then its half-resolution ones."""

    def __init__(self, deep: int, quarter: int, half: int, c: int, n_out: int):
        super().__init__()
        self.deep = _conv_bn(deep, c, 3)
        self.quarter = nn.Sequential(_conv_bn(c + quarter, c, 3), _conv_bn(c, c, 3))
        self.join = _conv_bn(c + half, c, 1)
        self.logits = nn.Conv2d(c, n_out, 1)

    def forward(self, f_deep: torch.Tensor, f_quarter: torch.Tensor, f_half: torch.Tensor) -> torch.Tensor:
        d = F.interpolate(self.deep(f_deep), size=f_quarter.shape[-2:], mode="bilinear", align_corners=False)
        q = self.quarter(torch.cat([d, f_quarter], dim=1))
        q = F.interpolate(q, size=f_half.shape[-2:], mode="bilinear", align_corners=False)
        return self.logits(self.join(torch.cat([q, f_half], dim=1)))


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
        self.head = nn.Conv2d(ch[0], cfg.head_channels, 1)
        self.type_branch = None
        self.trunk_frozen = False   # training only the type branch: the trunk's BatchNorm stays in eval
        if cfg.head_channels < cfg.out_channels:
            if cfg.depth < 4:
                raise ValueError("a type branch needs depth >= 4 (decoder features at 1/4 and 1/2)")
            self.type_branch = TypeBranch(ch[-1], ch[2], ch[1], cfg.type_branch, len(cfg.types) + 1)
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
        if self.type_branch is not None:
            t = self.type_branch(skips[-1], feats[-3], feats[-2])
            t = F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out = torch.cat([out, t], dim=1)
        return (out, feats) if return_features else out

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.trunk_frozen:
            for m in (self.enc, self.dec, self.head):
                m.train(False)
        return self

    def freeze_trunk(self) -> list:
        """Train the type branch only: the trunk's weights fixed and its BatchNorm statistics kept.
        Returns the branch's parameters (for the optimiser)."""
        if self.type_branch is None:
            raise ValueError("train.trainable: type_branch needs model.type_branch > 0")
        for m in (self.enc, self.dec, self.head):
            for p in m.parameters():
                p.requires_grad_(False)
        self.trunk_frozen = True
        return list(self.type_branch.parameters())


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
    total += ch[0] * cfg.head_channels
    if cfg.head_channels < cfg.out_channels:   # the type branch (convs at 1/8, 1/4 and 1/2 resolution)
        c = cfg.type_branch
        total += 9 * ch[-1] * c / 4 ** (cfg.depth - 1) + 9 * ((c + ch[2]) * c + c * c) / 16
        total += ((c + ch[1]) * c + c * (len(cfg.types) + 1)) / 4
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
