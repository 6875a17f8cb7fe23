"""Offline knowledge distillation of the (frozen) teacher U-Net into a small student U-Net.

Per training step, on the same augmented batch the supervised loop draws:

1. the frozen teacher gives its raw head outputs and decoder features (no gradient);
2. the student is trained on a weighted sum of

   - ``supervised``: the ordinary head losses on the labels (:func:`head_losses`, ``train.loss_weights``);
   - ``kd_fg`` / ``kd_boundary`` / ``kd_centre``: binary KL divergence between the teacher's and the
     student's temperature-softened probabilities ``sigmoid(z / T)``, scaled by ``T**2`` (Hinton et al.);
   - ``kd_dist`` / ``kd_hv``: MSE between the student's and the teacher's activated regression maps
     (``sigmoid(dist)``, ``tanh(hv)``);
   - ``feat``: intermediate-feature matching (FitNets): a 1x1 conv adapter maps each chosen student decoder
     level onto the teacher's channels; MSE, normalised by the teacher feature's mean square so levels
     of different magnitude count alike. Adapters exist only during training: they are checkpointed (to
     resume) but never exported with the student.

   Rare pixels are re-weighted in every KD term: the per-pixel KD loss is multiplied by
   ``1 + rare_weight * (weight - 1)``, where ``weight`` is the training target's pixel weight map (high,
   5 by default, on the borders between touching nuclei), and normalised by the sum of the weights. So
   the student is not allowed to trade those few, decisive pixels for the bulk of easy ones.
   ``rare_weight: 0`` gives uniform KD weights.

Every term has a weight under ``distill:`` in the config; weight 0 switches it off (and skips its
computation). ``kd_type`` distils the nucleus-type logits (softmax KL at temperature T, times T**2) when
both networks have a type head. ``init_encoder_from_teacher: true`` starts a student whose encoder has the
teacher's shape from the teacher's (fine-tuned) encoder. ``trainable: type_branch`` trains only a type branch
(:class:`wsi_nuc.model.net.TypeBranch`) on a frozen, warm-started trunk, so the instance outputs stay those of
``init_student_from``; the instance teacher is then not run when no instance KD term is on. The run folder, checkpoints (keys
model/optim/step/cpu_s + adapters), resume, logs and export are :func:`wsi_nuc.train.driver.run_job`'s.
A teacher trained with another stain target or input scaling sees the batch mapped its way
(:mod:`wsi_nuc.train.teachers`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..config import write_config
from ..errors import InputError
from ..model.io import load_model
from ..model.net import build_net, count_params, net_macs_per_pixel
from .driver import Job, load_data, run_job, val_images
from .loop import make_optimizer, model_meta
from .losses import head_losses
from .speed import fp32_losses, step_settings
from .teachers import TypeTeacher, load_teacher

# Defaults of the ``distill:`` config section.
DISTILL_DEFAULTS = {
    "temperature": 2.0,
    "supervised": 1.0,       # weight of head_losses on the labels
    "kd_fg": 1.0,
    "kd_boundary": 1.0,
    "kd_centre": 0.5,
    "kd_dist": 2.0,
    "kd_hv": 1.0,
    "kd_type": 1.0,          # softmax KL of the type logits (models with a type head)
    "feat": 0.5,
    "feature_levels": [0, 1, 2],   # decoder levels counted from the finest (0 = full resolution)
    "rare_weight": 1.0,      # KD pixel weight = 1 + rare_weight * (weight_map - 1)
    "max_params": 2_000_000,
    "min_flop_ratio": 4.0,   # teacher MACs/px / student MACs/px
    "init_encoder_from_teacher": False,
    "init_student_from": None,   # a model (name or folder) of the student's architecture to start from
    "init_narrow": False,        # and where it is narrower, from the source's best channels (train/narrow.py)
    "type_teacher": None,        # a typed model whose type logits teach the student's type head
    "trainable": "all",          # "type_branch": train only the student's type branch on a frozen trunk
}

SIGMOID_HEADS = {"kd_fg": 0, "kd_boundary": 1, "kd_centre": 5}


def distill_settings(cfg: dict) -> dict:
    d = dict(DISTILL_DEFAULTS)
    d.update(cfg.get("distill") or {})
    unknown = set(d) - set(DISTILL_DEFAULTS)
    if unknown:
        raise InputError(f"distill: unknown keys {sorted(unknown)} (known: {sorted(DISTILL_DEFAULTS)})")
    return d


def decoder_channels(net: nn.Module) -> list[int]:
    """Channels of a network's decoder features from the finest level (0 = full resolution) up."""
    cfg = net.cfg
    if getattr(cfg, "kind", None) == "mobileunet":
        return list(cfg.decoder)[::-1]
    return cfg.channels()[:cfg.depth - 1]


