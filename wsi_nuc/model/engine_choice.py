"""``--engine auto``: the engine that runs a model fastest on this machine, by a rule on the CPU.

The rule, from ``benchmarks/bench_cpu.py`` (``benchmarks/results/cpu-*.json``; the README's performance
section): only engines that give the same nuclei as the default are candidates, so ``auto`` changes speed,
not results.

- An INT8 model folder on Linux x86-64: ``torch-int8-onednn``, PyTorch's INT8 graph on oneDNN's kernels.
  On a CPU with AVX512-VNNI or AMX that is what PyTorch's x86 quantized engine (``torch-int8``) runs anyway,
  and the fastest engine measured there (ONNX Runtime INT8 1.7x, fbgemm 2.5x, fp32 3.9x slower per network
  call, one thread). On other x86 CPUs (AVX2-only: AMD EPYC/Ryzen before Zen 4, Intel before Cascade Lake;
  AVX512 without VNNI; Alder Lake's AVX-VNNI) PyTorch's x86 engine picks fbgemm, whose kernels took 1.38x
  (AVX2) and 1.78x (AVX512 without VNNI) the time of oneDNN's for this network (ISAs forced on the AVX512
  machine); the two libraries give the same nuclei (F1 1.000 at AVX2 on CMU-1-Small-Region, 0.9995 against
  the native run). Naming oneDNN also keeps a cluster right whose workers' CPUs differ from the driver's,
  where the choice is made. Other x86 systems: ``torch-int8`` (PyTorch uses fbgemm off Linux).
- An INT8 model folder where PyTorch has no x86 INT8 engine (ARM: Apple silicon, Graviton): ``onnx-int8``
  when onnxruntime is installed and the folder ships ``model.int8.onnx`` (the torch graph's quantisation;
  F1 0.987 against torch-int8 on CMU with v0.2, 0.978 with v0.5), else ``torch-fp32``.
- An fp32 model folder: ``onnx-fp32`` when it ships ``model.onnx`` and onnxruntime is installed (the same
  nuclei as torch-fp32, F1 1.000; 1.2x faster at AVX512), else ``torch-fp32``. CUDA: ``torch-fp32``.

ONNX Runtime INT8 is not picked on x86: it was slower where measured, its kernels could not be forced to
AVX2 here, and its nuclei differ more (F1 0.978-0.987). Every PyTorch INT8 engine runs the graph's ×2 up-samplings
as a nearest copy and a fixed depthwise convolution on oneDNN's kernels (``int8.upsample2x_bilinear_q``),
the same bytes as PyTorch's up-sampling kernel in less time; ``torch-int8-fast``, which ran them so before
they were exact, is kept as another name for ``torch-int8-onednn``. The CPU is read from
``/proc/cpuinfo`` (no torch import in the driver); :func:`explain` says why.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

ENGINES = ("torch-int8", "torch-int8-onednn", "torch-int8-fbgemm", "torch-int8-fast", "torch-fp32", "onnx-int8",
           "onnx-fp32")
QENGINES = {"torch-int8": "x86", "torch-int8-onednn": "onednn", "torch-int8-fbgemm": "fbgemm", "torch-int8-fast": "onednn"}
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
    return "torch-int8" if cfg.get("quantized") == "int8" and is_x86() else "torch-fp32"


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
            if platform.system() != "Linux":
                return "torch-int8", f"{cpu}: PyTorch's x86 INT8 engine (oneDNN's not measured on {platform.system()})"
            if cpu_flags() & {"avx512_vnni", "amx_int8"}:
                return "torch-int8-onednn", f"{cpu}: oneDNN INT8 kernels (PyTorch's x86 engine's pick here too)"
            return "torch-int8-onednn", f"{cpu}: oneDNN INT8 kernels (PyTorch's x86 engine would pick fbgemm here)"
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
    if dev == "cuda" and cfg.get("quantized") == "int8":
        raise InputError("INT8 models run on the CPU only (use --device cpu or the fp32 model)")
    if requested in (None, ""):
        return default_engine(cfg, dev)
    check_engine(requested, model_dir, cfg, dev)
    return choose_engine(model_dir, cfg, dev) if requested == "auto" else requested


def engine_record(engine: str | None, requested: str | None) -> dict:
    """summary.json's ``engine``: what ran the network, what was asked for, and the CPU the choice saw."""
    return {"name": engine, "requested": requested or "model default", "cpu": cpu_summary()}
