"""Calibrated foreground uncertainty, and morphological refinement of the ambiguous pixels only.

Part 1, calibration: Local Temperature Scaling (LTS; Ding, Han, Liu & Niethammer, "Local Temperature
Scaling for Probability Calibration", ICCV 2021). A tiny conv head, fitted on the val split with the
network frozen, predicts a per-pixel temperature ``T(x) = softplus(h(x)) + t_min`` from the network's fg
logit (and optionally the normalised RGB input); the calibrated probability is ``sigmoid(logit / T(x))``.
The head minimises the BCE of that probability against the fg labels. It is stored in the model folder as
``lts.safetensors``, with its settings and the ECE before/after under ``"calibration"`` in ``config.json``.

- per-pixel uncertainty: ``1 - |2p - 1|`` of the calibrated p (0 sure, 1 at p = 0.5);
- per-nucleus confidence: the mean calibrated p over the nucleus' pixels.

Part 2, refinement (kornia.morphology, batched on the maps' device): a pixel is *ambiguous* when its
calibrated uncertainty exceeds ``u_thr`` AND it lies within ``near_px`` px of the predicted boundary
(boundary probability > ``boundary_thr``, dilated by a disk of radius ``near_px``). Only there the fg
probability is replaced by its grey-level morphological opening and/or closing with a flat disk whose
radius is tied to the physical size of the structures it should remove or fill:
``radius_px = max(1, round(r_um / mpp))`` with ``r_um = 1.0`` µm by default. Nuclei are ~3-5 µm in
radius, so a 1 µm disk removes spurs and bridges and fills notches narrower than ~2 µm without eroding
whole nuclei (radius 2 px at the usual 0.5 µm/px working scale). Everywhere else the map is untouched.
It is switchable (``RefineParams.enabled``, off by default) and should be turned on only when it improves
val AJI/PQ.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

LTS_FILE = "lts.safetensors"
LOGIT_CLIP = 16.0    # the head sees clamp(logit, ±LOGIT_CLIP) / LOGIT_SCALE
LOGIT_SCALE = 4.0


# ---------------------------------------------------------------------------------------------------
# Part 1: Local Temperature Scaling
# ---------------------------------------------------------------------------------------------------

class LTSHead(nn.Module):
    """Two 3x3 convs (``hidden`` channels) -> per-pixel temperature ``softplus(.) + t_min``.

    Starts as the identity (T = 1 everywhere): the last conv is zero with a bias of softplus⁻¹(1 - t_min).
    """

    def __init__(self, use_rgb: bool = False, hidden: int = 8, t_min: float = 0.05):
        super().__init__()
        self.use_rgb, self.hidden, self.t_min = bool(use_rgb), int(hidden), float(t_min)
        cin = 1 + (3 if self.use_rgb else 0)
        self.conv1 = nn.Conv2d(cin, self.hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(self.hidden, 1, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.zero_()
            self.conv2.bias.fill_(math.log(math.expm1(1.0 - self.t_min)))

    def config(self) -> dict:
        return {"method": "lts", "use_rgb": self.use_rgb, "hidden": self.hidden, "t_min": self.t_min,
                "logit_clip": LOGIT_CLIP, "logit_scale": LOGIT_SCALE}

    def temperature(self, logit: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel temperature (B, H, W) for a fg logit (B, H, W) [and normalised input (B, 3, H, W)]."""
        z = logit.unsqueeze(1).clamp(-LOGIT_CLIP, LOGIT_CLIP) / LOGIT_SCALE
        if self.use_rgb:
            if x is None:
                raise ValueError("this LTS head also needs the normalised RGB input")
            z = torch.cat([z, x.to(z.dtype)], dim=1)
        h = F.relu(self.conv1(z))
        return (F.softplus(self.conv2(h)) + self.t_min)[:, 0]

    def forward(self, logit: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated logit ``logit / T(x)``."""
        return logit / self.temperature(logit, x)


def calibrated_fg(logit: torch.Tensor, head: LTSHead | None, x: torch.Tensor | None = None) -> torch.Tensor:
    """Calibrated fg probability (B, H, W) from the raw fg logit (B, H, W); plain sigmoid without a head.

    ``x`` is the normalised network input (B, 3, H, W), needed only by a head fitted with ``use_rgb``.
    """
    if head is None:
        return torch.sigmoid(logit)
    logit = logit.float()
    return torch.sigmoid(head(logit, None if x is None else x.float()))


def uncertainty(p):
    """Per-pixel uncertainty ``1 - |2p - 1|`` (tensor or array)."""
    return 1 - (2 * p - 1).abs() if isinstance(p, torch.Tensor) else 1 - np.abs(2 * p - 1)


def nucleus_confidence(labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean calibrated fg probability of each nucleus; entry i is for label i (index 0 unused, 0)."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    sums = np.bincount(labels.ravel(), weights=np.asarray(p, np.float64).ravel(), minlength=n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    out = np.zeros(n + 1, np.float64)
    np.divide(sums, counts, out=out, where=counts > 0)
    out[0] = 0.0
    return out


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


def _normalise(rgb: np.ndarray, norm: dict) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    return (x / 255.0 - norm["mean"]) / norm["std"]


@torch.no_grad()
def network_logits(net, rgb: np.ndarray, norm: dict | None = None, stride: int | None = None):
    """(fg logit (1, H, W), normalised input (1, 3, H, W)) of one RGB image, padded with glass to the
    network's stride and cropped back."""
    norm = norm or {"mean": 0.5, "std": 0.25}
    s = int(stride or getattr(net, "stride", 16))
    h, w = rgb.shape[:2]
    pad = ((0, -h % s), (0, -w % s), (0, 0))
    x = _normalise(np.pad(rgb, pad, constant_values=255), norm)
    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    out = net(x.to(dev)).float().cpu()
    return out[:, 0, :h, :w], x[:, :, :h, :w]


def fit_lts(net, val_images_labels, use_rgb: bool = False, hidden: int = 8, t_min: float = 0.05,
            steps: int = 30, norm: dict | None = None, bins: int = 15, seed: int = 0,
            log=None) -> LTSHead:
    """Fit an LTS head on (RGB uint8 (H, W, 3), instance or binary labels (H, W)) pairs, network frozen.

    ``net`` maps a normalised (B, 3, H, W) input to raw outputs whose channel 0 is the fg logit; it runs
    once per image. The head (~100 parameters) then minimises the mean BCE of ``sigmoid(logit / T)`` on
    the fg labels over all pixels with full-batch L-BFGS (``steps`` iterations, strong-Wolfe line search).
    ``head.stats`` holds ECE and NLL before/after over the same pixels (the val split: in-sample).
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
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=int(steps), history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for logit, x, y in data:
            loss = loss + F.binary_cross_entropy_with_logits(head(logit, x), y, reduction="sum") / n_px
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
                  "n_pixels": int(n_px), "temperature_mean": float(temps.mean()),
                  "temperature_p5": float(temps.quantile(0.05)) if temps.numel() < 2**24 else None,
                  "temperature_p95": float(temps.quantile(0.95)) if temps.numel() < 2**24 else None}
    if log:
        log(f"lts: ECE {head.stats['ece_before']:.4f} -> {head.stats['ece_after']:.4f}, "
            f"NLL {nll0:.4f} -> {nll1:.4f}")
    return head


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


def load_lts(model_dir: str | Path, config: dict | None = None) -> LTSHead | None:
    """The folder's LTS head (eval mode, CPU), or None when the model is not calibrated."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg = config if config is not None else json.loads((model_dir / "config.json").read_text())
    cal = cfg.get("calibration") or {}
    path = model_dir / cal.get("file", LTS_FILE)
    if cal.get("method") != "lts" or not path.is_file():
        return None
    head = LTSHead(cal.get("use_rgb", False), cal.get("hidden", 8), cal.get("t_min", 0.05))
    head.load_state_dict(load_file(str(path)))
    return head.eval()


def calibrate_model(model, dataset_dir: str | Path, split: str = "val", use_rgb: bool = False,
                    steps: int = 30, log=None) -> dict:
    """Fit LTS for a model folder on a dataset split and store it in the folder; returns the
    ``"calibration"`` entry (ECE before/after ...)."""
    from .dataset import list_stems, load_at_mpp, read_index
    from .model.io import read_model_config, resolve_model_dir
    from .stainnorm import normalise_to

    model_dir = resolve_model_dir(model)
    cfg = read_model_config(model_dir)
    if cfg.get("quantized") == "int8":
        from .model.int8 import load_int8

        net = load_int8(model_dir)
    else:
        from .model.io import load_model

        net, cfg = load_model(model_dir, "cpu")
    root = Path(dataset_dir)
    meta = read_index(root)
    stems = list_stems(root, split if meta.get("split") else "all")
    pairs = []
    for stem in stems:
        s = load_at_mpp(root, stem, cfg.get("mpp"), meta)
        if s.labels is not None:
            pairs.append((normalise_to(s.image, cfg.get("stain_norm")), s.labels))
    head = fit_lts(net, pairs, use_rgb=use_rgb, steps=steps, norm=cfg.get("norm"), log=log)
    save_lts(head, model_dir, {"dataset": str(root), "split": split})
    return read_model_config(model_dir)["calibration"]


# ---------------------------------------------------------------------------------------------------
# Part 2: morphological refinement of the ambiguous pixels
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefineParams:
    """Refinement settings (``"refine"`` in a model's config.json / postprocess)."""

    enabled: bool = False       # switch: on only where it improves val AJI/PQ
    u_thr: float = 0.5          # calibrated uncertainty above which a pixel may change (p in 0.25..0.75)
    near_px: int = 2            # ... and only within this many px of the predicted boundary
    boundary_thr: float = 0.5   # boundary probability defining the predicted boundary
    r_um: float = 1.0           # structuring-element radius in µm; radius_px = max(1, round(r_um / mpp))
    op: str = "open_close"      # "open", "close", "open_close" (opening then closing) or "close_open"

    @classmethod
    def from_dict(cls, d: dict | None) -> "RefineParams":
        d = d or {}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def radius_px(self, mpp: float | None) -> int:
        return max(1, int(round(self.r_um / float(mpp)))) if mpp else max(1, int(round(self.r_um / 0.5)))


def disk(radius: int, device=None) -> torch.Tensor:
    """Flat disk structuring element (2r+1, 2r+1) of ones inside x² + y² <= r²."""
    r = int(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    return ((yy**2 + xx**2) <= r * r).float().to(device)


def ambiguous_mask(unc: torch.Tensor, boundary_prob: torch.Tensor, params: RefineParams) -> torch.Tensor:
    """(B, H, W) bool: uncertainty > u_thr and within near_px px of boundary_prob > boundary_thr."""
    from kornia.morphology import dilation

    near = (boundary_prob > params.boundary_thr).float().unsqueeze(1)
    if params.near_px > 0:
        near = dilation(near, disk(params.near_px, near.device))
    return (unc > params.u_thr) & (near[:, 0] > 0.5)


def refine_fg(fg_prob: torch.Tensor, unc: torch.Tensor, boundary_prob: torch.Tensor, mpp: float | None,
              params: RefineParams | dict | None = None, return_mask: bool = False):
    """Replace the fg probability (B, H, W) by its morphological opening/closing on the ambiguous
    pixels only; returns the refined probability map (same shape/device/dtype) [and the ambiguous mask].

    The caller decides whether to refine at all (``params.enabled``); this function always refines.
    """
    from kornia.morphology import closing, opening

    p = params if isinstance(params, RefineParams) else RefineParams.from_dict(params)
    squeeze = fg_prob.dim() == 2
    if squeeze:
        fg_prob, unc, boundary_prob = fg_prob[None], unc[None], boundary_prob[None]
    amb = ambiguous_mask(unc, boundary_prob, p)
    if not bool(amb.any()):
        out = fg_prob
    else:
        k = disk(p.radius_px(mpp), fg_prob.device)
        m = fg_prob.float().unsqueeze(1)
        ops = {"open": (opening,), "close": (closing,), "open_close": (opening, closing),
               "close_open": (closing, opening)}
        if p.op not in ops:
            raise ValueError(f"refine op {p.op!r}: expected one of {sorted(ops)}")
        for f in ops[p.op]:
            m = f(m, k)
        out = torch.where(amb, m[:, 0].to(fg_prob.dtype), fg_prob)
    if squeeze:
        out, amb = out[0], amb[0]
    return (out, amb) if return_mask else out


def refine_maps(maps, mpp: float | None, params: RefineParams | dict | None = None):
    """Refine channel 0 (calibrated fg prob) of activated head maps (B, 6, H, W) or (6, H, W), using
    channel 1 (boundary prob); numpy in -> numpy out, tensor in -> tensor out (on its device)."""
    is_np = isinstance(maps, np.ndarray)
    t = torch.from_numpy(maps) if is_np else maps
    single = t.dim() == 3
    if single:
        t = t[None]
    fg = t[:, 0]
    out = t.clone()
    out[:, 0] = refine_fg(fg, uncertainty(fg), t[:, 1], mpp, params)
    if single:
        out = out[0]
    return out.numpy() if is_np else out
