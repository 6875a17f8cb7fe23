"""Batched inference on a device: RGB tiles in, per-pixel head maps out (probabilities / offsets).

torch is imported only where a torch engine, test-time augmentation or refinement needs it: the default CPU
engine (ONNX Runtime with the model folder's post-processing baked into its file, :mod:`wsi_nuc.model.onnx_run`)
goes from RGB to maps with numpy and ONNX Runtime alone.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .model.folders import cuda_available, read_model_config, resolve_model_dir
from .model.heads import HEADS

# Output channels of ``Predictor.maps`` (after the activations).
MAP_CHANNELS = HEADS  # the instance heads (wsi_nuc.model.heads owns their names and order)
N_MAPS = len(MAP_CHANNELS)  # a type head's softmax (background + K types) follows these
_HV_X, _HV_Y = MAP_CHANNELS.index("hv_x"), MAP_CHANNELS.index("hv_y")

# Test-time augmentation: transforms of the square as (transpose, flip rows, flip columns); 4 = the flips,
# 8 = the flips and rotations by 90° (the dihedral group).
TTA_TRANSFORMS = {
    1: [(False, False, False)],
    4: [(False, fr, fc) for fr in (False, True) for fc in (False, True)],
    8: [(t, fr, fc) for t in (False, True) for fr in (False, True) for fc in (False, True)],
}


def forward_tta(net, x, n: int = 1):
    """Raw network outputs (B, C, H, W) averaged over ``n`` (1, 4 or 8) flips/rotations of ``x``.

    Each transform is undone on the outputs: maps are flipped/transposed back, and the offset channels
    follow the geometry (a column flip negates ``hv_x``, a row flip ``hv_y``, a transpose swaps them).
    Averaging raw outputs (logits, offsets before tanh) keeps calibration and post-processing unchanged.

    >>> import torch
    >>> net = lambda t: torch.cat([t[:, :1]] * 6, 1)          # an "identity" net: 6 copies of channel 0
    >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> bool(torch.equal(forward_tta(net, x, 8)[:, 0], x[:, 0]))
    True
    """
    import torch

    if n not in TTA_TRANSFORMS:
        raise ValueError(f"tta must be one of {sorted(TTA_TRANSFORMS)}, not {n}")
    acc = None
    for transpose, flip_rows, flip_cols in TTA_TRANSFORMS[n]:
        y = x.transpose(2, 3) if transpose else x
        dims = [d for d, f in ((2, flip_rows), (3, flip_cols)) if f]
        y = torch.flip(y, dims) if dims else y
        out = net(y).float()
        if dims:
            out = torch.flip(out, dims)
        if flip_rows or flip_cols or transpose:
            out = out.clone()
        if flip_rows:
            out[:, _HV_Y] = -out[:, _HV_Y]
        if flip_cols:
            out[:, _HV_X] = -out[:, _HV_X]
        if transpose:
            out = out.transpose(2, 3)
            out[:, [_HV_X, _HV_Y]] = out[:, [_HV_Y, _HV_X]].clone()
        acc = out if acc is None else acc + out
    return acc if n == 1 else acc / len(TTA_TRANSFORMS[n])   # no pass over the maps to divide by 1


class _Cpu:
    """The CPU as a device where torch is not loaded (the ONNX Runtime engines): ``.type`` as torch.device's."""
    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import InputError

        raise InputError("--device cuda: no CUDA device is available here")
    return torch.device(device)


