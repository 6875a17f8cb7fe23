"""Inference engines: the same network run by PyTorch (INT8 or fp32) or by ONNX Runtime (INT8 or fp32).

An engine takes the normalised input ``(B, 3, H, W)`` float32 tensor and returns the raw head outputs
``(B, C, H, W)`` as a float32 tensor; :class:`wsi_nuc.predict.Predictor` does the rest (recolouring before,
calibration and activations after), identically for every engine.

- ``torch-int8``: the model folder's FX INT8 graph (:mod:`wsi_nuc.model.int8`), PyTorch's ``x86`` quantized
  engine, which runs the convolutions on oneDNN where the CPU has AVX512-VNNI and on fbgemm elsewhere (AVX2
  CPUs); ``torch-int8-onednn`` / ``torch-int8-fbgemm`` name the kernel library. The same quantisation, the
  same nuclei (F1 0.9995 between the two libraries on CMU-1-Small-Region).
- ``torch-fp32``: the fp32 network in channels-last. For an INT8 folder this is the float network the INT8
  graph approximates (the stored BatchNorm-folded weights, observers removed); for an fp32 folder its
  BatchNorm is folded into the convolutions.
- ``onnx-int8`` / ``onnx-fp32``: ONNX Runtime's CPU provider on the folder's ``model.int8.onnx`` (static
  QDQ with the torch INT8 graph's scales, see :mod:`wsi_nuc.train.onnx_export`) / ``model.onnx`` (the same
  fp32 network). Needs ``onnxruntime`` (``pip install 'wsi-nuc[onnx]'``).

``auto`` picks per machine: see :mod:`wsi_nuc.model.engine_choice`. Nothing here unpickles: torch weights
come from safetensors, ONNX files are protobuf graphs read by ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError

from .engine_choice import (CHOICES, ENGINES, ONNX_FILES, QENGINES, available_engines, check_engine,  # noqa: F401
                            default_engine)


def strip_observers(prepared: nn.Module) -> nn.Module:
    """A prepared FX graph (BatchNorm folded, observers inserted) without its observers: the fp32 network
    the INT8 graph approximates."""
    g = prepared.graph
    for n in list(g.nodes):
        if n.op == "call_module" and "activation_post_process" in str(n.target):
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
    g.lint()
    prepared.recompile()
    for name in [k for k, _ in prepared.named_children() if k.startswith("activation_post_process")]:
        delattr(prepared, name)
    return prepared


def folded_fp32(model_dir: Path, cfg: dict) -> nn.Module:
    """The BatchNorm-folded fp32 network of a model folder (INT8 folder: its stored folded weights)."""
    from safetensors.torch import load_file

    from .int8 import prepare
    from .net import build_net

    net = build_net(cfg["arch"])
    if cfg.get("quantized") == "int8":
        q = cfg.get("quantization") or {}
        prepared = prepare(net, q.get("reduce_range", True))
        prepared.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")), strict=False)
        folded = strip_observers(prepared).eval()
    else:
        state = load_file(str(Path(model_dir) / "model.safetensors"))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        folded = _fold_unet(net.eval()) if cfg["arch"].get("kind", "unet") == "unet" else net.eval()
    return folded


def _fold_unet(net: nn.Module) -> nn.Module:
    """Conv + BatchNorm + ReLU of every U-Net block fused into one convolution (eval mode)."""
    from torch.ao.quantization import fuse_modules

    for block in [*net.enc, *net.dec]:
        fuse_modules(block, [["0", "1", "2"], ["3", "4", "5"]], inplace=True)
    return net


class TorchFp32(nn.Module):
    """An fp32 network run channels-last (oneDNN's preferred layout on CPU)."""

    def __init__(self, net: nn.Module, cfg, stride: int):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.cfg, self.stride = cfg, int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


class OnnxNet:
    """An ONNX Runtime CPU session with the torch network's interface (``net(x) -> raw``, ``stride``)."""

    def __init__(self, path: Path, stride: int, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # idle intra-op threads would spin between tiles, taking the core the watershed needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged or foreign file: one line naming it
            raise InputError(f"{path}: not a usable ONNX model ({' '.join(str(e).split())[:200]})") from None
        self.input = self.session.get_inputs()[0].name
        self.stride = int(stride)
        self.path = Path(path)

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: a})[0])


def build_engine(engine: str, model_dir: Path, cfg: dict, device: torch.device, trunk_only: bool = False):
    """The network of ``model_dir`` as ``engine`` runs it (a callable with ``stride``); concrete names only.

    ``trunk_only`` (``--no-types``): a typed net without its type branch where the engine allows (PyTorch's
    graphs; ONNX Runtime runs the whole file and the caller drops the type channels)."""
    from .io import load_model
    from .net import build_net

    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: unknown engine (choose from {', '.join(CHOICES)})")
    check_engine(engine, model_dir, cfg, device.type)
    stride = int(getattr(build_net(cfg["arch"]), "stride", 16))
    if engine in QENGINES:
        from .int8 import load_int8

        if QENGINES[engine] not in torch.backends.quantized.supported_engines:
            raise InputError(f"--engine {engine}: this PyTorch build has no {QENGINES[engine]} quantized engine "
                             f"(it has {', '.join(torch.backends.quantized.supported_engines)})")
        return load_int8(model_dir, device, QENGINES[engine], trunk_only=trunk_only)
    if engine == "torch-fp32":
        net = load_model(model_dir, device)[0] if device.type != "cpu" else folded_fp32(model_dir, cfg)
        if trunk_only and getattr(net, "type_branch", None) is not None:
            net.type_branch = None     # UNet.forward then returns the head's maps alone
        return net if device.type != "cpu" else TorchFp32(net, cfg.get("arch"), stride).eval()
    return OnnxNet(Path(model_dir) / ONNX_FILES[engine], stride)
