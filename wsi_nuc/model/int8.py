"""INT8 models (PyTorch FX static quantisation): the graph, and rebuilding it from a model folder.

Inference side only (:mod:`wsi_nuc.train.quantize` calibrates and writes these folders). A folder's
``model.safetensors`` holds the *prepared* graph's state: the BN-folded fp32 weights plus every activation
observer's state (HistogramObserver: histogram, min, max). ``load_int8`` rebuilds it deterministically with
no data: build_net(arch) -> prepare_fx (same qconfig) -> load that state -> ``convert_fx``. convert_fx
derives the weight qparams from the weights and the activation qparams from the stored histograms, so the
rebuilt model is bit-identical to the one checked when it was written.

QConfig: weights int8 per-channel symmetric (PerChannelMinMaxObserver, qint8); activations quint8 with
HistogramObserver; backend "x86" (fbgemm/onednn kernels). ``reduce_range`` (7-bit activations, PyTorch's
x86 default) avoids int16 accumulation saturation on CPUs without AVX512-VNNI. INT8 models run on the CPU
only; the forward returns the same float raw outputs as the fp32 net.

Since issue 27 this graph is the *reference* the shipped ONNX INT8 file is built from
(:mod:`wsi_nuc.train.onnx_export` takes its integers and scales) and the ``torch-int8*`` engines, named only
on request: the default CPU engine is ONNX Runtime's (:mod:`wsi_nuc.model.onnx_run`). ``torch.ao.quantization``
is deprecated in PyTorch, and its warnings are not silenced here.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .folders import read_model_config, resolve_model_dir
from .net import build_net

BACKEND = "x86"

class _Plain(nn.Module):
    """Traceable wrapper: forward(x) -> raw outputs only (no ``return_features`` branch)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


class Int8UNet(nn.Module):
    """A converted INT8 graph with the fp32 network's interface (``cfg``, ``stride``, float outputs)."""

    def __init__(self, graph: nn.Module, cfg, stride: int, qengine: str = BACKEND):
        super().__init__()
        self.graph = graph
        self.cfg = cfg
        self.stride = int(stride)
        self.qengine = qengine

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if return_features:
            raise ValueError("an INT8 model does not return decoder features")
        if torch.backends.quantized.engine != self.qengine:
            torch.backends.quantized.engine = self.qengine
        return self.graph(x.float().cpu())


def qconfig_mapping(reduce_range: bool = True):
    from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping

    qc = QConfig(activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=bool(reduce_range)),
                 weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                           qscheme=torch.per_channel_symmetric))
    return QConfigMapping().set_global(qc)


def _mapping_for(net: nn.Module, reduce_range: bool):
    """The global qconfig; with a type branch, the type logits' final upsampling and the last concatenation
    (instance maps + type logits) stay in float: a quantised one would requantise the instance maps to a scale shared with the type logits, so the
    trunk's outputs would no longer be those of the same network without the branch."""
    mapping = qconfig_mapping(reduce_range)
    if getattr(net, "type_branch", None) is not None:
        import torch.nn.functional as F

        mapping.set_module_name_object_type_order("net", torch.cat, net.cfg.depth - 1, None)
        # and the type logits' upsampling to full resolution: 5 channels on quantised tensors take 3.5x the
        # float kernel's time (10.8 vs 3.0 ms a 640² tile at AVX2, one thread)
        mapping.set_module_name_object_type_order("net", F.interpolate, net.cfg.depth - 1, None)
    return mapping


