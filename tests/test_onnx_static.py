"""The shipped INT8 ONNX files up-sample with constant x2 scales (no shape arithmetic on dequantised tensors), and
the rewrite refuses a file whose outputs it would change."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

from wsi_nuc.model.folders import resolve_model_dir
from wsi_nuc.train.onnx_static import constant_x2_scales, fix_upsampling


@pytest.mark.parametrize("name", ["he-types-int8", "he-student-int8"])
def test_shipped_int8_files_upsample_with_constant_scales(name):
    g = onnx.load(str(resolve_model_dir(name) / "model.int8.onnx")).graph
    inits = {i.name: nh.to_array(i) for i in g.initializer}
    resizes = [n for n in g.node if n.op_type == "Resize"]
    assert resizes and not [n for n in g.node if n.op_type == "Shape"]
    for n in resizes:
        assert len(n.input) == 3 and np.array_equal(inits[n.input[2]], [1, 1, 2, 2]), n.name


def test_rewrite_of_a_float_file_is_refused_and_leaves_it_alone(tmp_path):
    """In a float file ONNX Runtime runs a constant-scale Resize with another kernel (last-bit differences): the
    check on the probe catches it and the file keeps its bytes."""
    path = tmp_path / "model.onnx"
    shutil.copy(resolve_model_dir("he-student-int8") / "model.onnx", path)
    before = path.read_bytes()
    model = onnx.load(str(path))
    assert constant_x2_scales(model) == 3 and not [n for n in model.graph.node if n.op_type == "Shape"]
    with pytest.raises(RuntimeError, match="changes the outputs"):
        fix_upsampling(path, stride=8)
    assert path.read_bytes() == before and not [p for p in tmp_path.iterdir() if p != path]


def test_rewritten_int8_file_is_left_as_it_is(tmp_path):
    path = tmp_path / "model.int8.onnx"
    shutil.copy(resolve_model_dir("he-types-int8") / "model.int8.onnx", path)
    before = path.read_bytes()
    assert fix_upsampling(path, stride=8) == 0 and path.read_bytes() == before


def _x2_half_even(x: np.ndarray) -> np.ndarray:
    """The x2 bilinear up-sampling (half-pixel, edges clamped) of uint8 NCHW integers, rounded half to even:
    what PyTorch's quantised kernel gives for a zero point of 0."""
    def axis(a, ax):
        n = a.shape[ax]
        prev = np.take(a, np.r_[0, np.arange(n - 1)], axis=ax)
        nxt = np.take(a, np.r_[np.arange(1, n), n - 1], axis=ax)
        out = np.stack([3 * a + prev, 3 * a + nxt], axis=ax + 1)
        return out.reshape(a.shape[:ax] + (2 * n,) + a.shape[ax + 1:])

    num = axis(axis(x.astype(np.int64), 2), 3)            # 16 x the exact value
    q, r = num // 16, num % 16
    return (q + ((r > 8) | ((r == 8) & (q % 2 == 1)))).astype(np.uint8)


def _resize_pair(scale: float, zero_point: int):
    from onnx import TensorProto, helper

    inits = [nh.from_array(np.array(scale, np.float32), "s"), nh.from_array(np.array(zero_point, np.uint8), "z"),
             nh.from_array(np.array([1, 1, 2, 2], np.float32), "x2")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["f"]),
             helper.make_node("Resize", ["f", "", "x2"], ["g"], mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("QuantizeLinear", ["g", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("q", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, q):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"q": q})[0]


def test_unit_scale_upsampling_rounds_as_pytorch():
    """With the tensor's own scale about 1 % of the values (those on a half) come out a step off; with unit scale
    none. A non-zero zero point is left alone, and a second pass changes nothing."""
    from wsi_nuc.train.onnx_static import unit_scale_upsampling

    q = np.random.default_rng(0).integers(0, 200, (1, 8, 33, 47)).astype(np.uint8)
    want = _x2_half_even(q)
    model = _resize_pair(0.0478, 0)
    assert (_run(model, q) != want).mean() > 0.005
    assert unit_scale_upsampling(model) == 1 and unit_scale_upsampling(model) == 0
    assert np.array_equal(_run(model, q), want)
    assert unit_scale_upsampling(_resize_pair(0.0478, 59)) == 0


@pytest.mark.parametrize("name", ["he-types-int8", "he-student-int8"])
def test_shipped_int8_files_upsample_trunk_integers_at_unit_scale(name):
    from wsi_nuc.train.onnx_static import unit_scale_upsampling

    model = onnx.load(str(resolve_model_dir(name) / "model.int8.onnx"))
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    unit = [n for n in model.graph.node if n.op_type == "Resize"
            and float(inits[prod[n.input[0]].input[1]]) == 1.0]
    assert len(unit) >= 3 and unit_scale_upsampling(model) == 0
