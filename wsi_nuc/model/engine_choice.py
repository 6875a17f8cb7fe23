"""``--engine auto``: the engine that runs a model fastest on this machine, by a rule on the CPU.

The rule (measured with ``benchmarks/bench_cpu.py``; figures in the README's performance section):

- CUDA: the fp32 network (``torch-fp32``, fp16 autocast); INT8 folders run on the CPU.
- An INT8 model folder on an x86-64 CPU: ``torch-int8`` (PyTorch's x86 quantized engine, which runs its
  convolutions on oneDNN where the CPU has AVX512-VNNI or AMX and on fbgemm on AVX2-only CPUs).
- An INT8 model folder where PyTorch has no x86 quantized engine (ARM: Apple silicon, Graviton):
  ``onnx-int8`` when onnxruntime is installed and the folder ships ``model.int8.onnx``, else ``torch-fp32``.
- An fp32 model folder: ``onnx-fp32`` when it ships ``model.onnx`` and onnxruntime is installed, else
  ``torch-fp32``.

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


def default_engine(cfg: dict, device: str = "cpu") -> str:
    """What runs a model when no engine is named (the API, ``eval``): as stored (INT8 folder: torch-int8)."""
    return "torch-int8" if cfg.get("quantized") == "int8" and device != "cuda" and is_x86() else "torch-fp32"


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
    if cfg.get("quantized") == "int8":
        if is_x86() and "torch-int8" in avail:
            return "torch-int8", f"{cpu}: PyTorch's x86 INT8 kernels"
        if "onnx-int8" in avail:
            return "onnx-int8", f"{cpu}: no x86 INT8 engine in PyTorch here; ONNX Runtime INT8"
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
    if requested in (None, ""):
        return default_engine(cfg, dev)
    check_engine(requested, model_dir, cfg, dev)
    return choose_engine(model_dir, cfg, dev) if requested == "auto" else requested


def engine_record(engine: str | None, requested: str | None) -> dict:
    """summary.json's ``engine``: what ran the network, what was asked for, and the CPU the choice saw."""
    return {"name": engine, "requested": requested or "model default", "cpu": cpu_summary()}