class FeatureAdapters(nn.Module):
    """1x1 conv adapters from student decoder channels to teacher decoder channels, one per level.

    ``levels`` count decoder levels from the finest (0 = full resolution, 1 = half, ...): the same level
    has the same resolution in any two networks of these families.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, levels):
        super().__init__()
        sc, tc = decoder_channels(student), decoder_channels(teacher)
        n = min(len(sc), len(tc))
        self.levels = [int(k) for k in levels]
        bad = [k for k in self.levels if not 0 <= k < n]
        if bad:
            raise InputError(f"distill.feature_levels {bad}: must lie in 0..{n - 1} for these networks")
        self.convs = nn.ModuleList(nn.Conv2d(sc[k], tc[k], 1) for k in self.levels)

    def forward(self, s_feats: list, t_feats: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs (adapted student feature, teacher feature); feature lists are coarse to fine."""
        pairs = []
        for k, conv in zip(self.levels, self.convs):
            s, t = s_feats[-1 - k], t_feats[-1 - k]
            a = conv(s)
            if a.shape[-2:] != t.shape[-2:]:
                a = F.interpolate(a, size=t.shape[-2:], mode="bilinear", align_corners=False)
            pairs.append((a, t))
        return pairs


def binary_kl(s_logit: torch.Tensor, t_logit: torch.Tensor, T: float) -> torch.Tensor:
    """Per-pixel KL(teacher || student) of Bernoulli distributions at temperature T, times T**2."""
    ls_p, ls_n = F.logsigmoid(s_logit / T), F.logsigmoid(-s_logit / T)
    lt_p, lt_n = F.logsigmoid(t_logit / T), F.logsigmoid(-t_logit / T)
    pt = lt_p.exp()
    kl = pt * (lt_p - ls_p) + (1 - pt) * (lt_n - ls_n)
    return kl * (T * T)


