"""Export: TorchScript and ONNX round trips reproduce the PyTorch logits; files appear atomically."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from segmorph.errors import SegmorphError
from segmorph.nn import UNet
from segmorph.segmentation.export import check_onnx, export_model


def tiny_unet(ndim: int = 3, deep_supervision: bool = False) -> UNet:
    torch.manual_seed(0)
    return UNet(ndim, 1, 3, features=(4, 8, 16), deep_supervision=deep_supervision)


@pytest.mark.parametrize("ndim", [2, 3])
def test_torchscript_round_trip_matches(tmp_path: Path, ndim: int) -> None:
    model = tiny_unet(ndim, deep_supervision=True).train()  # export must switch both off on its own copy
    path = export_model(model, (1, 1, *(16,) * ndim), "torchscript", tmp_path / "sub" / "model.pt")
    assert path == tmp_path / "sub" / "model.pt" and path.is_file()
    assert model.training and model.deep_supervision  # the caller's model is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary left behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    example = torch.randn(2, 1, *(8, 24, 16)[:ndim])  # another batch and spatial size than traced
    with torch.no_grad():
        expected = model.eval()(example)
        actual = loaded(example)
    assert actual.shape == (2, 3, *example.shape[2:])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_onnx_matches_pytorch_with_dynamic_shapes(tmp_path: Path) -> None:
    model = tiny_unet(3).eval()
    path = export_model(model, (1, 1, 16, 16, 16), "onnx", tmp_path / "model.onnx")
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    torch.manual_seed(1)
    assert check_onnx(path, model, torch.randn(1, 1, 16, 16, 16)) < 1e-4
    assert check_onnx(path, model, torch.randn(2, 1, 8, 16, 24)) < 1e-4  # dynamic batch and spatial axes


def test_check_onnx_detects_a_different_model(tmp_path: Path) -> None:
    path = export_model(tiny_unet(3), (1, 1, 16, 16, 16), "onnx", tmp_path / "model.onnx")
    torch.manual_seed(5)
    other = UNet(3, 1, 3, features=(4, 8, 16))
    assert check_onnx(path, other, torch.randn(1, 1, 16, 16, 16)) > 1e-3


def test_check_onnx_without_onnxruntime_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(SegmorphError, match=r"pip install segmorph\[export\]"):
        check_onnx(tmp_path / "model.onnx", tiny_unet(3), torch.zeros(1, 1, 16, 16, 16))


def test_existing_file_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_text("old")
    export_model(tiny_unet(2), (1, 1, 16, 16), "torchscript", target)
    assert target.read_bytes()[:2] == b"PK"  # a TorchScript zip archive now


@pytest.mark.parametrize(
    ("shape", "fmt", "name"),
    [((1, 1, 16, 16, 16), "tflite", "fmt"), ((1, 16, 16), "onnx", "example_shape"),
     ((1, 1, 16, 10, 16), "torchscript", "example_shape")],  # 10 is not a multiple of the divisor 4
)  # fmt: skip
def test_bad_arguments_raise_value_error(tmp_path: Path, shape: tuple, fmt: str, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        export_model(tiny_unet(3), shape, fmt, tmp_path / "model")
    assert not list(tmp_path.iterdir())
