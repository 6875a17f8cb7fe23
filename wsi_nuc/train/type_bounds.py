"""Weak nucleus-type supervision: image-level bounds on the proportions of types (organ priors).

Most annotated nuclei here carry no type (MoNuSeg, NuInsSeg), but many images carry their organ, and an
organ often says what its nuclei can or must be: heart, muscle, fat and cartilage have no epithelium; a
liver crop is mostly hepatocytes; spleen and thymus are mostly lymphocytes; a crop of oesophageal
squamous epithelium is mostly epithelial nuclei. A bounds file says so per organ (and per image, which
overrides its organ)::

    by_organ:
      heart: {epithelial: [0, 0.05]}           # at most 5 % of its nuclei epithelial
      liver: {epithelial: [0.6, 1]}            # at least 60 %
    by_image:
      human_oesophagus_03: {epithelial: [0.6, 1]}

A data source takes it as ``type_bounds: FILE`` in ``data.roots``. During training each crop (or each
quadrant of a mosaic crop) of a bounded image is a group; :func:`bounds_loss` takes the mean type
distribution P(type | nucleus) over the group's true nucleus pixels and penalises it for leaving the
bounds (learning from label proportions, with bounds instead of exact proportions). Which nuclei of a
group are which is left to the cues the typed labels teach.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..errors import InputError

GROUPS_PER_CROP = 4     # a mosaic crop holds four images


def read_bounds(path: str | Path) -> dict:
    """``{"by_organ": {...}, "by_image": {...}}`` from a bounds file, each ``{type: [lo, hi]}``."""
    spec = load_config(path)
    unknown = set(spec) - {"by_organ", "by_image"}
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)} (known: by_organ, by_image)")
    for part in ("by_organ", "by_image"):
        for key, b in (spec.get(part) or {}).items():
            for name, lh in (b or {}).items():
                if len(lh) != 2 or not 0 <= float(lh[0]) <= float(lh[1]) <= 1:
                    raise InputError(f"{path}: {part}.{key}.{name}: want [lo, hi] with 0 <= lo <= hi <= 1")
    return {"by_organ": spec.get("by_organ") or {}, "by_image": spec.get("by_image") or {}}


def image_bounds(spec: dict, stem: str, entry: dict | None) -> dict | None:
    """The ``{type: [lo, hi]}`` bounds of one image: its own entry, else its organ's, else None."""
    if stem in spec["by_image"]:
        return spec["by_image"][stem]
    organ = (entry or {}).get("organ")
    return spec["by_organ"].get(organ) if organ else None


def as_arrays(bounds: dict, types: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float32 arrays over ``types`` from ``{type: [lo, hi]}`` (unbounded types: 0 and 1)."""
    lo, hi = np.zeros(len(types), np.float32), np.ones(len(types), np.float32)
    for name, (a, b) in bounds.items():
        if name not in types:
            raise InputError(f"type bounds: unknown type {name!r} (the model's types: {', '.join(types)})")
        lo[types.index(name)], hi[types.index(name)] = float(a), float(b)
    return lo, hi


def source_bounds(path: str | Path, stems: list[str], images: dict, types: list[str] | None) -> dict:
    """stem -> (lo, hi) for the images of a source that have bounds."""
    if not types:
        raise InputError(f"type_bounds {path}: the model has no types to bound")
    spec = read_bounds(path)
    out = {}
    for stem in stems:
        b = image_bounds(spec, stem, images.get(stem))
        if b:
            out[stem] = as_arrays(b, types)
    return out


def bounds_maps(placements: list[tuple[str, int, int, int]], bounds: dict, size: int,
                n_types: int) -> dict:
    """Per-pixel ``tb_group`` (H, W; -1 unbounded, else the placement's index) and ``tb_lo``/``tb_hi``
    (T, H, W) for one crop assembled from ``placements`` of (stem, y, x, side)."""
    group = np.full((size, size), -1, np.int64)
    lo = np.zeros((n_types, size, size), np.float32)
    hi = np.ones((n_types, size, size), np.float32)
    for i, (stem, y, x, side) in enumerate(placements):
        if stem in bounds:
            group[y:y + side, x:x + side] = i
            lo[:, y:y + side, x:x + side] = bounds[stem][0][:, None, None]
            hi[:, y:y + side, x:x + side] = bounds[stem][1][:, None, None]
    return {"tb_group": group, "tb_lo": lo, "tb_hi": hi}


def bounds_loss(type_logits: torch.Tensor, t: dict, min_px: int = 50, eps: float = 1e-4) -> torch.Tensor:
    """Mean over bounded groups (with at least ``min_px`` true nucleus pixels) of the summed per-type
    penalties ``relu(log lo - log q)`` + ``relu(log q - log hi)`` (the factor by which the share misses its
    bound, both ways alike), where q is the group's mean
    P(type | nucleus) (softmax over the type channels of ``type_logits`` (B, T+1, H, W), background first,
    renormalised without it). Zero when the batch holds no such group."""
    p = torch.softmax(type_logits.float(), 1)[:, 1:]
    p = p / p.sum(1, keepdim=True).clamp(min=1e-6)
    b, n_t = p.shape[:2]
    offset = torch.arange(b, device=p.device).view(b, 1, 1) * GROUPS_PER_CROP
    gid = torch.where((t["tb_group"] >= 0) & (t["fg"] > 0.5), t["tb_group"] + offset, -1).reshape(-1)
    keep = gid >= 0
    if not bool(keep.any()):
        return type_logits.sum() * 0.0
    idx = gid[keep]
    n_g = b * GROUPS_PER_CROP
    cnt = torch.zeros(n_g, device=p.device).index_add_(0, idx, torch.ones_like(idx, dtype=p.dtype))

    def mean(m: torch.Tensor) -> torch.Tensor:     # per-group mean of a (B, T, H, W) map over its pixels
        flat = m.permute(0, 2, 3, 1).reshape(-1, n_t)[keep]
        return torch.zeros(n_g, n_t, device=p.device).index_add_(0, idx, flat) / cnt.clamp(min=1)[:, None]

    q, lo, hi = mean(p), mean(t["tb_lo"].float()), mean(t["tb_hi"].float())
    ok = cnt >= min_px
    if not bool(ok.any()):
        return type_logits.sum() * 0.0
    lq = torch.log(q + eps)
    pen = torch.relu(torch.log(lo + eps) - lq) + torch.relu(lq - torch.log(hi + eps))
    return pen[ok].sum(1).mean()

