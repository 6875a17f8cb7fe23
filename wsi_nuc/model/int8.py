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
"""
from __future__ import annotations

import threading
import warnings

import torch
from torch import nn

from ..errors import InputError
from .folders import read_model_config, resolve_model_dir
from .net import build_net

BACKEND = "x86"

# Two concatenations' inputs were observed apart (decoder features the type branch also reads): they are
# requantised to the first input's scale and zero point (:func:`cat_q` does it before PyTorch's cat sees
# them; a graph run without it, e.g. a prepared-then-converted one elsewhere, gets PyTorch's own warning that
# this "may" be inaccurate). It is what the calibration check measured (fp32 vs INT8 foreground agreement
# 0.997 for he-types-int8 v0.5): the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="All inputs of this cat operator must share the same quantization")


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return prepare_fx(_Plain(net.eval()), _mapping_for(net, reduce_range), example)
    finally:
        fx_config.do_not_emit_stack_traces = keep


def convert(prepared: nn.Module, cfg, stride: int, qengine: str = BACKEND, fast_upsample: bool | None = None,
            trunk_only: bool = False) -> Int8UNet:
    """The INT8 graph, its weights packed for ``qengine`` (x86: oneDNN or fbgemm kernels chosen by PyTorch per
    CPU; onednn or fbgemm: that library only); with ``fast_upsample`` its ×2 bilinear upsamplings of
    quantised tensors run as :func:`upsample2x_bilinear_q` (the same bytes, faster; default: where oneDNN's
    kernels exist, so every caller times and checks the graph that ships); ``trunk_only`` drops a type branch
    (:func:`drop_type_branch`)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    if fast_upsample is None:
        fast_upsample = fast_upsample_here()

    torch.backends.quantized.engine = qengine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = convert_fx(prepared)
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target is torch.cat:
            node.target = cat_q
        elif fast_upsample and node.op == "call_function" and node.target is torch.nn.functional.interpolate:
            node.target = interpolate_q
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


_SMOOTH_121: dict = {}
_SMOOTH_LOCK = threading.Lock()


def _smooth_121(channels: int):
    """Packed weights of a depthwise 3×3 convolution by [1, 2, 1]ᵀ[1, 2, 1] / 16 (int8 4, 8, 16 at scale
    1/64: exact), zero-padded, always packed for oneDNN's kernels whatever this process's quantised engine
    (a packed convolution runs on the library that packed it), so that every engine up-samples to the same
    bytes: oneDNN rounds exact halves to even as PyTorch's kernel does, fbgemm rounds them up."""
    with _SMOOTH_LOCK:
        if channels not in _SMOOTH_121:
            k = torch.tensor([1.0, 2.0, 1.0])
            w = (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).contiguous()
            qw = torch.quantize_per_channel(w, torch.full((channels,), 1 / 64),
                                            torch.zeros(channels, dtype=torch.long), 0, torch.qint8)
            before = torch.backends.quantized.engine
            torch.backends.quantized.engine = "onednn"
            try:
                _SMOOTH_121[channels] = torch.ops.quantized.conv2d_prepack(qw, None, [1, 1], [1, 1], [1, 1],
                                                                           channels)
            finally:
                torch.backends.quantized.engine = before
        return _SMOOTH_121[channels]


def fast_upsample_here() -> bool:
    """Whether :func:`upsample2x_bilinear_q` can run here: PyTorch has oneDNN's quantised kernels (x86)."""
    return "onednn" in torch.backends.quantized.supported_engines


def upsample2x_bilinear_q(x: torch.Tensor) -> torch.Tensor:
    """×2 bilinear upsampling (``align_corners=False``) of a per-tensor quantised NCHW tensor: the same bytes
    as PyTorch's own kernel (a test), on oneDNN's kernels, in less time.

    For a ×2 upsampling PyTorch's quantised kernel works on the stored integers alone (input and output share
    scale and zero point): output = round-half-to-even((9a + 3b + 3c + d) / 16) of the four nearest stored
    values, whatever the scale and zero point (checked on random tensors). Bilinear ×2 is nearest ×2
    followed by the separable [1, 2, 1] / 4 filter with the border replicated: output 2i takes
    x[i-1]/4 + 3x[i]/4, output 2i+1 takes 3x[i]/4 + x[i+1]/4, and so does the filter on the
    nearest-upsampled row (whose entries 2i-1, 2i, 2i+1 are x[i-1], x[i], x[i]). The filter runs as a
    quantised depthwise convolution on the stored integers read at scale 1 and zero point 0 (the same
    memory), so that oneDNN's requantisation multiplies by exactly 1/64 and rounds halves to even as PyTorch
    does (with the tensor's own scale it rounded about 0.3 % of the values otherwise: 1 % of the nuclei,
    sessions 7-8); the result is read back with the input's scale and zero point. The zero padding
    is wrong only on the outermost ring, which is recomputed from the input's edge rows and columns by
    PyTorch's kernel."""
    import torch.nn.functional as F

    s, z = x.q_scale(), x.q_zero_point()
    h2, w2 = 2 * x.shape[-2], 2 * x.shape[-1]
    x1 = _as_qparams(x, 1.0, 0)
    y = torch.ops.quantized.conv2d(F.interpolate(x1, scale_factor=2, mode="nearest"), _smooth_121(x.shape[1]),
                                   1.0, 0)

    def edge(t, size):
        return F.interpolate(t.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                             align_corners=False)

    y[:, :, :1, :].copy_(edge(x1[:, :, :1, :], (1, w2)))
    y[:, :, -1:, :].copy_(edge(x1[:, :, -1:, :], (1, w2)))
    y[:, :, :, :1].copy_(edge(x1[:, :, :, :1], (h2, 1)))
    y[:, :, :, -1:].copy_(edge(x1[:, :, :, -1:], (h2, 1)))
    return _as_qparams(y, s, z)


def _as_qparams(t: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The same stored integers (the same memory, no copy) read with another scale and zero point."""
    out = torch._empty_affine_quantized([0], scale=scale, zero_point=zero_point, dtype=t.dtype)
    return out.set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


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


def interpolate_q(x, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None,
                  antialias=False):
    """``F.interpolate`` in a converted INT8 graph: a ×2 bilinear upsampling of a quantised tensor takes
    :func:`upsample2x_bilinear_q` (the same bytes as PyTorch's kernel), everything else PyTorch's kernel."""
    import torch.nn.functional as F

    if (x.is_quantized and x.qscheme() == torch.per_tensor_affine and mode == "bilinear" and not align_corners
            and not antialias and x.dim() == 4 and min(x.shape[-2:]) >= 2):
        want = tuple(size) if size is not None else None
        if want == (2 * x.shape[-2], 2 * x.shape[-1]) or (size is None and scale_factor in (2, 2.0, (2, 2))):
            return upsample2x_bilinear_q(x)
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                         recompute_scale_factor=recompute_scale_factor, antialias=antialias)


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
              fast_upsample: bool | None = None, trunk_only: bool = False) -> Int8UNet:
    """Rebuild an INT8 model folder (no pickle, no data): prepare_fx -> observer state -> convert_fx
    (``fast_upsample``: see :func:`convert`)."""
    if torch.device(device).type != "cpu":
        raise InputError("INT8 models run on the CPU only (use --device cpu or the fp32 model)")
    prepared, fp32, _ = prepared_from_folder(model_dir)
    trunk_only = trunk_only and getattr(fp32, "type_branch", None) is not None
    return convert(prepared, fp32.cfg, fp32.stride, qengine, fast_upsample, trunk_only)
