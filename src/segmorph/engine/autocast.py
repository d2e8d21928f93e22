"""Half-precision autocast, only where the hardware runs it fast.

bfloat16 autocast makes convolutions markedly faster on CUDA GPUs and on CPUs with AVX512-BF16 or
AMX, but a CPU without them emulates bfloat16, and there a convolution under bfloat16 autocast is
many times slower than in float32 (timings in benchmarks/RESULTS.md). Every ``amp`` setting in segmorph
therefore means "half precision where it pays": :func:`autocast` is a no-op on other devices, so the
defaults are safe on any machine.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def _cpu_has_fast_bfloat16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def half_precision_is_fast(device: torch.device | str) -> bool:
    """True on CUDA and on CPUs with AVX512-BF16 or AMX; False elsewhere (MPS, other CPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_fast_bfloat16()


def precision_name(device: torch.device | str, enabled: bool = True) -> str:
    """What :func:`autocast` trains in on ``device``: ``"bfloat16 autocast"`` or ``"float32"`` (run summaries)."""
    return "bfloat16 autocast" if enabled and half_precision_is_fast(device) else "float32"


def autocast(device: torch.device | str, enabled: bool = True,
             dtype: torch.dtype = torch.bfloat16) -> contextlib.AbstractContextManager:  # fmt: skip
    """``torch.autocast`` to ``dtype`` when ``enabled`` and :func:`half_precision_is_fast`, else a no-op."""
    device = torch.device(device)
    if not (enabled and half_precision_is_fast(device)):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
