"""Model folders: ``config.json`` + ``model.safetensors`` (+ ``card.md``): checked, loaded and saved without
pickle. Where folders are and reading their config: :mod:`.folders` (re-exported here)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: the driver of `wsi-nuc run` never needs it
    import torch

    from .net import UNet

from .folders import (CUDA_DEFAULT_MODEL, DEFAULT_MODEL, SHIPPED, cuda_available, default_model,  # noqa: F401
                      read_model_config, resolve_model_dir, shipped_models)

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 << 20


# config.json "quantized": None (fp32 network), "int8" (model.safetensors holds PyTorch's FX INT8 graph, the
# v0.2-v0.5 defaults) or "onnx-int8" (model.safetensors holds the fp32 network; its INT8 form is only the
# folder's model.int8.onnx, calibrated by ONNX Runtime, which CPUs run by default: wsi_nuc.model.engine_choice)
QUANTIZED = (None, "int8", "onnx-int8")


def safetensors_header(path: Path) -> dict:
    """{name: (dtype, shape)} of a safetensors file, checked without loading it (and without torch):
    the header is valid JSON, every tensor's bytes lie in the file, back to back, and match its dtype
    and shape. InputError names the file and the cause."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                raise ValueError("no valid safetensors header (truncated or not a safetensors file)")
            header = json.loads(fh.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no weights file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: damaged weights file ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: damaged weights file (header is not a JSON object)")
    out, spans = {}, []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b0, b1) = t["dtype"], [int(d) for d in t["shape"]], t["data_offsets"]
            count = 1
            for d in shape:
                if d < 0:
                    raise ValueError
                count *= d
            ok = dtype in _DTYPE_BYTES and 0 <= int(b0) <= int(b1) and int(b1) - int(b0) == count * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{path}: damaged weights file (tensor {name!r} is described inconsistently)")
        out[name] = (dtype, tuple(shape))
        spans.append((int(b0), int(b1)))
    end = 0
    for b0, b1 in sorted(spans):
        if b0 != end:
            raise InputError(f"{path}: damaged weights file (tensor data overlaps or has gaps)")
        end = b1
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "has trailing bytes"
        raise InputError(f"{path}: damaged weights file ({what}: {size} bytes, header says {8 + n + end})")
    return out


def expected_shapes(arch: dict, quantized: bool = False) -> dict:
    """{state-dict name: shape} of the U-Net (``wsi_nuc.model.net``) that ``arch`` describes, computed
    without torch. INT8 folders store the BatchNorm-folded convolutions under ``net.`` (plus observer
    state, not listed here)."""
    base, depth, maxc = int(arch.get("base", 32)), int(arch.get("depth", 4)), int(arch.get("max_channels", 256))
    cin, heads = int(arch.get("in_channels", 3)), len(arch.get("heads", ("fg", "boundary", "dist", "hv_x",
                                                                         "hv_y", "centre")))
    types = arch.get("types") or ()
    branch = int(arch.get("type_branch", 0)) if types else 0
    n_types = len(types) + 1 if types else 0          # one logit per type plus "no type"
    heads += 0 if branch else n_types                 # the 1x1 head gives them unless a type branch does
    if base < 1 or depth < 1 or maxc < 1 or cin < 1 or heads < 1:
        raise ValueError("non-positive sizes")
    ch = [min(base * 2 ** i, maxc) for i in range(depth)]
    out = {}

    def block(prefix, a, b):
        if quantized:
            for conv, c_in in ((0, a), (3, b)):
                out[f"net.{prefix}.{conv}.0.weight"] = (b, c_in, 3, 3)
                out[f"net.{prefix}.{conv}.0.bias"] = (b,)
            return
        for conv, bn, c_in in ((0, 1, a), (3, 4, b)):
            out[f"{prefix}.{conv}.weight"] = (b, c_in, 3, 3)
            for k in ("weight", "bias", "running_mean", "running_var"):
                out[f"{prefix}.{bn}.{k}"] = (b,)
            out[f"{prefix}.{bn}.num_batches_tracked"] = ()

    for i, c in enumerate(ch):
        block(f"enc.{i}", cin, c)
        cin = c
    for j, i in enumerate(range(len(ch) - 2, -1, -1)):
        block(f"dec.{j}", ch[i + 1] + ch[i], ch[i])
    pre = "net." if quantized else ""
    out[f"{pre}head.weight"] = (heads, ch[0], 1, 1)
    out[f"{pre}head.bias"] = (heads,)
    if branch:
        if depth < 4:
            raise ValueError("a type branch needs depth >= 4")
        for name, c_in, k in (("deep", ch[-1], 3), ("quarter.0", branch + ch[2], 3), ("quarter.1", branch, 3),
                              ("join", branch + ch[1], 1)):
            if quantized:
                out[f"net.type_branch.{name}.0.0.weight"] = (branch, c_in, k, k)
                out[f"net.type_branch.{name}.0.0.bias"] = (branch,)
                continue
            out[f"type_branch.{name}.0.weight"] = (branch, c_in, k, k)
            for p in ("weight", "bias", "running_mean", "running_var"):
                out[f"type_branch.{name}.1.{p}"] = (branch,)
            out[f"type_branch.{name}.1.num_batches_tracked"] = ()
        out[f"{pre}type_branch.logits.weight"] = (n_types, branch, 1, 1)
        out[f"{pre}type_branch.logits.bias"] = (n_types,)
    return out


