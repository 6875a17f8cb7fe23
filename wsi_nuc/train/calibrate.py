"""Fitting local temperature scaling (LTS) for a model folder: the training side of :mod:`wsi_nuc.refine`.

Steps: (1) run the frozen network once per val image to get its fg logit; (2) fit the tiny LTS head with
full-batch L-BFGS on the BCE of the calibrated probability; (3) report ECE and NLL before and after;
(4) store ``lts.safetensors`` and the ``"calibration"`` entry of ``config.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..model.inputs import to_input
from ..refine import LTS_FILE, LTSHead, calibrated_fg


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """Binary ECE: equal-width bins of the fg probability over [0, 1]; the count-weighted mean of
    |mean predicted p - observed fg frequency| per bin (a reliability diagram's gap)."""
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().float().cpu().numpy()
    p = np.asarray(probs, np.float64).ravel()
    y = (np.asarray(labels).ravel() > 0.5).astype(np.float64)
    if p.size == 0:
        return float("nan")
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    nz = n > 0
    return float(np.abs(sp[nz] - sy[nz]).sum() / p.size)


@torch.no_grad()
def network_logits(net, rgb: np.ndarray, norm: dict | None = None, stride: int | None = None):
    """(fg logit (1, H, W), normalised input (1, 3, H, W)) of one RGB image, padded with glass to the
    network's stride and cropped back."""
    s = int(stride or getattr(net, "stride", 16))
    h, w = rgb.shape[:2]
    pad = ((0, -h % s), (0, -w % s), (0, 0))
    x = to_input(np.pad(rgb, pad, constant_values=255)[None], norm)
    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    out = net(x.to(dev)).float().cpu()
    return out[:, 0, :h, :w], x[:, :, :h, :w]


def fit_lts(net, val_images_labels, use_rgb: bool = False, hidden: int = 8, t_min: float = 0.05,
            steps: int = 30, norm: dict | None = None, bins: int = 15, seed: int = 0,
            log=None, groups=None) -> LTSHead:
    """Fit an LTS head on (RGB uint8 (H, W, 3), instance or binary labels (H, W)) pairs, network frozen.

    ``net`` maps a normalised (B, 3, H, W) input to raw outputs whose channel 0 is the fg logit; it runs
    once per image. The head (~100 parameters) then minimises the mean BCE of ``sigmoid(logit / T)`` on
    the fg labels with full-batch L-BFGS (``steps`` iterations, strong-Wolfe line search): over all pixels,
    or, with ``groups`` (a source name per pair), the mean over sources of each source's per-pixel mean, so
    that no source weighs by its pixel count alone. ``head.stats`` holds ECE and NLL before/after over the
    same pixels (the val split: in-sample).
    """
    was_training = getattr(net, "training", False)
    if hasattr(net, "eval"):
        net.eval()
    data = []
    for rgb, lab in val_images_labels:
        logit, x = network_logits(net, np.asarray(rgb), norm)
        y = torch.from_numpy((np.asarray(lab) > 0).astype(np.float32))[None]
        data.append((logit, x if use_rgb else None, y))
    if was_training:
        net.train()
    if not data:
        raise ValueError("fit_lts: no images")
    torch.manual_seed(int(seed))
    head = LTSHead(use_rgb, hidden, t_min)
    n_px = sum(y.numel() for _, _, y in data)
    px_weight, n_groups = _pixel_weights([y.numel() for _, _, y in data], groups)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=int(steps), history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for (logit, x, y), w in zip(data, px_weight):
            loss = loss + F.binary_cross_entropy_with_logits(head(logit, x), y, reduction="sum") * w
        loss.backward()
        return loss

    opt.step(closure)
    head.eval()
    with torch.no_grad():
        p0 = torch.cat([torch.sigmoid(lg).ravel() for lg, _, _ in data])
        p1 = torch.cat([calibrated_fg(lg, head, x).ravel() for lg, x, _ in data])
        y = torch.cat([y.ravel() for _, _, y in data])
        nll0 = float(F.binary_cross_entropy(p0.clamp(1e-7, 1 - 1e-7), y))
        nll1 = float(F.binary_cross_entropy(p1.clamp(1e-7, 1 - 1e-7), y))
        temps = torch.cat([head.temperature(lg, x).ravel() for lg, x, _ in data])
    head.stats = {"ece_before": expected_calibration_error(p0, y, bins),
                  "ece_after": expected_calibration_error(p1, y, bins),
                  "nll_before": nll0, "nll_after": nll1, "bins": bins, "n_images": len(data),
                  "sources": n_groups,
                  "n_pixels": int(n_px), "temperature_mean": float(temps.mean()),
                  "temperature_p5": float(temps.quantile(0.05)) if temps.numel() < 2**24 else None,
                  "temperature_p95": float(temps.quantile(0.95)) if temps.numel() < 2**24 else None}
    if log:
        log(f"lts: ECE {head.stats['ece_before']:.4f} -> {head.stats['ece_after']:.4f}, "
            f"NLL {nll0:.4f} -> {nll1:.4f}")
    return head


def _pixel_weights(sizes: list[int], groups=None) -> tuple[list[float], int]:
    """Each image's per-pixel weight in the LTS loss, 1 / (its source's pixels × the number of sources), so
    the sources weigh the same (one source without ``groups``); and the number of sources."""
    groups = list(groups) if groups is not None else ["all"] * len(sizes)
    if len(groups) != len(sizes):
        raise ValueError("fit_lts: one group per image")
    group_px = {g: 0 for g in groups}
    for g, n in zip(groups, sizes):
        group_px[g] += n
    return [1.0 / (group_px[g] * len(group_px)) for g in groups], len(group_px)


def save_lts(head: LTSHead, model_dir: str | Path, extra: dict | None = None) -> None:
    """Write ``lts.safetensors`` and the ``"calibration"`` entry of the folder's ``config.json``."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(model_dir / LTS_FILE))
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["calibration"] = {**head.config(), "file": LTS_FILE, **getattr(head, "stats", {}), **(extra or {})}
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def calibrate_model(model, dataset_dir, split: str = "val", use_rgb: bool = False,
                    steps: int = 30, log=None) -> dict:
    """Fit LTS for a model folder on a dataset split (or on several datasets' splits, each source weighing
    the same) and store it in the folder; returns the ``"calibration"`` entry (ECE before/after ...).

    Images without a scale (DSB) are brought to the working scale that :func:`wsi_nuc.scale.estimate_mpp`
    finds for them, as ``wsi-nuc eval`` segments them."""
    from ..model.io import read_model_config, resolve_model_dir

    model_dir = resolve_model_dir(model)
    cfg = read_model_config(model_dir)
    if cfg.get("quantized") == "int8":
        from ..model.int8 import load_int8

        net = load_int8(model_dir)
    else:
        from ..model.io import load_model

        net, cfg = load_model(model_dir, "cpu")
    specs = [str(d) for d in ([dataset_dir] if isinstance(dataset_dir, (str, Path)) else dataset_dir)]
    pairs, groups = [], []
    for spec in specs:
        root, modality = dataset_spec(spec)
        got = _pairs_at_scale(root, split, cfg, model_dir, modality)
        if not got:
            raise InputError(f"{spec}: no labelled images in its {split} split")
        pairs += got
        groups += [spec] * len(got)
    head = fit_lts(net, pairs, use_rgb=use_rgb, steps=steps, norm=cfg.get("norm"), log=log, groups=groups)
    where = {"dataset": specs[0]} if len(specs) == 1 else {"datasets": specs}
    save_lts(head, model_dir, {**where, "split": split})
    return read_model_config(model_dir)["calibration"]


def dataset_spec(spec: str) -> tuple[Path, str | None]:
    """``FOLDER`` or ``FOLDER:MODALITY`` (only the images of that ``dataset.json`` modality, e.g.
    ``dsb2018-stage1-train:colour_brightfield``) -> (folder, modality or None)."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and tail and "/" not in tail and Path(head).is_dir():
        return Path(head), tail
    return Path(spec), None


def _pairs_at_scale(root: Path, split: str, cfg: dict, model_dir, modality: str | None = None) -> list:
    """(stain-normalised RGB, labels) of a dataset split (of one modality) at the model's working scale."""
    from ..dataset import at_mpp, list_stems, load_sample, read_index
    from ..stainnorm import normalise_to

    meta = read_index(root)
    stems = list_stems(root, split if meta.get("split") else "all")
    pairs = []
    for stem in stems:
        if modality and (meta.get("images", {}).get(stem) or {}).get("modality") != modality:
            continue
        s = load_sample(root, stem, meta)
        if s.labels is None:
            continue
        s.mpp = s.mpp or _estimated_mpp(s.image, model_dir)
        s = at_mpp(s, cfg.get("mpp"))
        pairs.append((normalise_to(s.image, cfg.get("stain_norm")), s.labels))
    return pairs


def _estimated_mpp(image, model_dir) -> float | None:
    """The scale `wsi-nuc eval` segments an image of unknown scale at (:func:`wsi_nuc.scale.estimate_mpp`)."""
    from ..evaluate import segment_at_scale
    from ..instances import InstanceParams
    from ..predict import get_predictor

    pred = get_predictor(str(model_dir), "cpu")
    params = InstanceParams.from_dict(pred.config.get("postprocess") or {})
    return segment_at_scale(image, None, pred, params, True)[1]
