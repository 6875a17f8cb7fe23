"""Frozen teachers for ``distill`` that may expect other input colours and scaling than the student.

A batch reaches the student stain-normalised to the run's target and scaled by the run's ``data.norm``. A
teacher trained with another stain target or normalisation (e.g. the v0.6 MobileNetV2 teacher: RGB in
[-1, 1], its own four-source colour target) sees the same crops mapped its way: back to RGB, recoloured
from the run's target to the teacher's (one Reinhard map between the two fixed targets) and normalised
as the teacher was. When both agree the batch is passed through unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..model.inputs import DEFAULT_NORM, to_input
from ..model.io import load_model
from ..stainnorm import LabStats, normalise


class TeacherInput:
    """Maps the run's input batch to a teacher's input (``__call__``)."""

    def __init__(self, data_norm: dict, data_stain: LabStats | None, tcfg: dict):
        self.norm_in, self.norm_out = dict(data_norm), dict(tcfg.get("norm") or DEFAULT_NORM)
        self.stain_in = data_stain
        self.stain_out = LabStats.from_dict(tcfg.get("stain_norm"))
        self.recolour = (self.stain_in is not None and self.stain_out is not None
                         and self.stain_in.to_dict() != self.stain_out.to_dict())
        self.identity = not self.recolour and self.norm_in == self.norm_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if not self.recolour:  # only the scaling differs: an affine map, no rounding
            rgb = x * self.norm_in["std"] + self.norm_in["mean"]
            return (rgb - self.norm_out["mean"]) / self.norm_out["std"]
        rgb = (x * self.norm_in["std"] + self.norm_in["mean"]).clamp(0, 1).mul(255).round()
        rgb = rgb.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return to_input(normalise(rgb, self.stain_in, self.stain_out), self.norm_out, x.device)


class MappedTeacher(nn.Module):
    """A frozen teacher network behind its :class:`TeacherInput` (same call signature as the network)."""

    def __init__(self, net: nn.Module, mapping: TeacherInput):
        super().__init__()
        self.net, self.mapping, self.cfg = net, mapping, net.cfg

    @torch.no_grad()
    def forward(self, x: torch.Tensor, return_features: bool = False):
        return self.net(self.mapping(x), return_features=return_features)


def load_frozen(name: str) -> tuple[nn.Module, dict]:
    net, cfg = load_model(name, "cpu")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cfg


def load_teacher(cfg: dict, data_norm: dict, data_stain: LabStats | None) -> tuple[nn.Module, dict]:
    """The config's instance teacher, frozen, behind the input map from the run's batches to its own."""
    name = cfg.get("teacher")
    if not name:
        raise InputError("distill: the config needs 'teacher' (a shipped model name or a model folder)")
    net, tcfg = load_frozen(name)
    mpp = cfg["data"].get("mpp")
    if tcfg.get("mpp") and mpp and abs(float(tcfg["mpp"]) - float(mpp)) > 1e-6:
        raise InputError(f"teacher works at mpp {tcfg['mpp']}, the config at {mpp}: they must match")
    return MappedTeacher(net, TeacherInput(data_norm, data_stain, tcfg)), tcfg


class TypeTeacher:
    """A second, typed teacher for the type head only, behind its own input map."""

    def __init__(self, name: str, data_norm: dict, data_stain: LabStats | None):
        self.net, self.cfg = load_frozen(name)
        if not self.cfg.get("types"):
            raise InputError(f"distill.type_teacher {name}: the model has no type head")
        self.mapping = TeacherInput(data_norm, data_stain, self.cfg)

    @torch.no_grad()
    def type_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.mapping(x))[:, 6:]