@dataclass
class Predictor:
    """A loaded network on a device, with its config (working mpp, normalisation, post-processing)."""

    net: "torch.nn.Module"
    config: dict
    device: "torch.device"
    lts: "torch.nn.Module | None" = None    # local temperature scaling head (calibrated fg), if fitted
    engine: str = "torch"                   # what runs the network (wsi_nuc.model.engines)
    tta: int = 1                            # test-time augmentation of maps() when not given (1, 4 or 8)
    lazy_lts: bool = False                  # the LTS head is loaded when the torch path first needs it

    @property
    def mpp(self) -> float | None:
        return self.config.get("mpp")

    @cached_property
    def stain_target(self):
        """The training images' CIELAB statistics when the model normalises stain, else None."""
        from .stainnorm import LabStats

        return LabStats.from_dict(self.config.get("stain_norm"))

    @cached_property
    def types(self) -> tuple[str, ...]:
        """Names of the model's nucleus types (``"types"`` in config.json), in channel order; () without a
        type head. See :mod:`wsi_nuc.type_map`."""
        from .type_map import model_types

        return model_types(self.config)

    @property
    def stride(self) -> int:
        return int(getattr(self.net, "stride", 16))

    def maps(self, images: np.ndarray, stain=None, tta: int | None = None) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C, H, W) float32 maps; pads to the stride by mirroring, crops back.

        C is 6 (:data:`MAP_CHANNELS`), or 6 + 1 + K for a model with K nucleus types: channels 6.. are then
        the softmax over background and the types (``type_prob``, see :func:`wsi_nuc.type_map.type_prob_map`).

        A model with ``stain_norm`` in its config first Reinhard-normalises the images: from ``stain``
        (a :class:`~wsi_nuc.stainnorm.LabStats` of the slide or image they come from) when given, else
        from each image's own statistics. ``tta`` (1, 4 or 8; default the predictor's ``tta``): average
        over flips/rotations (:func:`forward_tta`), ``tta`` times the network's cost.
        """
        target = self.stain_target
        if target is not None:
            from .stainnorm import lab_stats, normalise

            images = np.stack([normalise(im, stain if stain is not None else lab_stats(im), target)
                               for im in images])
        b, h, w, _ = images.shape
        s = self.stride
        ph, pw = -h % s, -w % s
        if ph or pw:
            images = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="symmetric")
        n = tta or self.tta
        if n == 1 and getattr(self.net, "post", False) and not (self.config.get("refine") or {}).get("enabled"):
            from .model.onnx_run import to_input_np

            act = self.net.maps_np(to_input_np(images, self.config.get("norm")))
            nt = len(self.types)
            if act.shape[1] != (N_MAPS + 1 + nt if nt else N_MAPS):
                raise ValueError(f"model {self.config.get('name')}: config.json names {nt} types but the ONNX "
                                 f"file's maps have {act.shape[1]} channels")
            return act if not (ph or pw) else act[:, :, :h, :w]
        return self._maps_torch(images, h, w, n)

    def _maps_torch(self, images: np.ndarray, h: int, w: int, n: int) -> np.ndarray:
        import torch

        from .model.inputs import to_input
        from .refine import RefineParams, calibrated_fg, load_lts, refine_maps

        if self.lazy_lts:
            with _BUILD:
                if self.lazy_lts:
                    lts = load_lts(self.config["path"], self.config)
                    self.lts, self.lazy_lts = (lts.eval() if lts is not None else None), False
        device = self.device if isinstance(self.device, torch.device) else torch.device(str(self.device))
        with torch.inference_mode():
            x = to_input(images, self.config.get("norm"), device)
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = forward_tta(self.net, x, n)
            else:
                out = forward_tta(self.net, x, n)
            out = out.float().contiguous()  # INT8 graphs return channels-last: slices of it are slow
            act = torch.empty_like(out)
            act[:, 0] = calibrated_fg(out[:, 0], self.lts, x)
            act[:, [1, 2, 5]] = torch.sigmoid(out[:, [1, 2, 5]])
            act[:, 3:5] = torch.tanh(out[:, 3:5])
            nt = len(self.types)
            if nt:
                if out.shape[1] < N_MAPS + 1 + nt:
                    raise ValueError(f"model {self.config.get('name')}: config.json names {nt} types but the "
                                     f"network has {out.shape[1]} output channels (need {N_MAPS + 1 + nt})")
                act[:, N_MAPS:N_MAPS + 1 + nt] = torch.softmax(out[:, N_MAPS:N_MAPS + 1 + nt], dim=1)
                act = act[:, :N_MAPS + 1 + nt]
                if self.config.get("type_weights"):
                    act = reweight_types(act, self.config["type_weights"], inplace=True)
            else:
                act = act[:, :N_MAPS]
            act = act[:, :, :h, :w]
            rp = RefineParams.from_dict(self.config.get("refine"))
            if rp.enabled:
                act = refine_maps(act, self.mpp, rp)
            return act.cpu().numpy()


def reweight_types(maps, weights, inplace: bool = False):
    """Maps (B, 6 + 1 + K, H, W) with the type softmax re-weighted for other class priors: the probability
    of type k is multiplied by ``weights[k]`` (K values; background keeps 1) and the 1 + K renormalised.

    This is logit adjustment (adding ``log w_k`` to type k's logit; Menon et al. 2021, "Long-tail learning
    via logit adjustment"): the head was trained on CoNSeP's class frequencies, and a weight above 1 gives
    a rare type ("other") the pixels it loses to common ones at equal evidence. A model's ``config.json``
    may carry ``type_weights``, fitted on val with ``benchmarks/tune_types.py``. Tensor or array; ``inplace``
    writes into ``maps`` instead of a copy of all its channels.

    >>> import numpy as np
    >>> m = np.zeros((1, 9, 1, 1)); m[0, 6:] = [[[0.2]], [[0.5]], [[0.3]]]
    >>> np.round(reweight_types(m, [1.0, 2.0])[0, 6:, 0, 0], 3).tolist()
    [0.154, 0.385, 0.462]
    """
    w = [1.0, *map(float, weights)]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(maps, torch.Tensor):
        t = maps[:, N_MAPS:N_MAPS + len(w)] * torch.tensor(w, dtype=maps.dtype, device=maps.device).view(1, -1, 1, 1)
    else:
        t = maps[:, N_MAPS:N_MAPS + len(w)] * np.asarray(w, dtype=maps.dtype).reshape(1, -1, 1, 1)
    if t.shape[1] != len(w):
        raise ValueError(f"type_weights: {len(w) - 1} weights for {t.shape[1] - 1} types")
    out = maps if inplace else maps.copy() if isinstance(maps, np.ndarray) else maps.clone()
    out[:, N_MAPS:N_MAPS + len(w)] = t / t.sum(1, keepdims=True)
    return out


_CACHE: dict = {}
_BUILD = threading.RLock()     # one build at a time: FX tracing (INT8 engines) is not thread-safe, and a
                               # background preload and the tile threads may ask for the same model at once


def get_predictor(model: str | None = None, device: str = "auto", threads: int | None = None,
                  engine: str | None = None, types: bool = True) -> Predictor:
    """The process's predictor for (model, device, engine): loaded once per worker process, then reused.

    ``engine``: None runs the model folder's default (an INT8 folder: onnx-int8, an fp32 one: onnx-fp32
    where it ships model.onnx, else torch-fp32); ``auto`` picks the fastest for this machine (:mod:`wsi_nuc.model.engine_choice`); or a
    name of :data:`wsi_nuc.model.engines.ENGINES`.
    """
    model = str(resolve_model_dir(model, device))
    cfg = read_model_config(Path(model))
    if device == "auto" and (cfg.get("quantized") == "int8" or
                             (cfg.get("quantized") == "onnx-int8" and not cuda_available())):
        device = "cpu"  # INT8 kernels are CPU kernels; an onnx-int8 folder runs its fp32 network on CUDA
    from .model.engine_choice import ONNX_FILES, choose_engine, default_engine

    if device == "cpu" and (engine in ONNX_FILES or (engine in (None, "auto") and
                                                     default_engine(cfg, "cpu", Path(model)) in ONNX_FILES)):
        dev = _Cpu()     # an ONNX Runtime engine: torch stays unloaded
    else:
        dev = resolve_device(device)
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    if engine is None:
        engine = default_engine(cfg, dev.type, Path(model))
    elif engine == "auto":
        engine = choose_engine(Path(model), cfg, dev.type)
    if threads and engine not in ONNX_FILES:
        import torch

        torch.set_num_threads(int(threads))
    trunk_only = not types and bool(cfg.get("types"))
    key = (str(model), str(dev), engine, trunk_only, os.getpid())
    with _BUILD:     # one build at a time (see _BUILD)
        if key not in _CACHE:
            from .model.engines import build_engine

            net = build_engine(engine, Path(model), cfg, dev, trunk_only, threads=threads)
            if trunk_only:   # a predictor of the instance maps alone: no type channels, no type weights
                cfg = {k: v for k, v in cfg.items() if k not in ("types", "type_weights")}
            cfg = dict(cfg, path=str(model))
            cfg.setdefault("name", Path(model).name)
            if getattr(net, "post", False):     # calibration is in the ONNX file; the torch path loads the head
                _CACHE[key] = Predictor(net, cfg, dev, None, engine, lazy_lts=True)
            else:
                from .refine import load_lts

                lts = load_lts(cfg["path"], cfg)
                if lts is not None:
                    lts = (lts if isinstance(dev, _Cpu) else lts.to(dev)).eval()
                _CACHE[key] = Predictor(net, cfg, dev, lts, engine)
        return _CACHE[key]
