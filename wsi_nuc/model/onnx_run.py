"""ONNX Runtime engines (``onnx-int8``, the CPU default for INT8 folders, and ``onnx-fp32``), without torch.

A model folder ships its networks as ONNX files built where the training data is
(:mod:`wsi_nuc.train.onnx_export`): nothing is traced, quantised or compiled on a user's machine, and
loading is an ONNX Runtime session (about 0.1 s) instead of a graph rebuilt each time.

Besides the network's raw outputs (``raw``), a file may carry the folder's post-processing of them as a
second output (``maps``): the LTS-calibrated foreground probability, the sigmoid / tanh activations, the type
softmax and its ``type_weights`` (:func:`wsi_nuc.train.onnx_post.append_post`). The file records what it baked
in (:func:`post_signature`, in its metadata); :class:`OnnxNet` uses ``maps`` only while the folder still says
the same (a recalibrated folder falls back to the torch post-processing of ``raw``). With ``maps``, a tile goes
from RGB to head maps with numpy and ONNX Runtime alone: a default CPU run never imports torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError

POST_KEY = "wsi_nuc.post"       # metadata key of the baked post-processing's signature
DEFAULT_NORM = {"mean": 0.5, "std": 0.25}


def post_signature(model_dir: Path, cfg: dict) -> str:
    """What a baked post-processing depends on in the folder, as one string: the LTS head's bytes and
    settings, the number of types and their weights (any change: the ``maps`` output is stale)."""
    cal = cfg.get("calibration") or {}
    lts = Path(model_dir) / cal.get("file", "lts.safetensors")
    sig = {"lts_sha256": hashlib.sha256(lts.read_bytes()).hexdigest() if cal.get("method") == "lts"
           and lts.is_file() else None,
           "lts": {k: cal.get(k) for k in ("use_rgb", "hidden", "t_min")} if cal.get("method") == "lts" else None,
           "types": len(cfg.get("types") or []), "type_weights": cfg.get("type_weights")}
    return json.dumps(sig, sort_keys=True)


def default_threads() -> int:
    """ONNX Runtime intra-op threads when none are named: torch's count where torch is loaded (a Dask
    worker's plugin set it), else ``OMP_NUM_THREADS``, else the cores shared by the run's 2 tile threads."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = os.cpu_count() or 1
    return max(1, cores // min(cores, 2))


def to_input_np(rgb: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """(B, H, W, 3) RGB 0..255 -> (B, 3, H, W) float32 ``(x / 255 - mean) / std``, the float32 operations of
    :func:`wsi_nuc.model.inputs.to_input` in the same order."""
    norm = norm or {}
    mean = np.float32(norm.get("mean", DEFAULT_NORM["mean"]))
    std = np.float32(norm.get("std", DEFAULT_NORM["std"]))
    x = np.asarray(rgb).transpose(0, 3, 1, 2).astype(np.float32)
    x /= np.float32(255.0)
    x -= mean
    x /= std
    return np.ascontiguousarray(x)


class OnnxNet:
    """An ONNX Runtime CPU session with the torch network's interface (``net(x) -> raw``, ``stride``), and
    :meth:`maps_np` where the file carries the folder's current post-processing."""

    def __init__(self, path: Path, stride: int, threads: int | None = None, model_dir: Path | None = None,
                 cfg: dict | None = None, trunk_only: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or default_threads())
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
        # no memory pattern: ONNX Runtime would plan one block for every tensor of a call and hold it (one 640²
        # call peaked at 369 MB); reusing the arena's freed chunks instead peaks at 220 MB and is as fast or faster
        # (AVX512-VNNI, 1 thread: 187 vs 199 ms; shrinking the arena after each call, as before: 269 MB, 256 ms)
        so.enable_mem_pattern = False
        self.input = self.session.get_inputs()[0].name
        outs = [o.name for o in self.session.get_outputs()]
        self.raw_name = outs[0]
        baked = self.session.get_modelmeta().custom_metadata_map.get(POST_KEY)
        self.post = ("maps" in outs and baked is not None and model_dir is not None and cfg is not None
                     and not trunk_only and baked == post_signature(model_dir, cfg))
        self.stride = int(stride)
        self.path = Path(path)

    def eval(self):
        return self

    def raw_np(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.raw_name], {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def maps_np(self, x: np.ndarray) -> np.ndarray:
        """Head maps (B, C, H, W) float32 of normalised inputs, as ``Predictor.maps`` makes them from ``raw``."""
        return self.session.run(["maps"], {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.raw_np(x.detach().cpu().numpy()))
