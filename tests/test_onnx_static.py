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
