"""ONNX copies of a model folder's network for ONNX Runtime (``--engine onnx-fp32 / onnx-int8``).

``export_onnx(model_dir, dataset)`` writes into the model folder:

- ``model.onnx``: the BatchNorm-folded fp32 network (:func:`wsi_nuc.model.engines.folded_fp32`; for an
  INT8 folder the float network its INT8 graph approximates), ``torch.onnx.export`` (TorchScript
  exporter, opset 17), batch, height and width dynamic;
- ``model.int8.onnx``: ONNX Runtime static quantisation of it (``quantize_static``, QDQ format, int8
  per-channel symmetric weights in 7 bits (``reduce_range``: the same results on CPUs with and without
  VNNI), uint8 activations, MinMax ranges), calibrated on the same crops ``wsi-nuc quantize``
  calibrates the PyTorch INT8 graph on (80 stain-normalised 256² train crops, seed 0);

and records under ``"onnx"`` in ``config.json`` the files' SHA-256, the settings and a check against the
fp32 network on held-out crops. These files are built where the training data is (calibration needs it)
and shipped in the model folder; nothing is exported or calibrated on a user's machine.

Run it on a folder: ``python -m wsi_nuc.train.onnx_export MODEL_DIR --dataset ../shared/data/monuseg2018-train``.
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

OPSET = 17


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
                  reduce_range: bool = True) -> Path:
    """Static QDQ quantisation of ``fp32`` calibrated on ``x`` (normalised crops, NCHW float32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), _Crops(x, batch), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=reduce_range, calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return Path(out)


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


def export_onnx(model_dir, dataset, n_crops: int = 80, crop: int = 256, seed: int = 0, batch: int = 8,
                method: str = "MinMax", reduce_range: bool = True, log=print) -> dict:
    """Write ``model.onnx`` and ``model.int8.onnx`` into ``model_dir`` and record them in its config.json."""
    import onnxruntime

    from ..model.engines import folded_fp32
    from ..model.io import read_model_config, resolve_model_dir
    from .quantize import _to_input, calibration_crops

    model_dir = resolve_model_dir(model_dir)
    cfg = read_model_config(model_dir)
    norm = cfg.get("norm") or {"mean": 0.5, "std": 0.25}
    net = folded_fp32(model_dir, cfg)
    crops = calibration_crops(dataset, cfg.get("mpp"), n_crops, crop, seed, cfg.get("stain_norm"))
    x = _to_input(crops, norm).numpy()
    check_x = _to_input(calibration_crops(dataset, cfg.get("mpp"), 4, crop, seed + 1, cfg.get("stain_norm")),
                        norm).numpy()
    f32 = export_fp32(net, model_dir / "model.onnx")
    i8 = quantize_onnx(f32, model_dir / "model.int8.onnx", x, batch, method, reduce_range)
    info = {"opset": OPSET, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "fp32": {"file": f32.name, "sha256": _sha256(f32), "source": "BatchNorm-folded fp32 network"
                     + (" of the INT8 folder (observers removed)" if cfg.get("quantized") == "int8" else "")},
            "int8": {"file": i8.name, "sha256": _sha256(i8), "format": "QDQ", "weights": "int8 per-channel symmetric",
                     "activations": "uint8 asymmetric", "calibration": method, "reduce_range": bool(reduce_range),
                     "calibration_crops": int(n_crops), "crop": int(crop), "seed": int(seed), "batch": int(batch)}}
    info["fp32"]["check"] = _check(net, f32, check_x)
    info["int8"]["check"] = _check(net, i8, check_x)
    cfg_path = model_dir / "config.json"
    full = json.loads(cfg_path.read_text())
    full["onnx"] = info
    cfg_path.write_text(json.dumps(full, indent=2) + "\n")
    if log:
        log(f"{f32.name}: {info['fp32']['check']}\n{i8.name}: {info['int8']['check']}")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wsi_nuc.train.onnx_export", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model folder (or shipped name) to add model.onnx and model.int8.onnx to")
    ap.add_argument("--dataset", required=True, help="annotated dataset folder (its train split calibrates)")
    ap.add_argument("--crops", type=int, default=80)
    ap.add_argument("--method", default="MinMax", choices=("MinMax", "Entropy", "Percentile", "Distribution"))
    ap.add_argument("--full-range", action="store_true", help="8-bit weights (default 7-bit: ONNX Runtime's "
                    "advice for U8S8 on CPUs without VNNI, whose int16 pair sums can saturate)")
    a = ap.parse_args(argv)
    export_onnx(a.model, a.dataset, a.crops, method=a.method, reduce_range=not a.full_range)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
