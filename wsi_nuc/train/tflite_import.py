"""Convert the ImageNet-pretrained MobileNetV2 TFLite file into our encoder's weights (safetensors).

Steps: (1) parse the flatbuffer with the ``tflite`` package; (2) walk its operators in graph order
(stem conv, then per inverted residual: [expand 1x1], depthwise 3x3, project 1x1, [add]); (3) dequantise
each weight and bias (``scale * (q - zero_point)``, per tensor or per channel) and lay it out as PyTorch
expects (OHWI -> OIHW; depthwise 1HWC -> C1HW); (4) check the result against TensorFlow Lite's own
interpreter on real images (:func:`compare_with_tflite`); (5) write the encoder as safetensors.

Source file: ``mobilenet_v2_1.0_224_quant.tflite`` (TensorFlow-slim MobileNetV2, Apache-2.0), see
``../shared/weights/README.md``. Training code only: inference never imports this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.mobilenet import MobileNetV2Encoder, SameConv

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
ENCODER_FILE = PRETRAINED_DIR / "mobilenet_v2_1.0_imagenet.safetensors"
SOURCE_SHA256 = "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776"


def _op_names() -> dict:
    import tflite

    return {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}


def _dequantise(model, graph, index: int) -> np.ndarray:
    t = graph.Tensors(index)
    raw = model.Buffers(t.Buffer()).DataAsNumpy()
    dtype = {2: np.int32, 3: np.uint8, 9: np.int8, 0: np.float32}[t.Type()]
    q = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy())
    qp = t.Quantization()
    if qp is None or qp.ScaleLength() == 0:
        return q.astype(np.float32)
    scale = qp.ScaleAsNumpy().astype(np.float64)
    zero = qp.ZeroPointAsNumpy().astype(np.float64)
    if scale.size > 1:  # per-channel along the quantised dimension
        shape = [1] * q.ndim
        shape[qp.QuantizedDimension()] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (scale * (q.astype(np.float64) - zero)).astype(np.float32)


def read_tflite_ops(path: str | Path) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
    """The graph's operators in order as (op name, float weight, float bias); weights OHWI / 1HWC."""
    import tflite

    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    names = _op_names()
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        w = b = None
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = _dequantise(model, graph, op.Inputs(1))
            b = _dequantise(model, graph, op.Inputs(2))
        ops.append((name, w, b))
    return ops


def _set(conv: nn.Conv2d, name: str, w: np.ndarray, b: np.ndarray) -> None:
    t = torch.from_numpy(w)
    t = t.permute(3, 0, 1, 2) if name == "DEPTHWISE_CONV_2D" else t.permute(0, 3, 1, 2)
    if tuple(t.shape) != tuple(conv.weight.shape):
        raise ValueError(f"{name}: weight {tuple(t.shape)} does not fit {tuple(conv.weight.shape)}")
    with torch.no_grad():
        conv.weight.copy_(t)
        conv.bias.copy_(torch.from_numpy(b))


class ImageNetMobileNetV2(nn.Module):
    """Encoder + the original head (1x1 to 1280, ReLU6, average pool, 1x1 classifier): for checking only."""

    def __init__(self):
        super().__init__()
        self.encoder = MobileNetV2Encoder()
        self.conv_last = SameConv(320, 1280, 1)
        self.classifier = SameConv(1280, 1001, 1)

    def forward(self, x):
        y = F.relu6(self.conv_last(self.encoder(x)[-1]))
        return self.classifier(y.mean(dim=(-2, -1), keepdim=True)).flatten(1)


def convert(path: str | Path) -> ImageNetMobileNetV2:
    """Build the float network from the TFLite file (encoder weights and the classifier)."""
    convs = [(n, w, b) for n, w, b in read_tflite_ops(path) if w is not None]
    net = ImageNetMobileNetV2()
    targets = [net.encoder.stem]
    for blk in net.encoder.blocks:
        targets += ([blk.expand] if blk.expand is not None else []) + [blk.depthwise, blk.project]
    targets += [net.conv_last, net.classifier]
    if len(convs) != len(targets):
        raise ValueError(f"{path}: {len(convs)} convolutions, expected {len(targets)} (not MobileNetV2 1.0?)")
    for conv, (name, w, b) in zip(targets, convs):
        want = "DEPTHWISE_CONV_2D" if conv.groups > 1 else "CONV_2D"
        if name != want:
            raise ValueError(f"{path}: found {name} where {want} was expected")
        _set(conv, name, w, b)
    return net.eval()


def to_input(rgb224: np.ndarray) -> torch.Tensor:
    """(B, 224, 224, 3) uint8 -> the model's input convention, RGB scaled to [-1, 1]."""
    x = torch.from_numpy(rgb224.astype(np.float32)).permute(0, 3, 1, 2)
    return x / 128.0 - 1.0


def compare_with_tflite(path: str | Path, images: np.ndarray, net: ImageNetMobileNetV2 | None = None) -> dict:
    """Run the original (TensorFlow Lite interpreter, uint8) and the converted float network on the same
    (B, 224, 224, 3) uint8 images; returns top-1 agreement, mean top-5 overlap and the correlation of the
    logits (before softmax on our side; the interpreter's softmax output is compared by log)."""
    from ai_edge_litert.interpreter import Interpreter

    net = net or convert(path)
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    ref = []
    for im in images:
        interp.set_tensor(inp["index"], im[None].astype(np.uint8))
        interp.invoke()
        q = interp.get_tensor(out["index"]).astype(np.float64)
        scale, zero = out["quantization"]
        ref.append(scale * (q - zero) if scale else q)
    ref = np.concatenate(ref)
    with torch.no_grad():
        ours = torch.softmax(net(to_input(images)), -1).numpy()
    top1 = float(np.mean(ref.argmax(1) == ours.argmax(1)))
    top5 = float(np.mean([len(set(np.argsort(r)[-5:]) & set(np.argsort(o)[-5:])) / 5
                          for r, o in zip(ref, ours)]))
    corr = float(np.corrcoef(ref.ravel(), ours.ravel())[0, 1])
    return {"images": len(images), "top1_agreement": top1, "top5_overlap": top5, "prob_correlation": corr,
            "max_abs_prob_diff": float(np.abs(ref - ours).max())}


def save_encoder(net: ImageNetMobileNetV2, path: str | Path = ENCODER_FILE) -> Path:
    """Write the encoder's weights (fp16: the source was 8-bit) as safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in net.encoder.state_dict().items()}
    save_file(state, str(path), metadata={
        "source": "mobilenet_v2_1.0_224_quant.tflite (TensorFlow-slim MobileNetV2, ImageNet)",
        "source_sha256": SOURCE_SHA256, "licence": "Apache-2.0"})
    return path


def load_encoder(encoder: MobileNetV2Encoder, path: str | Path = ENCODER_FILE) -> None:
    """Initialise an encoder from the converted ImageNet weights (no pickle)."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(path)).items()}
    encoder.load_state_dict(state)
