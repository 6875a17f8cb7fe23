"""ONNX copies of a model folder's network for ONNX Runtime (``--engine onnx-fp32 / onnx-int8``).

``export_onnx(model_dir, dataset)`` writes into the model folder:

- ``model.onnx``: the BatchNorm-folded fp32 network (:func:`wsi_nuc.model.engines.folded_fp32`; for an
  INT8 folder the float network its INT8 graph approximates), ``torch.onnx.export`` (TorchScript
  exporter, opset 17), batch, height and width dynamic;
- ``model.int8.onnx``: ONNX Runtime static quantisation of it (``quantize_static``, QDQ format, int8
  per-channel symmetric weights, uint8 activations), run over the same crops ``wsi-nuc quantize``
  calibrates the PyTorch INT8 graph on (80 stain-normalised 256² train crops, seed 0). For an INT8 folder
  the scales and zero points are the PyTorch INT8 graph's own (``TensorQuantOverrides``): two INT8
  quantisations calibrated separately disagree on about 3 % of nuclei, one quantisation run by two
  libraries on far fewer (see :func:`torch_int8_overrides`). For an fp32 folder ONNX Runtime calibrates
  (MinMax, 7-bit weights);

and records under ``"onnx"`` in ``config.json`` the files' SHA-256, the settings and a check against the
fp32 network on held-out crops. These files are built where the training data is (calibration needs it)
and shipped in the model folder; nothing is exported or calibrated on a user's machine.

In ``model.int8.onnx`` every x2 up-sampling has constant scales, not sizes computed from a tensor's shape
(:mod:`wsi_nuc.train.onnx_static`; the same outputs bit for bit, less time a tile), and with the PyTorch INT8
graph's integers its uint8 up-sampling rounds as PyTorch's kernel does. ``model.onnx`` keeps the
computed sizes: ONNX Runtime would run its float up-sampling with another kernel (differences up to 2e-6).

Run it on a folder: ``python -m wsi_nuc.train.onnx_export MODEL_DIR --dataset ../shared/data/monuseg2018-train``;
``--upsampling-only`` rewrites a folder's existing ``model.int8.onnx`` that way (``--dataset`` then only to
record its checks again).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .onnx_static import exact_upsampling, fix_upsampling

OPSET = 17
UPSAMPLING = ("model.int8.onnx: constant x2 scales (wsi_nuc.train.onnx_static; outputs checked bit for bit "
              "against computed sizes); with the torch graph's integers, uint8 up-sampling with PyTorch's rounding")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_fp32(net: torch.nn.Module, path: Path, size: int = 256) -> Path:
    x = torch.zeros(1, 3, size, size)
    dyn = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["x"],
                          output_names=["raw"], dynamic_axes={"x": dyn, "raw": dyn}, do_constant_folding=True)
    return Path(path)


class _Crops:
    """onnxruntime CalibrationDataReader over normalised crops, ``batch`` at a time."""

    def __init__(self, x: np.ndarray, batch: int):
        self.batches = iter([x[i:i + batch] for i in range(0, len(x), batch)])

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {"x": b}


def quantize_onnx(fp32: Path, out: Path, x: np.ndarray, batch: int = 8, method: str = "MinMax",
                  reduce_range: bool = True, overrides: dict | None = None) -> Path:
    # reduce_range (7-bit weights): ONNX Runtime's advice for U8S8 on CPUs without VNNI, whose int16 pair
    # sums can saturate; with torch's activation scales (7-bit ranges) the pair sums stay in range anyway
    """Static QDQ quantisation of ``fp32`` calibrated on ``x`` (normalised crops, NCHW float32); tensors named
    in ``overrides`` (``TensorQuantOverrides``) take those scales and zero points instead."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), _Crops(x, batch), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=reduce_range, calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       "TensorQuantOverrides": overrides or {}})
    return Path(out)