def prepare(net: nn.Module, reduce_range: bool = True) -> nn.Module:
    """The observed (prepared) FX graph of an fp32 net, BN folded."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    import torch.fx.config as fx_config

    torch.backends.quantized.engine = BACKEND
    example = (torch.zeros(1, net.cfg.in_channels, net.stride * 2, net.stride * 2),)
    # FX records a stack trace per traced node by default: symbolising them imports torch._dynamo, sympy and
    # networkx (about 1,200 modules, 1.6 s of a 2.7 s load here) for nothing the graph computes
    keep = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        return prepare_fx(_Plain(net.eval()), _mapping_for(net, reduce_range), example)
    finally:
        fx_config.do_not_emit_stack_traces = keep


def convert(prepared: nn.Module, cfg, stride: int, qengine: str = BACKEND, trunk_only: bool = False) -> Int8UNet:
    """The INT8 graph, its weights packed for ``qengine`` (x86: oneDNN or fbgemm kernels chosen by PyTorch per
    CPU; onednn or fbgemm: that library only); ``trunk_only`` drops a type branch (:func:`drop_type_branch`)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    torch.backends.quantized.engine = qengine
    graph = convert_fx(prepared)
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target is torch.cat:
            node.target = cat_q
    if trunk_only:
        drop_type_branch(graph)
    graph.recompile()
    return Int8UNet(graph, cfg, stride, qengine).eval()


def drop_type_branch(graph) -> None:
    """Cut a typed net's converted graph down to its trunk (``--no-types``): the output becomes the first input
    of the last concatenation (instance maps, type logits), which :func:`_mapping_for` keeps in float, and
    every node only the type logits needed goes. The trunk's nodes and quantisation parameters are untouched,
    so its outputs are those of the typed graph's first channels, bit for bit (a test)."""
    out = next(n for n in graph.graph.nodes if n.op == "output")
    cat = out.args[0]
    if not (getattr(cat, "op", None) == "call_function" and cat.target in (torch.cat, cat_q)):
        raise ValueError("drop_type_branch: the graph does not end in the type branch's concatenation")
    out.args = (cat.args[0][0],)
    graph.graph.eliminate_dead_code()


def cat_q(tensors, dim=0):
    """``torch.cat`` in a converted INT8 graph, the same bytes as PyTorch's quantised cat: inputs whose scale or
    zero point differ from the first's (the output's) are requantised to it before the copy. PyTorch's cat
    then takes its plain-copy path; otherwise it requantises every input of a mixed cat itself, more slowly
    (the decoder's full-resolution join, 640² × 48 channels: 19 -> 7 ms a tile at forced AVX2, one thread)."""
    tensors = list(tensors)
    first = tensors[0]
    if first.is_quantized and first.qscheme() == torch.per_tensor_affine:
        s, z = first.q_scale(), first.q_zero_point()
        tensors = [t if not t.is_quantized or (t.q_scale() == s and t.q_zero_point() == z)
                   else torch.quantize_per_tensor(t.dequantize(), s, z, t.dtype) for t in tensors]
    return torch.cat(tensors, dim=dim)


def prepared_from_folder(model_dir) -> tuple[nn.Module, nn.Module, dict]:
    """(prepared graph with the folder's weights and observer state, its fp32 net, config) of an INT8 folder."""
    from safetensors.torch import load_file

    model_dir = resolve_model_dir(model_dir)
    cfg = read_model_config(model_dir)
    if cfg.get("quantized") != "int8":
        raise InputError(f"{model_dir}: not an INT8 model folder")
    q = cfg.get("quantization") or {}
    fp32 = build_net(cfg["arch"])
    prepared = prepare(fp32, q.get("reduce_range", True))
    state = load_file(str(model_dir / "model.safetensors"))
    missing, unexpected = prepared.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{model_dir}: INT8 state does not match the traced graph (torch "
                         f"{torch.__version__}, saved with {q.get('torch')}): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return prepared, fp32, cfg


def load_int8(model_dir, device: str | torch.device = "cpu", qengine: str = BACKEND,
              trunk_only: bool = False) -> Int8UNet:
    """Rebuild an INT8 model folder (no pickle, no data): prepare_fx -> observer state -> convert_fx."""
    if torch.device(device).type != "cpu":
        raise InputError("INT8 models run on the CPU only (use --device cpu or the fp32 model)")
    prepared, fp32, _ = prepared_from_folder(model_dir)
    trunk_only = trunk_only and getattr(fp32, "type_branch", None) is not None
    return convert(prepared, fp32.cfg, fp32.stride, qengine, trunk_only)
