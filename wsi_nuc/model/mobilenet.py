"""A U-Net with an ImageNet-pretrained MobileNetV2 encoder: the v0.3 multi-head (+ nucleus type) model.

The encoder is MobileNetV2 width 1.0 (Sandler et al. 2018) in TensorFlow-slim's layout with batch norm
folded into each convolution (as in the shipped TFLite file it is converted from, see
:mod:`wsi_nuc.train.tflite_import`): convolutions carry a bias, activations are ReLU6, and stride-2
convolutions pad like TensorFlow's ``SAME`` (one pixel at the bottom and right only), so the converted
network reproduces the original's outputs. Encoder features at strides 2, 4, 8, 16 and 32 feed a light
U-Net decoder (bilinear up-sampling, concatenation, two 3x3 conv + BN + ReLU per level) that ends at full
resolution with a small full-resolution stem as its last skip (nucleus borders are a pixel or two wide at
0.5 µm/px). A 1x1 head gives the six instance maps of :mod:`wsi_nuc.model.net` followed by
``len(types) + 1`` nucleus-type logits (background first).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .heads import HEADS

# (expansion t, channels c, repeats n, first stride s): MobileNetV2 Table 2.
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
# Index of the block whose output is the skip feature at strides 2, 4, 8, 16, 32.
MBV2_TAPS = (0, 2, 5, 12, 16)
MBV2_TAP_CHANNELS = (16, 24, 32, 96, 320)
TYPE_NAMES = ("other", "inflammatory", "epithelial", "spindle-shaped")


@dataclass(frozen=True)
class MobileUNetConfig:
    """Architecture of a :class:`MobileUNet`; stored in the model's ``config.json`` as ``arch``."""

    kind: str = "mobileunet"
    decoder: tuple = (64, 48, 32, 24, 16)   # channels at strides 16, 8, 4, 2, 1
    stem: int = 16                          # full-resolution stem channels
    heads: tuple = HEADS
    types: tuple = TYPE_NAMES               # () for a model without a type head
    in_channels: int = 3

    @property
    def out_channels(self) -> int:
        return len(self.heads) + (len(self.types) + 1 if self.types else 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("decoder", "heads", "types"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MobileUNetConfig":
        """From a model's ``arch`` (an unknown key is an InputError naming it, as for ``NetConfig``)."""
        from ..errors import known_fields

        d = {k: tuple(v) if isinstance(v, list) else v for k, v in known_fields(cls, d, "arch").items()}
        return cls(**d)


class SameConv(nn.Conv2d):
    """Conv2d (with bias) padding like TensorFlow's SAME on even-sized inputs: symmetric at stride 1, one
    pixel at the bottom and right at stride 2 (the network takes H, W multiples of 32, so every stride-2
    input is even).

    Stride 1 uses the convolution's own symmetric padding. Stride 2 in training pads explicitly; in eval
    mode it runs the same kernel at stride 1 with symmetric padding and keeps every second output from
    the second on, which is the same function (TF's window at output i starts at input 2i, that is the
    stride-1 output 2i + 1) but stays on the fast INT8 depthwise kernels, which need symmetric padding
    (an explicitly padded INT8 MobileNetV2 ran about 10x slower than fp32). Both paths are traceable.
    """

    def __init__(self, cin, cout, k, stride=1, groups=1):
        p = (k - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, k, stride=stride, padding=p, groups=groups, bias=True)

    def forward(self, x):
        if self.stride[0] == 1:
            return super().forward(x)
        k = self.kernel_size[0]
        if self.training:
            total = k - 2
            return super().forward(F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2)))
        p = (k - 1) // 2
        y = F.conv2d(x, self.weight, self.bias, (1, 1), (p, p), (1, 1), self.groups)
        return y[:, :, 1::2, 1::2]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.expand = SameConv(cin, hidden, 1) if t != 1 else None
        self.depthwise = SameConv(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = SameConv(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = F.relu6(self.expand(y))
        y = F.relu6(self.depthwise(y))
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 1.0 up to its last inverted residual (320 channels, stride 32); batch norm folded."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem = SameConv(in_channels, 32, 3, stride=2)
        blocks, cin = [], 32
        for t, c, n, s in MBV2_SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x) -> list[torch.Tensor]:
        x = F.relu6(self.stem(x))
        feats = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i in MBV2_TAPS:
                feats.append(x)
        return feats


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class MobileUNet(nn.Module):
    """MobileNetV2-encoder U-Net returning ``(B, out_channels, H, W)`` raw outputs (H, W multiples of 32).

    ``forward(x, return_features=True)`` also returns the decoder features (coarse to fine).
    """

    stride = 32

    def __init__(self, cfg: MobileUNetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = MobileNetV2Encoder(cfg.in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.stem, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.stem),
            nn.ReLU(inplace=True))
        skips = list(MBV2_TAP_CHANNELS[:-1][::-1]) + [cfg.stem]   # 96, 32, 24, 16, stem
        dec, cin = [], MBV2_TAP_CHANNELS[-1]
        for c, skip in zip(cfg.decoder, skips):
            dec.append(_block(cin + skip, c))
            cin = c
        self.dec = nn.ModuleList(dec)
        self.head = nn.Conv2d(cin, cfg.out_channels, 1)
        with torch.no_grad():  # sparse heads start near their prior (CenterNet-style bias init)
            for name, b in (("boundary", -2.0), ("centre", -4.0)):
                self.head.bias[cfg.heads.index(name)] = b

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.encoder(x)
        skips = feats[:-1][::-1] + [self.stem(x)]
        y = feats[-1]
        outs = []
        for block, skip in zip(self.dec, skips):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
            outs.append(y)
        out = self.head(y)
        return (out, outs) if return_features else out


def encoder_macs_per_pixel() -> float:
    """Multiply-accumulates per input pixel of the MobileNetV2 encoder (to the 320-channel block)."""
    total, cin, stride = 9 * 3 * 32 / 4, 32, 2
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            hidden = cin * t
            s_i = s if i == 0 else 1
            pre = 1 / stride**2                       # pixels per input pixel before this block
            stride *= s_i
            post = 1 / stride**2
            total += (cin * hidden * pre if t != 1 else 0) + 9 * hidden * post + hidden * c * post
            cin = c
    return total


def macs_per_pixel(cfg: MobileUNetConfig) -> float:
    """Multiply-accumulates per input pixel of the whole network (BN/ReLU/interpolation ignored)."""
    total = encoder_macs_per_pixel() + 9 * cfg.in_channels * cfg.stem
    skips = list(MBV2_TAP_CHANNELS[:-1][::-1]) + [cfg.stem]
    cin = MBV2_TAP_CHANNELS[-1]
    for level, (c, skip) in enumerate(zip(cfg.decoder, skips)):
        area = 1 / 4 ** (4 - level)                   # strides 16, 8, 4, 2, 1
        total += 9 * ((cin + skip) * c + c * c) * area
        cin = c
    return total + cin * cfg.out_channels