def torch_int8_overrides(model_dir: Path, fp32: Path, seed: int = 0) -> dict:
    """ONNX Runtime ``TensorQuantOverrides`` that give ``fp32``'s QDQ model the PyTorch INT8 graph's own
    quantisation: every activation's scale and zero point as the torch graph quantises it (found by running
    both on one probe input and pairing tensors of the same shape and nearly the same values), and every
    convolution's weights per output channel as torch's symmetric per-channel observer does
    (scale = max|w| / 127.5, zero point 0). Independently calibrated INT8 models of one network differ in
    their rounding enough to move ~3 % of nuclei (F1 0.97 on CMU); sharing the quantisation keeps them the same.
    """
    import onnx
    import onnxruntime as ort
    from torch.fx import Interpreter

    from ..model.int8 import load_int8

    qnet = load_int8(model_dir)
    rec = {}

    class _Record(Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_quantized:
                rec[n.name] = (float(out.q_scale()), int(out.q_zero_point()), out.dequantize().numpy())
            return out

    x = torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (1, 3, 64, 96)).astype(np.float32))
    with torch.inference_mode():
        _Record(qnet.graph).run(x)
    model = onnx.load(str(fp32))
    produced = {o: n for n in model.graph.node for o in n.output}
    model.graph.output.extend([onnx.ValueInfoProto(name=o) for o in produced if o not in
                               {v.name for v in model.graph.output}])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    vals = dict(zip(names, sess.run(None, {"x": x.numpy()})))
    vals["x"] = x.numpy()
    over = {}
    for name, (scale, zp, deq) in rec.items():
        cands = [(float(np.abs(v - deq).mean()), k) for k, v in vals.items()
                 if isinstance(v, np.ndarray) and v.shape == deq.shape and v.dtype == np.float32]
        err, best = min(cands)
        if err > 0.25 * float(np.abs(deq).mean()) + 1e-3:
            raise RuntimeError(f"no ONNX tensor matches torch's {name} (closest {best}, error {err:.3g})")
        q = [{"scale": np.array(scale, np.float32), "zero_point": np.array(zp, np.uint8)}]
        over[best] = q
        node = produced.get(best)
        if node is not None and node.op_type == "Relu":   # the convolution before a fused ReLU: same qparams
            over[node.input[0]] = q
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits:
            w = onnx.numpy_helper.to_array(inits[n.input[1]])
            amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            scales = np.maximum(amax / 127.5, np.finfo(np.float32).eps).astype(np.float32)
            over[n.input[1]] = [{"axis": 0, "scale": float(s), "zero_point": 0} if i == 0 else
                                {"scale": float(s), "zero_point": 0} for i, s in enumerate(scales)]
    return over


def torch_int8_integers(path: Path, model_dir: Path) -> int:
    """Give the QDQ model at ``path`` the PyTorch INT8 graph's own integers: every convolution's int8 weights
    and per-channel scales as torch stores them, and its bias as int32 at the input scale x weight scale.
    ONNX Runtime's quantiser rounds the float weights itself and disagreed with torch's on about 0.2 % of
    them, which moved the nuclei more than anything else (CMU: F1 0.980 -> 0.983 against torch-int8). Returns
    the number of convolutions rewritten."""
    import onnx
    from onnx import numpy_helper as nh

    from ..model.int8 import load_int8

    mods = dict(load_int8(model_dir).graph.named_modules())
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}

    def put(name, a):
        inits[name].CopyFrom(nh.from_array(a, name))

    n = 0
    for conv in [c for c in model.graph.node if c.op_type == "Conv"]:
        wdq, xdq, bdq = prod[conv.input[1]], prod[conv.input[0]], prod[conv.input[2]]
        key = wdq.input[0].replace("_quantized", "")[:-len(".weight")]
        mod = mods.get(key) or mods.get(key.rsplit(".", 1)[0])   # fused ConvReLU2d: "<name>.0.weight"
        qw = mod.weight()
        scales = qw.q_per_channel_scales().numpy().astype(np.float32)
        put(wdq.input[0], qw.int_repr().numpy())
        put(wdq.input[1], scales)
        bscale = (float(nh.to_array(inits[xdq.input[1]])) * scales.astype(np.float64)).astype(np.float32)
        put(bdq.input[0], np.round(mod.bias().detach().numpy().astype(np.float64) / bscale).astype(np.int32))
        put(bdq.input[1], bscale)
        n += 1
    onnx.save(model, str(path))
    return n


def with_post(path: Path, model_dir: Path, cfg: dict) -> Path:
    """Append the folder's post-processing (``maps`` output, :mod:`wsi_nuc.train.onnx_post`) to the file."""
    import onnx

    from .onnx_post import append_post

    onnx.save(append_post(onnx.load(str(path)), model_dir, cfg), str(path))
    return Path(path)


