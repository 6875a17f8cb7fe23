"""A model folder's post-processing of the raw outputs, appended to its ONNX network as a second output.

``append_post(model, model_dir, cfg)`` adds ``maps`` to an ONNX graph whose output is ``raw`` and input
``x``: what :meth:`wsi_nuc.predict.Predictor.maps` computes from ``raw`` on the CPU (LTS-calibrated
foreground probability, sigmoid of boundary / dist / centre, tanh of the offsets, the type softmax
re-weighted by ``type_weights``), as float ONNX operators with the folder's LTS weights. The graph's metadata
records :func:`wsi_nuc.model.onnx_run.post_signature`, so a folder recalibrated later is noticed at load.
Build side only (needs ``onnx``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model.onnx_run import POST_KEY, post_signature
from ..predict import N_MAPS
from ..refine import LOGIT_CLIP, LOGIT_SCALE


def append_post(model, model_dir: Path, cfg: dict):
    """``model`` (onnx.ModelProto, output ``raw``) with the output ``maps`` added, in place; returns it."""
    import onnx
    from onnx import TensorProto, helper as h, numpy_helper as nh

    g = model.graph
    raw, x = g.output[0].name, g.input[0].name
    nodes, inits = [], []

    def const(name, a):
        inits.append(nh.from_array(np.asarray(a), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(h.make_node(op, ins, [out], name="post_" + out, **kw))
        return out

    axis1 = const("post_axis1", np.array([1], np.int64))

    def chans(a, b, name):
        return node("Slice", [raw, const(f"post_{name}_s", np.array([a], np.int64)),
                              const(f"post_{name}_e", np.array([b], np.int64)), axis1], f"post_{name}")

    logit = chans(0, 1, "fg_logit")
    logit = _lts(logit, x, model_dir, cfg, node, const)
    parts = [node("Sigmoid", [logit], "post_fg"), node("Sigmoid", [chans(1, 3, "bd")], "post_bd_act"),
             node("Tanh", [chans(3, 5, "hv")], "post_hv_act"), node("Sigmoid", [chans(5, 6, "ce")], "post_ce_act")]
    nt = len(cfg.get("types") or [])
    if nt:
        # softmax over the channels, written out: ONNX Runtime's Softmax on axis 1 of NCHW transposes twice
        # (7 % of a tile's time); with type weights, softmax·w / Σ softmax·w = e·w / Σ e·w
        ty = chans(N_MAPS, N_MAPS + 1 + nt, "ty")
        e = node("Exp", [node("Sub", [ty, node("ReduceMax", [ty], "post_ty_max", axes=[1], keepdims=1)],
                              "post_ty_shift")], "post_ty_exp")
        if cfg.get("type_weights"):
            wts = np.array([1.0, *map(float, cfg["type_weights"])], np.float32).reshape(1, -1, 1, 1)
            e = node("Mul", [e, const("post_tw", wts)], "post_ty_w")
        parts.append(node("Div", [e, node("ReduceSum", [e, axis1], "post_ty_sum", keepdims=1)], "post_ty_act"))
    node("Concat", parts, "maps", axis=1)
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.output.append(h.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", "channels", "height", "width"]))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {POST_KEY: post_signature(model_dir, cfg)})
    onnx.checker.check_model(model)
    return model


def _lts(logit: str, x: str, model_dir: Path, cfg: dict, node, const) -> str:
    """The LTS-calibrated foreground logit ``logit / T`` (:class:`wsi_nuc.refine.LTSHead`), or ``logit`` itself
    where the folder has no LTS head."""
    cal = cfg.get("calibration") or {}
    lts = Path(model_dir) / cal.get("file", "lts.safetensors")
    if cal.get("method") != "lts" or not lts.is_file():
        return logit
    from safetensors.numpy import load_file

    w = load_file(str(lts))
    z = node("Clip", [logit, const("post_lo", np.array(-LOGIT_CLIP, np.float32)),
                      const("post_hi", np.array(LOGIT_CLIP, np.float32))], "post_clip")
    z = node("Div", [z, const("post_scale", np.array(LOGIT_SCALE, np.float32))], "post_z")
    if cal.get("use_rgb"):
        z = node("Concat", [z, x], "post_zx", axis=1)
    c1 = node("Conv", [z, const("post_w1", w["conv1.weight"].astype(np.float32)),
                       const("post_b1", w["conv1.bias"].astype(np.float32))], "post_c1", pads=[1, 1, 1, 1])
    c1 = node("Relu", [c1], "post_h")
    c2 = node("Conv", [c1, const("post_w2", w["conv2.weight"].astype(np.float32)),
                       const("post_b2", w["conv2.bias"].astype(np.float32))], "post_c2", pads=[1, 1, 1, 1])
    t = node("Add", [node("Softplus", [c2], "post_sp"),
                     const("post_tmin", np.array(float(cal.get("t_min", 0.05)), np.float32))], "post_t")
    return node("Div", [logit, t], "post_cal")
