"""``--engine auto`` and the default engine: what runs a model on this machine, by a rule on the CPU.

Only engines that give the same nuclei as the default are candidates, so ``auto`` changes speed, not results.

- An INT8 model folder: ``onnx-int8``, ONNX Runtime's CPU provider on the folder's prebuilt
  ``model.int8.onnx`` (static QDQ carrying the PyTorch INT8 graph's own integers and scales, see
  :mod:`wsi_nuc.train.onnx_export`), the default and ``auto``'s pick on every CPU (issue 27,
  ``docs/engines.md``): nothing is traced or rebuilt at load, no deprecated PyTorch API is involved, and with
  the file's baked post-processing a CPU run needs no torch at all. Its nuclei against the PyTorch INT8 graph
  that was the default until dcb0609: F1 0.983 at IoU 0.5 on CMU-1-Small-Region at 0.5 µm/px, 0.980 between
  two `wsi-nuc run` label images (AVX2). The ``torch-int8*``
  engines (that graph: ``x86`` = oneDNN on AVX512-VNNI / fbgemm elsewhere, ``onednn``, ``fbgemm``) run only
  when named; they are the reference the ONNX file is built from. Without onnxruntime: ``torch-int8`` on
  x86, ``torch-fp32`` elsewhere.
- An ``onnx-int8`` folder (``config.json`` ``"quantized": "onnx-int8"``: the fp32 network, whose INT8 form is
  only the prebuilt ``model.int8.onnx``, calibrated by ONNX Runtime; for networks PyTorch's FX INT8 serves
  badly, e.g. the MobileNetV2 U-Net): ``onnx-int8`` on the CPU, ``torch-fp32`` on CUDA (and on a CPU
  without onnxruntime, with slightly different nuclei).
- An fp32 model folder: ``onnx-fp32`` when it ships ``model.onnx`` and onnxruntime is installed (the same
  nuclei as torch-fp32, F1 1.000), else ``torch-fp32``. CUDA: ``torch-fp32`` (fp16 autocast).

The CPU is read from ``/proc/cpuinfo`` (no torch import in the driver); :func:`explain` says why.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

ENGINES = ("torch-int8", "torch-int8-onednn", "torch-int8-fbgemm", "torch-fp32", "onnx-int8", "onnx-fp32")
QENGINES = {"torch-int8": "x86", "torch-int8-onednn": "onednn", "torch-int8-fbgemm": "fbgemm"}
CHOICES = ("auto", *ENGINES)
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def available_engines(model_dir: Path, cfg: dict, device: str = "cpu") -> list[str]:
    """Engines that can run this model folder here (without loading anything)."""
    if device == "cuda":
        return ["torch-fp32"] if cfg.get("quantized") != "int8" else []
    out = list(QENGINES) if cfg.get("quantized") == "int8" and is_x86() else []
    out.append("torch-fp32")
    if onnxruntime_available():
        out += [e for e, f in ONNX_FILES.items() if (Path(model_dir) / f).is_file()]
    return out


def check_engine(engine: str, model_dir: Path, cfg: dict, device: str = "cpu") -> None:
    """InputError (one line) when ``engine`` cannot run this model folder here."""
    if engine == "auto":
        return
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: unknown engine (choose from {', '.join(CHOICES)})")
    avail = available_engines(model_dir, cfg, device)
    if engine in avail:
        return
    if engine.startswith("onnx") and not onnxruntime_available():
        why = "onnxruntime is not installed (pip install 'wsi-nuc[onnx]')"
    elif engine in ONNX_FILES:
        why = f"the model folder {model_dir} has no {ONNX_FILES[engine]} (python -m wsi_nuc.train.onnx_export)"
    elif device == "cuda":
        why = "on CUDA only torch-fp32 runs (with fp16 autocast), and only for an fp32 model"
    elif cfg.get("quantized") == "int8":
        why = f"PyTorch's x86 INT8 engine does not run on {platform.machine()}"
    else:
        why = f"{cfg.get('name', Path(model_dir).name)} is not an INT8 model"
    raise InputError(f"--engine {engine}: {why}; engines for this model here: {', '.join(avail) or 'none'}")


def default_engine(cfg: dict, device: str = "cpu", model_dir: Path | None = None) -> str:
    """What runs a model when no engine is named (the API, ``eval``, ``run``): :func:`explain`'s pick (an INT8
    folder: onnx-int8)."""
    if model_dir is None:
        from .folders import resolve_model_dir

        model_dir = resolve_model_dir(cfg.get("name"))
    return explain(Path(model_dir), cfg, device)[0]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def cpu_summary() -> str:
    """A short name of what the rule looked at, e.g. ``x86_64 AVX512-VNNI``."""
    f = cpu_flags()
    if not is_x86():
        return platform.machine() or "unknown CPU"
    isa = ("AMX" if "amx_int8" in f else "AVX512-VNNI" if "avx512_vnni" in f else "AVX512" if "avx512f" in f
           else "AVX-VNNI" if "avx_vnni" in f else "AVX2" if "avx2" in f else "pre-AVX2" if f else "unknown ISA")
    return f"x86_64 {isa}"


def explain(model_dir: Path, cfg: dict, device: str = "cpu") -> tuple[str, str]:
    """(engine, why) that ``auto`` picks for this model folder here."""
    if device == "cuda":
        return "torch-fp32", "CUDA device"
    avail = available_engines(model_dir, cfg, device)
    cpu = cpu_summary()
    if cfg.get("quantized") in ("int8", "onnx-int8"):
        if "onnx-int8" in avail:
            return "onnx-int8", f"{cpu}: ONNX Runtime INT8 (the default on every CPU)"
        if "torch-int8" in avail:
            return "torch-int8", f"{cpu}: PyTorch's x86 INT8 engine (no onnxruntime or no model.int8.onnx)"
        if cfg.get("quantized") == "onnx-int8":
            return "torch-fp32", (f"{cpu}: the fp32 network (no onnxruntime or no model.int8.onnx; its nuclei "
                                  "differ slightly from the INT8 default's)")
        return "torch-fp32", f"{cpu}: no INT8 engine available here"
    if "onnx-fp32" in avail:
        return "onnx-fp32", f"{cpu}: fp32 model, ONNX Runtime"
    return "torch-fp32", f"{cpu}: fp32 model"


def choose_engine(model_dir: Path, cfg: dict, device: str = "cpu") -> str:
    return explain(model_dir, cfg, device)[0]


def resolve_engine(requested: str | None, model_dir: Path, cfg: dict, device: str = "auto") -> str:
    """The concrete engine for ``--engine requested`` (checked: InputError when it cannot run here)."""
    from .io import cuda_available

    dev = "cuda" if device == "cuda" or (device == "auto" and cfg.get("quantized") != "int8"
                                         and cuda_available()) else "cpu"
    if dev == "cuda" and cfg.get("quantized") == "int8":
        raise InputError("INT8 models run on the CPU only (use --device cpu or the fp32 model)")
    if requested in (None, ""):
        return default_engine(cfg, dev, model_dir)
    check_engine(requested, model_dir, cfg, dev)
    return choose_engine(model_dir, cfg, dev) if requested == "auto" else requested


def engine_record(engine: str | None, requested: str | None) -> dict:
    """summary.json's ``engine``: what ran the network, what was asked for, and the CPU the choice saw."""
    return {"name": engine, "requested": requested or "model default", "cpu": cpu_summary()}