def _check(net, path: Path, x: np.ndarray) -> dict:
    """ONNX model vs the torch fp32 network on ``x``: fg probability differences and mask agreement."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    b = torch.from_numpy(sess.run(None, {"x": x})[0])
    with torch.inference_mode():
        a = net(torch.from_numpy(x))
    pa, pb = torch.sigmoid(a[:, 0]), torch.sigmoid(b[:, 0])
    return {"fg_prob_max_abs_diff": round(float((pa - pb).abs().max()), 5),
            "fg_prob_mean_abs_diff": round(float((pa - pb).abs().mean()), 6),
            "fg_mask_agreement": round(float(((pa > 0.5) == (pb > 0.5)).float().mean()), 6),
            "raw_max_abs_diff": round(float((a - b).abs().max()), 5)}


def _int8_checks(net, i8: Path, model_dir: Path, x: np.ndarray, torch_int8: bool) -> dict:
    """``model.int8.onnx`` against the fp32 network (``check``) and, for an INT8 folder, against its PyTorch INT8
    graph (``check_vs_torch_int8``) on the check crops ``x``."""
    out = {"check": _check(net, i8, x)}
    if torch_int8:
        from ..model.int8 import load_int8

        out["check_vs_torch_int8"] = _check(load_int8(model_dir), i8, x)
    return out


def _int8_record(i8: Path, qparams: str, torch_qparams: bool, method: str, calibration: dict) -> dict:
    """config.json's description of ``model.int8.onnx``."""
    return {"file": i8.name, "sha256": _sha256(i8), "format": "QDQ", "qparams": qparams,
            "weights": "int8 per-channel symmetric" + (", scale max|w|/127.5 as torch" if torch_qparams else
                                                      ", 7-bit (reduce_range)"),
            "activations": "uint8 asymmetric" + (", the PyTorch INT8 graph's scales and zero points"
                                                 if torch_qparams else f", {method} over the calibration crops"),
            "integers": "the PyTorch INT8 graph's weights and biases" if torch_qparams else "ONNX Runtime's",
            "post": "second output 'maps': LTS, activations, type weights (wsi_nuc.train.onnx_post)", **calibration}


def _finish(f32: Path, i8: Path, model_dir: Path, cfg: dict, torch_integers: bool) -> None:
    """The files' last steps: the torch graph's integers into the INT8 file, both files' baked post-processing,
    then the INT8 file's constant x2 up-sampling and, with the torch integers, PyTorch's uint8 up-sampling."""
    from ..model.engines import arch_stride

    if torch_integers:
        torch_int8_integers(i8, model_dir)
    for f in (f32, i8):
        with_post(f, model_dir, cfg)
    fix_upsampling(i8, arch_stride(cfg["arch"]))
    if torch_integers:
        exact_upsampling(i8)


def export_onnx(model_dir, dataset, n_crops: int = 80, crop: int = 256, seed: int = 0, batch: int = 8,
                method: str = "MinMax", qparams: str | None = None, log=print, int8_default: bool = False) -> dict:
    """Write ``model.onnx`` and ``model.int8.onnx`` into ``model_dir`` and record them in its config.json.

    ``qparams``: ``torch`` (the default for an INT8 folder) gives the ONNX INT8 model the PyTorch INT8 graph's
    scales and zero points (:func:`torch_int8_overrides`; weights in 8 bits as torch has them); ``calibrate``
    (the only choice for an fp32 folder) lets ONNX Runtime calibrate its own (``method``, 7-bit weights).
    ``int8_default`` marks an fp32 folder ``"quantized": "onnx-int8"``: CPUs then run ``model.int8.onnx`` by
    default (:mod:`wsi_nuc.model.engine_choice`), CUDA the fp32 network.
    """
    import onnxruntime

    from ..model.engines import folded_fp32
    from ..model.io import read_model_config, resolve_model_dir
    from ..model.inputs import to_input
    from .quantize import calibration_crops

    model_dir = resolve_model_dir(model_dir)
    cfg = read_model_config(model_dir)
    int8 = cfg.get("quantized") == "int8"
    qparams = qparams or ("torch" if int8 else "calibrate")
    if qparams == "torch" and not int8:
        raise ValueError(f"{model_dir}: qparams 'torch' needs an INT8 model folder")
    if int8_default and int8:
        raise ValueError(f"{model_dir}: already an INT8 folder (PyTorch FX); int8_default is for fp32 folders")
    norm = cfg.get("norm") or {"mean": 0.5, "std": 0.25}
    net = folded_fp32(model_dir, cfg)
    crops = calibration_crops(dataset, cfg.get("mpp"), n_crops, crop, seed, cfg.get("stain_norm"))
    x = to_input(crops, norm).numpy()
    check_x = check_crops(dataset, cfg, crop, seed)
    f32 = export_fp32(net, model_dir / "model.onnx")
    overrides = torch_int8_overrides(model_dir, f32) if qparams == "torch" else None
    i8 = quantize_onnx(f32, model_dir / "model.int8.onnx", x, batch, method, reduce_range=overrides is None,
                       overrides=overrides)
    _finish(f32, i8, model_dir, cfg, torch_integers=overrides is not None)
    q = _int8_record(i8, qparams, overrides is not None, method,
                     {"calibration_crops": int(n_crops), "crop": int(crop), "seed": int(seed), "batch": int(batch)})
    info = {"opset": OPSET, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "upsampling": UPSAMPLING,
            "fp32": {"file": f32.name, "sha256": _sha256(f32), "source": "BatchNorm-folded fp32 network"
                     + (" of the INT8 folder (observers removed)" if int8 else "")}, "int8": q}
    info["fp32"]["check"] = _check(net, f32, check_x)
    q.update(_int8_checks(net, i8, model_dir, check_x, int8))
    cfg_path = model_dir / "config.json"
    full = json.loads(cfg_path.read_text())
    full["onnx"] = info
    if int8_default:
        full["quantized"] = "onnx-int8"
    cfg_path.write_text(json.dumps(full, indent=2) + "\n")
    if log:
        log(f"{f32.name}: {info['fp32']['check']}\n{i8.name}: {q['check']}")
    return info


