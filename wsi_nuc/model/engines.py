"""Inference engines: the same network run by PyTorch (INT8 or fp32) or by ONNX Runtime (INT8 or fp32).

An engine takes the normalised input ``(B, 3, H, W)`` float32 tensor and returns the raw head outputs
``(B, C, H, W)`` as a float32 tensor; :class:`wsi_nuc.predict.Predictor` does the rest (recolouring before,
calibration and activations after), identically for every engine.

- ``torch-int8`` (on request only; the reference the ONNX file is built from): the model folder's FX INT8 graph (:mod:`wsi_nuc.model.int8`), PyTorch's ``x86`` quantized
  engine, which runs the convolutions on oneDNN where the CPU has AVX512-VNNI and on fbgemm elsewhere (AVX2
  CPUs); ``torch-int8-onednn`` / ``torch-int8-fbgemm`` name the kernel library. The same quantisation, the
  same nuclei (F1 0.9995 between the two libraries on CMU-1-Small-Region).
- ``torch-fp32``: the fp32 network in channels-last. For an INT8 folder this is the float network the INT8
  graph approximates (the stored BatchNorm-folded weights, observers removed); for an fp32 folder its
  BatchNorm is folded into the convolutions.
- ``onnx-int8`` / ``onnx-fp32``: ONNX Runtime's CPU provider on the folder's ``model.int8.onnx`` (static
  QDQ with the torch INT8 graph's integers and scales, see :mod:`wsi_nuc.train.onnx_export`) / ``model.onnx``
  (the same fp32 network); :mod:`wsi_nuc.model.onnx_run`, no torch. ``onnx-int8`` is the CPU default.

``auto`` picks per machine: see :mod:`wsi_nuc.model.engine_choice`. Nothing here unpickles: torch weights
come from safetensors, ONNX files are protobuf graphs read by ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

from .engine_choice import (CHOICES, ENGINES, ONNX_FILES, QENGINES, available_engines, check_engine,  # noqa: F401
                            default_engine)

_TORCH = ("strip_observers", "folded_fp32", "TorchFp32")


def __getattr__(name):      # the torch engines' pieces load with torch, only when asked for
    if name in _TORCH:
        from . import torch_engines

        return getattr(torch_engines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def arch_stride(arch: dict) -> int:
    """The network's input size multiple, from its ``arch`` alone (no torch): U-Net 2^(depth-1), MobileUNet 32."""
    if arch.get("kind") == "mobileunet":
        return 32
    return 2 ** (int(arch.get("depth", 4)) - 1)      # NetConfig's default depth: 4 (a test holds them equal)


def build_engine(engine: str, model_dir: Path, cfg: dict, device, trunk_only: bool = False,
                 threads: int | None = None):
    """The network of ``model_dir`` as ``engine`` runs it (a callable with ``stride``); concrete names only.

    ``trunk_only`` (``--no-types``): a typed net without its type branch where the engine allows (PyTorch's
    graphs; ONNX Runtime runs the whole file and the caller drops the type channels). The ONNX engines import
    no torch."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: unknown engine (choose from {', '.join(CHOICES)})")
    dev_type = getattr(device, "type", str(device))
    check_engine(engine, model_dir, cfg, dev_type)
    stride = arch_stride(cfg["arch"])
    if engine in ONNX_FILES:
        from .onnx_run import OnnxNet

        return OnnxNet(Path(model_dir) / ONNX_FILES[engine], stride, threads, model_dir=Path(model_dir), cfg=cfg,
                       trunk_only=trunk_only)
    import torch

    from .io import load_model
    from .torch_engines import TorchFp32, folded_fp32

    if engine in QENGINES:
        from .int8 import load_int8

        if QENGINES[engine] not in torch.backends.quantized.supported_engines:
            raise InputError(f"--engine {engine}: this PyTorch build has no {QENGINES[engine]} quantized engine "
                             f"(it has {', '.join(torch.backends.quantized.supported_engines)})")
        return load_int8(model_dir, device, QENGINES[engine], trunk_only=trunk_only)
    net = load_model(model_dir, device)[0] if dev_type != "cpu" else folded_fp32(model_dir, cfg)
    if trunk_only and getattr(net, "type_branch", None) is not None:
        net.type_branch = None     # UNet.forward then returns the head's maps alone
    return net if dev_type != "cpu" else TorchFp32(net, cfg.get("arch"), stride).eval()
