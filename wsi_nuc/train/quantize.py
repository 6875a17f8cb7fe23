"""INT8 post-training static quantisation (PyTorch FX graph mode), stored without pickle.

``quantize_model`` traces the fp32 U-Net with ``prepare_fx`` (eval mode: Conv+BN(+ReLU) are fused, BN
folded into the conv), calibrates the inserted observers on training crops, checks the converted model
against fp32, and writes a model folder whose ``model.safetensors`` holds the *prepared* graph's state:
the BN-folded fp32 weights plus every activation observer's state (HistogramObserver: histogram, min,
max); :func:`wsi_nuc.model.int8.load_int8` rebuilds it with no data, bit-identical to the one checked.

QConfig: weights int8 per-channel symmetric (PerChannelMinMaxObserver, qint8); activations quint8 with
HistogramObserver, whose qparams minimise the L2 quantisation error over the calibration histogram;
backend "x86" (fbgemm/onednn kernels). ``reduce_range`` (7-bit activations, default True, as PyTorch's
x86 default) avoids int16 accumulation saturation on CPUs without AVX512-VNNI.

INT8 models run on CPU only; the forward returns the same float (B, 6, H, W) raw outputs as the fp32 net.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..model.inputs import to_input
from ..model.int8 import BACKEND, Int8UNet, convert, load_int8, prepare  # noqa: F401 (re-exported)


def calibration_crops(data_cfg, mpp, n_crops: int = 80, size: int = 256, seed: int = 0,
                      stain: dict | None = None) -> np.ndarray:
    """(n, size, size, 3) uint8 random unaugmented crops of the train split at the working mpp (each
    image Reinhard-normalised to ``stain``, a model's ``stain_norm``, when given)."""
    from .sources import all_samples, load_sources

    if isinstance(data_cfg, (str, Path)):
        data_cfg = {"roots": [str(data_cfg)]}
    samples = all_samples(load_sources(dict(data_cfg, mpp=mpp), "train"))
    if not samples:
        raise InputError(f"no labelled train images in {data_cfg.get('roots')}")
    return crops_of(samples, n_crops, size, seed, stain)


def crops_of(samples, n_crops: int, size: int = 256, seed: int = 0, stain: dict | None = None) -> np.ndarray:
    """(n, size, size, 3) uint8 random crops of loaded training ``samples`` (padded with background where an
    image is smaller; each Reinhard-normalised to ``stain`` when given)."""
    from ..stainnorm import normalise_to

    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(int(n_crops)):
        s = samples[rng.integers(len(samples))]
        img = normalise_to(s.image, stain)
        h, w = img.shape[:2]
        if h < size or w < size:
            img = np.pad(img, ((0, max(size - h, 0)), (0, max(size - w, 0)), (0, 0)), constant_values=235)
            h, w = img.shape[:2]
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crops.append(img[y:y + size, x:x + size])
    return np.stack(crops)


@torch.no_grad()
def quantize_net(net: nn.Module, crops: np.ndarray, batch: int = 8, norm: dict | None = None,
                 reduce_range: bool = True, observers_from=None) -> tuple[dict, Int8UNet]:
    """Calibrate on crops (n, H, W, 3) uint8 (then :func:`adopt_observers` from ``observers_from``);
    returns (prepared-graph state: folded weights + observer state, int8 model)."""
    norm = norm or {"mean": 0.5, "std": 0.25}
    prepared = prepare(net, reduce_range)
    for i in range(0, len(crops), int(batch)):
        prepared(to_input(crops[i:i + batch], norm))
    if observers_from:
        adopt_observers(prepared, observers_from)
    # convert_fx may reuse the prepared modules: snapshot the state to save first
    state = {k: v.detach().clone() for k, v in prepared.state_dict().items()}
    return state, convert(prepared, net.cfg, net.stride)


def _observed(prepared) -> dict[str, str]:
    """{name of the node an activation observer watches: the observer's module name} of a prepared graph."""
    return {node.args[0].name: node.target for node in prepared.graph.nodes
            if node.op == "call_module" and "activation_post_process" in str(node.target)}


def adopt_observers(prepared: nn.Module, source) -> int:
    """Copy the activation observers of the INT8 model folder ``source`` into ``prepared`` wherever both
    graphs observe a node of the same name with the same weights around it (a type branch added to a trunk
    quantised before: the trunk's activations keep that model's scales, so its INT8 outputs stay bit for bit
    those of ``source``). Returns how many observers were copied; raises if shared weights differ."""
    from ..model.folders import resolve_model_dir
    from ..model.int8 import prepared_from_folder

    src_dir = resolve_model_dir(source)
    src, _, _ = prepared_from_folder(src_dir)
    mine, theirs = prepared.state_dict(), src.state_dict()
    shared = [k for k in theirs if "activation_post_process" not in k and k in mine]
    if not shared or any(not torch.equal(mine[k], theirs[k]) for k in shared):
        raise InputError(f"{src_dir}: its weights are not this model's (cannot adopt its observers)")
    src_obs, n = _observed(src), 0
    for node_name, target in _observed(prepared).items():
        if node_name in src_obs:
            prepared.get_submodule(target).load_state_dict(src.get_submodule(src_obs[node_name]).state_dict())
            n += 1
    return n


@torch.no_grad()
def compare(net: nn.Module, qnet: nn.Module, x: torch.Tensor) -> dict:
    """fp32 vs int8 on one batch: max / mean abs diff of sigmoid(fg), and of all raw outputs."""
    a, b = net(x).float(), qnet(x).float()
    pa, pb = torch.sigmoid(a[:, 0]), torch.sigmoid(b[:, 0])
    return {"fg_prob_max_abs_diff": float((pa - pb).abs().max()),
            "fg_prob_mean_abs_diff": float((pa - pb).abs().mean()),
            "fg_mask_agreement": float(((pa > 0.5) == (pb > 0.5)).float().mean()),
            "raw_max_abs_diff": float((a - b).abs().max())}


def save_int8(state: dict, src_cfg: dict, out_dir: str | Path, info: dict) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    cfg = {k: v for k, v in src_cfg.items() if k not in ("path", "calibration")}
    cfg["name"] = f"{src_cfg.get('name', 'model')}-int8"
    cfg["quantized"] = "int8"
    cfg["storage_dtype"] = "float32 (BN folded) + observer state"
    cfg["quantization"] = info
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def time_forward(net, x, iters: int = 3) -> float:
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        for _ in range(iters):
            net(x)
    return (time.perf_counter() - t0) / iters


def quantize_model(model_dir, dataset_cfg, out_dir, n_crops: int = 80, batch: int = 8, crop: int = 256,
                   seed: int = 0, reduce_range: bool = True, bench: bool = True, log=print,
                   observers_from=None) -> Path:
    """Quantise a model folder to INT8, calibrated on ``n_crops`` train crops at batch ``batch``.

    ``dataset_cfg``: a dataset folder or a config ``data`` mapping (``roots``). The check (fp32 vs int8 on
    held-out crops of the same images, and the load-from-disk round trip) goes into config.json.
    """
    from ..model.io import load_model

    net, cfg = load_model(model_dir, "cpu")
    norm = cfg.get("norm") or {"mean": 0.5, "std": 0.25}
    crops = calibration_crops(dataset_cfg, cfg.get("mpp"), n_crops, crop, seed, cfg.get("stain_norm"))
    state, qnet = quantize_net(net, crops, batch, norm, reduce_range, observers_from)
    check_x = to_input(calibration_crops(dataset_cfg, cfg.get("mpp"), 4, crop, seed + 1,
                                          cfg.get("stain_norm")), norm)
    info = {"backend": BACKEND, "mode": "fx static", "weights": "int8 per-channel symmetric",
            "activations": "quint8 HistogramObserver" + (" (reduce_range)" if reduce_range else ""),
            "reduce_range": bool(reduce_range), "calibration_crops": int(n_crops), "batch": int(batch),
            "crop": int(crop), "seed": int(seed), "source": str(cfg.get("path")), "torch": torch.__version__,
            **({"observers_from": str(observers_from)} if observers_from else {})}
    info["check"] = compare(net, qnet, check_x)
    out = save_int8(state, cfg, out_dir, info)
    reloaded = load_int8(out)
    with torch.no_grad():
        if not torch.equal(reloaded(check_x), qnet(check_x)):
            raise RuntimeError("INT8 reload from safetensors is not bit-identical to the calibrated model")
    if bench:
        info["speed"] = {"batch": list(check_x.shape), "threads": torch.get_num_threads(),
                         "fp32_s": round(time_forward(net, check_x), 4),
                         "int8_s": round(time_forward(reloaded, check_x), 4)}
        info["speed"]["speedup"] = round(info["speed"]["fp32_s"] / info["speed"]["int8_s"], 3)
        save_int8(state, cfg, out_dir, info)
    if observers_from:
        carry_calibration(observers_from, out)
    if log:
        log(f"int8 vs fp32: {info['check']}" + (f"; speed {info['speed']}" if bench else ""))
    return out


def carry_calibration(source, out: Path) -> None:
    """With the observers of ``source`` adopted, the foreground logits are ``source``'s: its local temperature
    scaling (file and ``calibration`` entry) applies unchanged, and refitting it would only add round-off."""
    import shutil

    from ..model.folders import read_model_config, resolve_model_dir

    src_dir = resolve_model_dir(source)
    cal = read_model_config(src_dir).get("calibration")
    if not cal or not (src_dir / cal.get("file", "lts.safetensors")).is_file():
        return
    shutil.copyfile(src_dir / cal.get("file", "lts.safetensors"), out / cal.get("file", "lts.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    cfg["calibration"] = dict(cal, note=f"{src_dir.name}'s, unchanged: the calibrated logits are bit-identical")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