def check_crops(dataset, cfg: dict, crop: int = 256, seed: int = 0) -> np.ndarray:
    """The 4 held-out crops (seed + 1) the exported files are checked on, as network inputs."""
    from ..model.inputs import to_input
    from .quantize import calibration_crops

    norm = cfg.get("norm") or {"mean": 0.5, "std": 0.25}
    return to_input(calibration_crops(dataset, cfg.get("mpp"), 4, crop, seed + 1, cfg.get("stain_norm")),
                    norm).numpy()


def refresh_upsampling(model_dir, dataset=None, log=print) -> dict:
    """Give a folder's existing ``model.int8.onnx`` constant x2 up-sampling (:func:`fix_upsampling`: outputs bit
    for bit the same, checked) and, with the torch graph's integers, PyTorch's uint8 up-sampling
    (:func:`exact_upsampling`); record its new SHA-256 in config.json and, with ``dataset``, its checks again
    (without, the old checks are dropped: they were of the file before)."""
    from ..model.engines import arch_stride, folded_fp32
    from ..model.io import read_model_config, resolve_model_dir

    model_dir = resolve_model_dir(model_dir)
    cfg_path = model_dir / "config.json"
    full = json.loads(cfg_path.read_text())
    info = full.get("onnx")
    if not info:
        raise ValueError(f"{model_dir}: no ONNX files recorded (python -m wsi_nuc.train.onnx_export)")
    rec = info["int8"]
    n = fix_upsampling(model_dir / rec["file"], arch_stride(full["arch"]))
    k = exact_upsampling(model_dir / rec["file"]) if rec.get("qparams") == "torch" else 0
    rec["sha256"] = _sha256(model_dir / rec["file"])
    for key in ("check", "check_vs_torch_int8"):
        rec.pop(key, None)
    if dataset is not None:
        cfg = read_model_config(model_dir)
        rec.update(_int8_checks(folded_fp32(model_dir, cfg), model_dir / rec["file"], model_dir,
                                check_crops(dataset, cfg), full.get("quantized") == "int8"))
    if log:
        log(f"{rec['file']}: {n} Resize nodes given constant x2 scales (outputs unchanged), {k} up-sampling "
            f"PyTorch's integers; checks {rec.get('check_vs_torch_int8', rec.get('check', 'dropped'))}")
    info["upsampling"] = UPSAMPLING
    cfg_path.write_text(json.dumps(full, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wsi_nuc.train.onnx_export", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model folder (or shipped name) to add model.onnx and model.int8.onnx to")
    ap.add_argument("--dataset", help="annotated dataset folder (its train split calibrates); needed to export")
    ap.add_argument("--crops", type=int, default=80)
    ap.add_argument("--method", default="MinMax", choices=("MinMax", "Entropy", "Percentile", "Distribution"))
    ap.add_argument("--qparams", choices=("torch", "calibrate"),
                    help="INT8 scales: the torch INT8 graph's (default for INT8 folders) or ONNX Runtime's own")
    ap.add_argument("--int8-default", action="store_true",
                    help="fp32 folder: make model.int8.onnx what CPUs run by default (\"quantized\": \"onnx-int8\")")
    ap.add_argument("--upsampling-only", action="store_true",
                    help="only rewrite the folder's existing model.int8.onnx's up-sampling "
                         "(with --dataset: check it again)")
    a = ap.parse_args(argv)
    if a.upsampling_only:
        refresh_upsampling(a.model, a.dataset)
        return 0
    if not a.dataset:
        ap.error("--dataset is needed to export (or give --upsampling-only)")
    export_onnx(a.model, a.dataset, a.crops, method=a.method, qparams=a.qparams, int8_default=a.int8_default)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
