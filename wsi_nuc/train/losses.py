"""Per-head training losses: Dice+BCE, focal, MSE+gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .speed import fp32_losses


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(-2, -1))
    denom = p.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def weighted_bce(logits, target, weight=None, pos_weight=None) -> torch.Tensor:
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    if weight is not None:
        return (loss * weight).sum() / weight.sum()
    return loss.mean()


def centre_focal(logits, target, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced focal loss on a Gaussian centre heatmap (CornerNet/CenterNet form)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.ge(0.99).float()
    neg = 1 - pos
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * neg
    n = pos.sum().clamp(min=1.0)
    return (pos_loss.sum() + neg_loss.sum()) / n


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 4
    x = x.unsqueeze(1) if x.dim() == 3 else x
    c = x.shape[1]
    gx = F.conv2d(x, kx.expand(c, 1, 3, 3), padding=1, groups=c)
    gy = F.conv2d(x, kx.t().expand(c, 1, 3, 3).contiguous(), padding=1, groups=c)
    return gx, gy


def mse_grad(pred, target, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE, and MSE of Sobel gradients inside ``mask`` (HoVer-Net's MSGE); pred/target (B, C, H, W)."""
    mse = F.mse_loss(pred, target)
    gpx, gpy = _grad(pred)
    gtx, gty = _grad(target)
    m = mask.unsqueeze(1) if mask.dim() == 3 else mask
    denom = m.sum().clamp(min=1.0) * pred.shape[1]
    g = (((gpx - gtx) ** 2 + (gpy - gty) ** 2) * m).sum() / denom
    return mse, g


@fp32_losses
def head_losses(out: torch.Tensor, t: dict, w: dict, type_weights=None) -> tuple[torch.Tensor, dict]:
    """Weighted sum of all head losses; ``out`` is (B, 6 [+ types + 1], H, W) in the order of
    ``net.HEADS`` then the type logits; ``t["types"]`` (when present) is the per-pixel type target, and
    ``t["tb_group"]`` with ``tb_lo``/``tb_hi`` (when a source has ``type_bounds``) the bounds on type
    proportions of :mod:`wsi_nuc.train.type_bounds`."""
    fg, bd, dist, hv, ctr = out[:, 0], out[:, 1], out[:, 2], out[:, 3:5], out[:, 5]
    on = lambda *keys: any(w.get(k, 1.0) for k in keys)  # noqa: E731 - a weight of 0 skips the term
    terms = {
        "fg_bce": lambda: weighted_bce(fg, t["fg"], t["weight"]),
        "fg_dice": lambda: soft_dice(fg, t["fg"]),
        "bd_bce": lambda: weighted_bce(bd, t["boundary"], t["weight"]),
        "bd_dice": lambda: soft_dice(bd, t["boundary"]),
        "centre": lambda: centre_focal(ctr, t["centre"]),
    }
    parts = {k: f() for k, f in terms.items() if on(k)}
    if on("dist_mse", "dist_grad"):
        parts["dist_mse"], parts["dist_grad"] = mse_grad(torch.sigmoid(dist).unsqueeze(1),
                                                         t["dist"].unsqueeze(1), t["fg"])
    if on("hv_mse", "hv_grad"):
        parts["hv_mse"], parts["hv_grad"] = mse_grad(torch.tanh(hv), t["hv"], t["fg"])
    if out.shape[1] > 6 and "types" in t:
        parts.update(type_losses(out[:, 6:], t["types"], type_weights))
    if out.shape[1] > 6 and "tb_group" in t and w.get("type_bounds", 1.0):   # sources with type_bounds
        from .type_bounds import bounds_loss

        parts["type_bounds"] = bounds_loss(out[:, 6:], t)
    total = sum((w.get(k, 1.0) * v for k, v in parts.items() if w.get(k, 1.0)), out.new_zeros(()))
    return total, {k: float(v.detach()) for k, v in parts.items()}


def type_losses(logits: torch.Tensor, target: torch.Tensor, class_weights=None) -> dict:
    """Nucleus-type losses on the type logits (B, T+1, H, W), background first.

    ``target`` (B, H, W) holds the type class per pixel (0 background) and -1 where the type is unknown
    (sources without types, nuclei without a type): those pixels are ignored. Returns class-weighted
    cross-entropy and the mean soft Dice over the T nucleus types (HoVer-Net's NP/TP pairing of losses);
    both zero when the batch holds no typed pixel.
    """
    valid = target >= 0
    if not bool(valid.any()):
        z = logits.sum() * 0.0
        return {"type_ce": z, "type_dice": z}
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype,
                                                           device=logits.device)
    ce = F.cross_entropy(logits, target.clamp(min=0), weight=w, reduction="none")
    if w is not None:
        pw = w[target.clamp(min=0)] * valid
        ce = (ce * pw).sum() / pw.sum().clamp(min=1e-6)
    else:
        ce = (ce * valid).sum() / valid.sum()
    p = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(p.dtype)
    m = valid.unsqueeze(1).to(p.dtype)
    inter = (p * onehot * m).sum(dim=(0, 2, 3))
    denom = ((p + onehot) * m).sum(dim=(0, 2, 3))
    present = onehot.mul(m).sum(dim=(0, 2, 3)) > 0
    dice = 1 - (2 * inter + 1.0) / (denom + 1.0)
    dice = dice[present].mean() if bool(present.any()) else dice.sum() * 0.0
    return {"type_ce": ce, "type_dice": dice}
