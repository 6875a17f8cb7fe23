"""ONNX INT8 files' up-sampling: constant x2 scales instead of sizes read off a tensor, and PyTorch's integers.

``torch.onnx.export`` writes ``F.interpolate(x, size=skip.shape[-2:])`` as Shape -> Slice -> Concat -> Resize
``sizes``. In a QDQ file the Shape reads the skip tensor *after* its DequantizeLinear, so ONNX Runtime converts the
whole uint8 tensor to NCHW and to float (a Transpose and a DequantizeLinear of up to 640² x 16 values) just to
learn its height and width: seven such pairs in a typed U-Net. Every up-sampling of the U-Net doubles its input
(inputs are multiples of the network's stride), so ``scales = [1, 1, 2, 2]`` gives the same output size and,
with ``half_pixel`` coordinates, the same source coordinates: the outputs are bit for bit those of the file
before, which :func:`fix_upsampling` checks on a probe before it replaces the file. (Used on QDQ files only: in
a float file ONNX Runtime runs a constant-scale Resize with its blocked-layout kernel, whose sums differ in the
last bits.)

:func:`unit_scale_upsampling` then makes the uint8 up-sampling the same integers as PyTorch's quantised kernel
(the reference the file's integers come from); that one changes outputs, by design.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

X2 = np.array([1, 1, 2, 2], np.float32)


def constant_x2_scales(model) -> int:
    """Give every Resize that reads computed ``sizes`` the constant scales (1, 1, 2, 2) and drop the nodes only
    those sizes needed; returns the number of Resize nodes changed (in place)."""
    from onnx import numpy_helper as nh

    g = model.graph
    n = 0
    for node in g.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[3]:
            name = f"{node.name or node.output[0]}_x2_scales"
            g.initializer.append(nh.from_array(X2, name))
            node.input[2] = name
            del node.input[3]
            n += 1
    prune(model)
    return n


def unit_scale_upsampling(model) -> int:
    """Up-sample uint8 tensors exactly as PyTorch's quantised kernel does: every DequantizeLinear -> Resize ->
    QuantizeLinear whose two steps share one scale and zero point 0 dequantises with scale 1 instead (in place;
    returns the number of Resize nodes changed).

    The float Resize then works on the integers themselves: the x2 weights (1/16, 3/16, 9/16) times values below
    256 and their sums are exact in float32, and QuantizeLinear rounds half to even, as PyTorch's kernel does.
    With the tensor's own scale the products carry float rounding, and about 1 % of the up-sampled values,
    those on a half, came out one step off PyTorch's. A Resize whose zero point is not 0 (the type logits,
    which PyTorch up-samples in float) is left as it is."""
    from onnx import helper
    from onnx import numpy_helper as nh

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: node for node in g.node for o in node.output}
    cons: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            cons.setdefault(i, []).append(node)
    unit = "wsi_nuc_unit_scale"
    n = 0
    for node in list(g.node):
        if node.op_type != "Resize":
            continue
        dq, after = prod.get(node.input[0]), cons.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        if dq.input[1] == unit or not all(k in inits for k in (dq.input[1], dq.input[2], q.input[1], q.input[2])):
            continue
        s_in, s_out = (float(nh.to_array(inits[k])) for k in (dq.input[1], q.input[1]))
        z_in, z_out = (int(nh.to_array(inits[k])) for k in (dq.input[2], q.input[2]))
        if s_in != s_out or z_in != 0 or z_out != 0:
            continue
        if unit not in inits:
            inits[unit] = nh.from_array(np.array(1.0, np.float32), unit)
            g.initializer.append(inits[unit])
        out = f"{node.input[0]}_unit_scale"
        g.node.insert(list(g.node).index(node), helper.make_node(
            "DequantizeLinear", [dq.input[0], unit, dq.input[2]], [out], name=f"{node.name}_dequantize_unit_scale"))
        node.input[0] = out
        q.input[1] = unit
        n += 1
    prune(model)
    return n


def exact_upsampling(path: Path) -> int:
    """:func:`unit_scale_upsampling` on the ONNX file at ``path`` (written in place; returns the count)."""
    import onnx

    model = onnx.load(str(path))
    n = unit_scale_upsampling(model)
    if n:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return n


def prune(model) -> None:
    """Remove nodes no graph output depends on, and the initializers nothing reads (in place)."""
    g = model.graph
    outs = {o.name for o in g.output}
    while True:
        used = {i for node in g.node for i in node.input} | outs
        dead = [node for node in g.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            g.node.remove(node)
    used = {i for node in g.node for i in node.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]          # shapes inferred before the change may name removed tensors


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def fix_upsampling(path: Path, stride: int, seed: int = 0) -> int:
    """Rewrite the ONNX file at ``path`` with :func:`constant_x2_scales` when its outputs stay bit for bit the same
    on a probe input (1 x 3 x 4·stride x 6·stride, normal noise); RuntimeError otherwise, the file untouched.
    Returns the number of Resize nodes changed (0: nothing to do, the file untouched)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    n = constant_x2_scales(model)
    if not n:
        return 0
    onnx.checker.check_model(model)
    x = np.random.default_rng(seed).normal(0, 1, (1, 3, 4 * stride, 6 * stride)).astype(np.float32)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        before, after = _outputs(path, x), _outputs(Path(tmp), x)
        if len(before) != len(after) or not all(np.array_equal(a, b) for a, b in zip(before, after)):
            raise RuntimeError(f"{path}: constant x2 up-sampling changes the outputs; the file is left as it was")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n