def _wmean(loss: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean of a (B, H, W) or (B, C, H, W) loss map by a (B, H, W) weight map."""
    if loss.dim() == 4:
        loss = loss.mean(dim=1)
    return (loss * w).sum() / w.sum().clamp(min=1e-6)


@fp32_losses
def kd_losses(s_out: torch.Tensor, t_out: torch.Tensor, pix_w: torch.Tensor, T: float,
              weights: dict, type_pix_w: torch.Tensor | None = None) -> dict:
    """Head-wise KD terms (unweighted values) for the terms whose weight is non-zero; ``type_pix_w``
    (default ``pix_w``) weighs the type term's pixels."""
    parts = {}
    for key, c in SIGMOID_HEADS.items():
        if weights.get(key, 0):
            parts[key] = _wmean(binary_kl(s_out[:, c], t_out[:, c], T), pix_w)
    if weights.get("kd_dist", 0):
        parts["kd_dist"] = _wmean((torch.sigmoid(s_out[:, 2]) - torch.sigmoid(t_out[:, 2])) ** 2, pix_w)
    if weights.get("kd_hv", 0):
        parts["kd_hv"] = _wmean((torch.tanh(s_out[:, 3:5]) - torch.tanh(t_out[:, 3:5])) ** 2, pix_w)
    if weights.get("kd_type", 0) and s_out.shape[1] > 6 and s_out.shape[1] == t_out.shape[1]:
        ls, lt = F.log_softmax(s_out[:, 6:] / T, 1), F.log_softmax(t_out[:, 6:] / T, 1)
        parts["kd_type"] = _wmean((lt.exp() * (lt - ls)).sum(1) * (T * T),
                                  pix_w if type_pix_w is None else type_pix_w)
    return parts


@fp32_losses
def feature_loss(pairs, pix_w: torch.Tensor) -> torch.Tensor:
    """Mean over levels of the normalised, rare-pixel-weighted feature MSE."""
    total = 0.0
    for a, t in pairs:
        w = pix_w.unsqueeze(1)
        if w.shape[-2:] != t.shape[-2:]:
            w = F.adaptive_avg_pool2d(w, t.shape[-2:])
        scale = t.detach().pow(2).mean().clamp(min=1e-6)
        total = total + _wmean((a - t) ** 2, w[:, 0]) / scale
    return total / max(1, len(pairs))


def check_student(student: nn.Module, teacher: nn.Module, d: dict) -> dict:
    """Param and FLOP budget of the student against the teacher; raises if over budget."""
    n = count_params(student)
    s_macs, t_macs = net_macs_per_pixel(student), net_macs_per_pixel(teacher)
    ratio = t_macs / s_macs
    if n > d["max_params"]:
        raise InputError(f"student has {n:,} params, over distill.max_params {d['max_params']:,}")
    if ratio < d["min_flop_ratio"]:
        raise InputError(f"student MACs/px {s_macs:,.0f} is only {ratio:.2f}x fewer than the teacher's "
                         f"{t_macs:,.0f} (distill.min_flop_ratio {d['min_flop_ratio']})")
    return {"params": n, "student_macs_per_px": s_macs, "teacher_macs_per_px": t_macs,
            "flop_ratio": round(ratio, 3)}


INSTANCE_KD = ("kd_fg", "kd_boundary", "kd_centre", "kd_dist", "kd_hv", "feat")


def _step_loss(student, teacher, adapters, x, t, sup_w, d, type_w=None, type_teacher=None):
    s_out, s_feats = student(x, return_features=True)
    with torch.no_grad():
        if type_teacher is not None and not any(d[k] for k in INSTANCE_KD):
            t_out, t_feats = torch.cat([s_out[:, :6].detach(), type_teacher.type_logits(x)], 1), None
        else:
            t_out, t_feats = teacher(x, return_features=True)
            if type_teacher is not None:
                t_out = torch.cat([t_out[:, :6], type_teacher.type_logits(x)], 1)
    parts = {}
    total = 0.0
    if d["supervised"]:
        sup, sparts = head_losses(s_out, t, sup_w, type_w)
        total = total + d["supervised"] * sup
    else:  # still logged, without a gradient
        with torch.no_grad():
            sup, sparts = head_losses(s_out, t, sup_w, type_w)
    parts.update(sparts)
    parts["supervised"] = float(sup.detach())
    pix_w = 1.0 + float(d["rare_weight"]) * (t["weight"] - 1.0)
    T = float(d["temperature"])
    # images with type bounds (head_losses' type_bounds term) learn their types from the bounds, not the teacher
    type_pix_w = pix_w * (t["tb_group"] < 0) if "tb_group" in t else None
    for k, v in kd_losses(s_out, t_out, pix_w, T, d, type_pix_w).items():
        total = total + d[k] * v
        parts[k] = float(v.detach())
    if d["feat"] and adapters is not None:
        f = feature_loss(adapters(s_feats, t_feats), pix_w)
        total = total + d["feat"] * f
        parts["feat"] = float(f.detach())
    return total, parts


@torch.no_grad()
def validate_distill(student, teacher, adapters, data, sup_w, d, type_w=None, type_teacher=None) -> dict:
    """Per val source: the mean supervised loss (comparable with the teacher's) and total KD loss."""
    student.eval()
    out = {}
    for name, items in val_images(data, getattr(student, "stride", 32), next(student.parameters()).device):
        sup, tot = [], []
        for x, t in items:
            total, parts = _step_loss(student, teacher, adapters, x, t, sup_w, d, type_w, type_teacher)
            sup.append(parts["supervised"])
            tot.append(float(total))
        out[name] = {"val_loss": float(np.mean(sup)) if sup else float("nan"),
                     "val_total": float(np.mean(tot)) if tot else float("nan")}
    return {"val_loss": float(np.nanmean([v["val_loss"] for v in out.values()])), "val": out}


def warm_start(student: nn.Module, source: str, narrow: bool = False, sample: torch.Tensor | None = None) -> list[str]:
    """Copy a model's weights into ``student`` wherever names and shapes agree; an output head with fewer
    channels (a model without the type head) fills the first rows. With ``narrow``, a tensor the student has
    smaller in some dimensions takes the source's leading slice (its first channels; a MobileUNet source's
    full-resolution channels are first put in order of importance on the input ``sample``, the means of
    those the student lacks folded in: :mod:`wsi_nuc.train.narrow`): a narrower layer starts as the
    source's first channels, and a concatenation whose trailing part is narrower keeps its
    leading part whole (the MobileUNet decoder concatenates [up-sampled, skip], so a narrower last level
    and stem read the same up-sampled channels). Returns the names left as initialised, or sliced."""
    src, _ = load_model(source, "cpu")
    if narrow and getattr(src.cfg, "kind", None) == "mobileunet" and sample is not None:
        from .narrow import narrow_full_resolution

        narrow_full_resolution(src, sample, student.cfg.stem, student.cfg.decoder[-1])
    src_state, dst_state = src.state_dict(), student.state_dict()
    fresh = []
    with torch.no_grad():
        for k, v in dst_state.items():
            w = src_state.get(k)
            if w is not None and w.shape == v.shape:
                v.copy_(w)
            elif w is not None and k.startswith("head.") and w.shape[1:] == v.shape[1:] and w.shape[0] < v.shape[0]:
                v[:w.shape[0]].copy_(w)
                fresh.append(f"{k}[{w.shape[0]}:]")
            elif narrow and w is not None and w.dim() == v.dim() and all(a <= b for a, b in zip(v.shape, w.shape)):
                v.copy_(w[tuple(slice(0, n) for n in v.shape)])
                fresh.append(f"{k}[sliced {tuple(w.shape)} -> {tuple(v.shape)}]")
            else:
                fresh.append(k)
    return fresh


def inherited_meta(cfg: dict, d: dict) -> dict:
    """What a warm-started student keeps of its source's config.json: the post-processing settings (unless
    the config sets its own) and, on a frozen trunk, the scale rule (``nucleus_area_um2``), which belongs
    to the instance heads' training data, not to the type branch's."""
    if not d["init_student_from"]:
        return {}
    from ..model.folders import read_model_config, resolve_model_dir

    src = read_model_config(resolve_model_dir(d["init_student_from"]))
    keep = {}
    if not cfg.get("postprocess") and src.get("postprocess"):
        keep["postprocess"] = src["postprocess"]
    if d["trainable"] == "type_branch" and src.get("nucleus_area_um2"):
        keep["nucleus_area_um2"] = src["nucleus_area_um2"]
    return keep


def build_student(cfg: dict, teacher: nn.Module, d: dict, data=None) -> nn.Module:
    student = build_net(dict(cfg["model"]))
    if d["init_student_from"]:
        sample = None
        if d["init_narrow"] and data is not None:
            from .narrow import sample_crops

            sample = sample_crops(data)
        warm_start(student, d["init_student_from"], narrow=bool(d["init_narrow"]), sample=sample)
    if d["init_encoder_from_teacher"]:
        if not (hasattr(student, "encoder") and hasattr(teacher, "encoder")):
            raise InputError("distill.init_encoder_from_teacher: both networks need an encoder")
        student.encoder.load_state_dict(teacher.encoder.state_dict())
    return student


def distill(cfg: dict, out_dir: str | Path, log=print) -> Path:
    """Distil (or resume distilling) the config's teacher into its student; returns the model folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.resolved.yaml")
    tc = cfg["train"]
    d = distill_settings(cfg)
    torch.set_num_threads(int(tc.get("threads", 2)))
    torch.manual_seed(int(tc.get("seed", 0)))
    data = load_data(cfg)
    teacher, tcfg = load_teacher(cfg, data.norm, data.stain)
    speed = step_settings(tc)
    teacher.to(speed.device, memory_format=speed.memory_format())
    student = build_student(cfg, teacher.net, d, data)
    budget = check_student(student, teacher, d)
    adapters = FeatureAdapters(student, teacher, d["feature_levels"]) if d["feat"] else None
    if d["trainable"] not in ("all", "type_branch"):
        raise InputError(f"distill.trainable: {d['trainable']!r} (known: all, type_branch)")
    own = student.freeze_trunk() if d["trainable"] == "type_branch" else list(student.parameters())
    params = own + (list(adapters.parameters()) if adapters is not None else [])
    opt = make_optimizer(params, tc)
    sup_w, type_w = tc.get("loss_weights", {}), tc.get("type_class_weights")
    type_teacher = TypeTeacher(d["type_teacher"], data.norm, data.stain) if d["type_teacher"] else None
    if type_teacher is not None:
        type_teacher.net.to(speed.device, memory_format=speed.memory_format())
    log(data.describe() + f"; teacher {tcfg.get('name')} ({budget['teacher_macs_per_px']:,.0f} MACs/px) -> "
        f"student params={budget['params']:,} MACs/px={budget['student_macs_per_px']:,.0f} "
        f"({budget['flop_ratio']:.2f}x fewer)")

    def meta() -> dict:
        m = model_meta(cfg, data)
        m.update(inherited_meta(cfg, d))
        m["params"] = budget["params"]
        m["distillation"] = {"teacher": str(tcfg.get("path", cfg.get("teacher"))),
                             "type_teacher": d["type_teacher"],
                             "teacher_name": tcfg.get("name"), **budget,
                             "weights": {k: v for k, v in d.items() if k not in ("max_params", "min_flop_ratio")}}
        return m

    job = Job(cfg, out, student, opt, data,
              step_loss=lambda x, t: _step_loss(student, teacher, adapters, x, t, sup_w, d, type_w, type_teacher),
              validate=lambda: validate_distill(student, teacher, adapters, data, sup_w, d, type_w, type_teacher),
              meta=meta, extra={"adapters": adapters})
    return run_job(job, log)
