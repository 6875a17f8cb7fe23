"""Prepare a MobileUNet to hand a narrower full-resolution stage to a student: best channels first.

The full-resolution stage (the last decoder level's two 3x3 convolutions) and the stem beside it are where
the MobileUNet spends most of its time (``docs/training.md``). A student narrower there starts from its
source's first channels (``distill.init_narrow``, :func:`wsi_nuc.train.distill.warm_start`).
:func:`narrow_full_resolution` first puts the source's channels in order, on a sample of training crops:
a channel's importance is the spread (standard deviation) of its activation times the size of the weights
that read it; and the mean activation of each channel the student will not have is folded into what reads
it (the next BatchNorm's running mean, or the head's bias), so a dropped channel costs only its variation.
A data-free order (BatchNorm scale and shift times the reading weights, as in network slimming) started
the v0.6 teacher's narrowed copy at 0.13 mean a-AJI on the val sets, plain first channels at 0.43, this
one at 0.49 (ordered on 8 MoNuSeg crops; the teacher: 0.53), all before any training
(``benchmarks/results/slim-student-v06-probe.json``).
"""
from __future__ import annotations

import torch
from torch import nn


def sample_crops(data, n: int = 8, size: int = 256, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) network input: random crops of the training images of ``data`` (a
    :class:`wsi_nuc.train.driver.TrainData`, images already stain-normalised), as quantisation takes them."""
    from ..model.inputs import to_input
    from .quantize import crops_of
    from .sources import all_samples

    return to_input(crops_of(all_samples(data.train), n, size, seed), data.norm)


def _permute_out(conv: nn.Conv2d, bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    conv.weight.data = conv.weight.data[order].clone()
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        t.data = t.data[order].clone()


def _permute_in(conv: nn.Conv2d, order: torch.Tensor, start: int = 0) -> None:
    w = conv.weight.data.clone()
    w[:, start:start + len(order)] = conv.weight.data[:, start + order]
    conv.weight.data = w


def _order_and_fold(act, conv, bn, reader, reader_bn, start: int, keep: int) -> None:
    """Order ``conv``'s output channels (activation ``act``, read by ``reader`` from input channel ``start``)
    by importance, then fold the mean of the channels from ``keep`` on into what ``reader`` feeds."""
    mean, spread = act.mean(dim=(0, 2, 3)), act.std(dim=(0, 2, 3))
    cols = reader.weight.data[:, start:start + len(mean)]
    order = torch.argsort(spread * cols.flatten(2).norm(dim=(0, 2)), descending=True)
    _permute_out(conv, bn, order)
    _permute_in(reader, order, start)
    dropped = reader.weight.data[:, start + keep:start + len(mean)].sum(dim=(2, 3))
    shift = dropped @ mean[order][keep:]
    if reader_bn is not None:
        reader_bn.running_mean.data -= shift         # reader has no bias: its BatchNorm takes the constant
    else:
        reader.bias.data += shift


@torch.no_grad()
def narrow_full_resolution(net: nn.Module, x: torch.Tensor, stem: int, last: int) -> nn.Module:
    """Make ``net`` (a MobileUNet, in place) ready to be sliced to ``stem`` stem and ``last`` last-level
    channels: its channels ordered by importance on the input ``x``, the dropped ones' means folded in.
    Unsliced, the network computes what it did, except for the folded means."""
    net.eval()
    acts = {}
    block = net.dec[-1]
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: acts.__setitem__(k, o.detach()))
             for k, m in (("stem", net.stem[2]), ("a", block[2]), ("b", block[5]))]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    conv_a, bn_a, conv_b, bn_b = block[0], block[1], block[3], block[4]
    up = conv_a.weight.shape[1] - net.stem[0].weight.shape[0]       # [up-sampled, stem] concatenation
    _order_and_fold(acts["stem"], net.stem[0], net.stem[1], conv_a, bn_a, up, stem)
    _order_and_fold(acts["a"], conv_a, bn_a, conv_b, bn_b, 0, last)
    _order_and_fold(acts["b"], conv_b, bn_b, net.head, None, 0, last)
    return net