def check_model_dir(model_dir: Path) -> dict:
    """Check a model folder before any cluster starts; return its config.

    config.json: a JSON object with ``arch`` (and sane ``mpp``, ``stain_norm`` when present);
    model.safetensors: a valid header whose tensors have the shapes ``arch`` implies (every one for an
    fp32 U-Net, the folded convolutions for an INT8 one; for another kind of network, such as
    ``mobileunet``, the header only); a calibration file, when named, has a valid header. Every failure is one InputError naming the file and the cause.
    """
    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir)
    cfg_path = model_dir / "config.json"
    arch = cfg.get("arch")
    if not isinstance(arch, dict):
        raise InputError(f"{cfg_path}: no 'arch' entry (the network's shape); not a wsi-nuc model config")
    mpp = cfg.get("mpp")
    if mpp is not None and not (isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and 0.05 <= mpp <= 5):
        raise InputError(f"{cfg_path}: 'mpp' {mpp!r} is not a resolution in µm/px")
    sn = cfg.get("stain_norm")
    if sn is not None:
        ok = isinstance(sn, dict) and all(
            isinstance(sn.get(k), list) and len(sn[k]) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sn[k]) for k in ("mean", "std"))
        if not ok or any(v <= 0 for v in sn["std"]) or sn.get("method", "reinhard-lab") != "reinhard-lab":
            raise InputError(f"{cfg_path}: 'stain_norm' is not three means and three positive spreads")
    quantized = cfg.get("quantized")
    if quantized not in QUANTIZED:
        raise InputError(f"{cfg_path}: unknown 'quantized' value {quantized!r} (known: int8, onnx-int8)")
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"{model_dir}: no weights file (model.safetensors)")
    header = safetensors_header(weights)
    if arch.get("kind", "unet") != "unet":
        _check_calibration(model_dir, cfg)
        return cfg               # other networks (mobileunet): header checked; shapes are checked on loading
    try:
        want = expected_shapes(arch, quantized == "int8")
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"{cfg_path}: 'arch' is not a valid network shape ({arch!r})"[:300]) from None
    got = {k: shape for k, (_, shape) in header.items()}
    missing = [k for k in want if k not in got]
    wrong = [k for k in want if k in got and got[k] != want[k]]
    extra = [] if quantized == "int8" else [k for k in got if k not in want]
    if missing or wrong or extra:
        k = (wrong or missing or extra)[0]
        detail = (f"{k} is {list(got[k])}, config implies {list(want[k])}" if wrong else
                  f"{len(missing)} tensors missing (e.g. {k})" if missing else f"unexpected tensor {k}")
        raise InputError(f"{weights}: weights do not match config.json's arch ({detail})")
    _check_calibration(model_dir, cfg)
    return cfg


def _check_calibration(model_dir: Path, cfg: dict) -> None:
    cal = cfg.get("calibration")
    if isinstance(cal, dict) and cal.get("method") == "lts":
        lts = model_dir / str(cal.get("file", "lts.safetensors"))
        if lts.exists():
            safetensors_header(lts)


def save_model(model: "UNet", model_dir: str | Path, meta: dict, half: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors``; ``half`` stores weights as fp16."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    save_file(state, str(model_dir / "model.safetensors"))
    cfg = dict(meta)
    cfg["arch"] = model.cfg.to_dict()
    cfg["storage_dtype"] = "float16" if half else "float32"
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return model_dir


def load_model(name_or_path=None, device: "str | torch.device" = "cpu") -> "tuple[UNet, dict]":
    """Load a model folder without pickle; returns (network in eval mode on ``device``, config dict)."""
    import torch
    from safetensors.torch import load_file

    from .net import build_net

    model_dir = resolve_model_dir(name_or_path, torch.device(device).type)
    cfg = read_model_config(model_dir)
    if cfg.get("quantized") == "int8":
        from .int8 import load_int8

        net = load_int8(model_dir, device)
    else:
        net = build_net(cfg["arch"])
        state = load_file(str(model_dir / "model.safetensors"))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        net.load_state_dict(state)
        net.eval().to(device)
    cfg["path"] = str(model_dir)
    cfg.setdefault("name", model_dir.name)
    return net, cfg


def model_stride(cfg: dict) -> int:
    """The network's total stride from a model's config (without torch): tiles are aligned to it so a
    pixel's prediction does not depend on which tile computed it."""
    arch = cfg.get("arch") or {}
    if arch.get("kind") == "mobileunet":
        return 32
    return 2 ** (int(arch.get("depth", 4)) - 1)
