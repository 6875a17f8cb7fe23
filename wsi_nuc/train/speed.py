"""How a training step runs on this machine: device, precision, memory layout and batch prefetch.

``train:`` keys (each switchable; ``auto`` is the default):

- ``device``: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``.
- ``precision``: ``auto`` = bfloat16 autocast where the hardware computes it natively (CUDA; a CPU with
  AVX512-BF16 or AMX), fp32 elsewhere: on an AVX2-only CPU oneDNN emulates bfloat16 and a step of the
  he-teacher config takes 8x longer (59.7 s vs 7.4 s, batch 8 of 256²). ``bf16`` / ``fp32`` force it.
  The losses are always computed in fp32 (:func:`fp32_losses`).
- ``channels_last``: ``auto`` = NHWC with bfloat16 (the layout of oneDNN's bf16 kernels) and in fp32 on an
  AVX512 CPU, contiguous NCHW in fp32 elsewhere. The he-teacher step, inline, fp32: on an AVX2 CPU 8.64 s
  channels-last against 7.16 s NCHW (``benchmarks/results/train-speed-avx2-variants.json``); on an AVX512
  CPU 3.31 s against 3.93 s (``benchmarks/results/train-speed-avx512bf16.json``). true / false force it.
- ``prefetch``: worker processes that prepare batches ahead (``auto``: 1 on a CPU with more than one core,
  on CUDA one per spare core up to 8; 0 = inline). Every batch is drawn from ``(seed, step)`` alone, so
  all give the same batches.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepSettings:
    device: str
    bf16: bool
    channels_last: bool
    prefetch: int

    def describe(self) -> str:
        return (f"device {self.device}, {'bfloat16 autocast' if self.bf16 else 'fp32'}, "
                f"{'channels-last' if self.channels_last else 'contiguous'}, prefetch {self.prefetch}")

    def autocast(self):
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)

    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format


def cpu_has_native_bf16() -> bool:
    """True where the CPU has AVX512-BF16 or AMX (bfloat16 dot products in hardware)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: read the kernel's CPU flags
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((ln for ln in f if ln.startswith("flags")), "").split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def _choice(value, name: str, options: tuple) -> str:
    v = str(value).lower() if not isinstance(value, bool) else ("true" if value else "false")
    if v not in options:
        raise ValueError(f"train.{name}: {value!r} (known: {', '.join(options)})")
    return v


def step_settings(tc: dict) -> StepSettings:
    """The ``train:`` section's step settings, ``auto`` resolved for this machine."""
    dev = _choice(tc.get("device", "auto"), "device", ("auto", "cpu", "cuda"))
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda asked for, but torch sees no CUDA device")
    prec = _choice(tc.get("precision", "auto"), "precision", ("auto", "bf16", "fp32"))
    if prec == "auto":
        prec = "bf16" if (dev == "cuda" or cpu_has_native_bf16()) else "fp32"
    cl = _choice(tc.get("channels_last", "auto"), "channels_last", ("auto", "true", "false"))
    pf = tc.get("prefetch", "auto")
    if pf == "auto":
        cores = os.cpu_count() or 1
        pf = min(8, cores - 1) if dev == "cuda" else (1 if cores > 1 else 0)
    if isinstance(pf, bool) or not isinstance(pf, int) or pf < 0:
        raise ValueError(f"train.prefetch: {pf!r} (auto, or a number of worker processes >= 0)")
    bf16 = prec == "bf16"
    nhwc = bf16 or (dev == "cpu" and cpu_prefers_channels_last())
    return StepSettings(dev, bf16, cl == "true" or (cl == "auto" and nhwc), int(pf))


def cpu_prefers_channels_last() -> bool:
    """True on an AVX512 CPU, where oneDNN's fp32 convolutions train faster channels-last (module docstring)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def fp32_losses(fn):
    """Run a loss function outside autocast, its tensor arguments in fp32 (bf16 forward, fp32 losses)."""
    def cast(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32:
            return v.float()
        if isinstance(v, (list, tuple)):
            return type(v)(cast(u) for u in v)
        return v

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(dev, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
    return wrapper
