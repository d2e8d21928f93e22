"""Half-precision autocast only where the device runs it fast."""

import torch

from segmorph.engine import autocast as precision


def _conv_dtype(device: str, enabled: bool = True) -> torch.dtype:
    conv = torch.nn.Conv2d(1, 2, 3)
    with precision.autocast(device, enabled):
        return conv(torch.zeros(1, 1, 5, 5)).dtype


def test_autocast_is_float32_on_a_cpu_without_fast_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_fast_bfloat16", lambda: False)
    assert not precision.half_precision_is_fast("cpu")
    assert _conv_dtype("cpu") == torch.float32
    assert precision.precision_name("cpu") == "float32"


def test_autocast_is_bfloat16_on_a_cpu_with_fast_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_fast_bfloat16", lambda: True)
    assert precision.half_precision_is_fast("cpu")
    assert _conv_dtype("cpu") == torch.bfloat16
    assert _conv_dtype("cpu", enabled=False) == torch.float32
    assert precision.precision_name("cpu") == "bfloat16 autocast"
    assert precision.precision_name("cpu", enabled=False) == "float32"


def test_half_precision_is_not_assumed_on_other_devices():
    assert not precision.half_precision_is_fast("meta")
    assert not precision.half_precision_is_fast("mps")
