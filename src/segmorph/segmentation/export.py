"""Export a network for deployment: ONNX (onnxruntime) or TorchScript; files written atomically.

The exported graph maps an image batch ``(B, C, *S)`` to logits ``(B, K, *S)`` (eval mode, deep
supervision off). ONNX uses PyTorch's TorchScript-based exporter, which needs no extra package beyond
``onnx``, with dynamic batch and spatial axes; sizes must stay multiples of the network's divisor.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes
from segmorph.outputs import check_outputs

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
INSTALL_HINT = "pip install segmorph[export]"


def export_run(run_dir: str | Path, fmt: str, out: str | Path, checkpoint: str = "best") -> tuple[Path, tuple[int, ...]]:
    """Export a trained run's network (``segmorph export``), its input shape that of the plan's patch.

    ``out`` is checked first (not a file of the run folder, its folder writable), before the model loads.

    Returns:
        The written path and the example input shape ``(1, C, *P)``.
    """
    from segmorph.segmentation.predict import PredictOptions, Predictor

    check_outputs([Path(out)], inputs=[run_dir])
    predictor = Predictor(run_dir, "cpu", PredictOptions(checkpoint=checkpoint))
    plan = predictor.plan
    shape = (1, plan.network_channels, *plan.train.patch_size)
    return export_model(predictor.model, shape, fmt, out), shape


def export_model(model: nn.Module, example_shape: Sequence[int], fmt: str, out: str | Path) -> Path:
    """Write ``model`` as ONNX or TorchScript; the model itself is left untouched (a copy is exported).

    Args:
        model: Network mapping ``(B, C, *P)`` to logits ``(B, K, *P)``.
        example_shape: ``(1, C, *P)`` of a representative input (2D or 3D); filled with random values.
        fmt: ``"onnx"`` (opset 17, dynamic batch and spatial axes) or ``"torchscript"`` (``torch.jit.trace``).
        out: Destination file; its folder is created.

    Returns:
        The written path.

    Raises:
        ValueError: Unknown ``fmt`` or bad ``example_shape``.
        SegmorphError: The exporter is missing or fails.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    shape = tuple(int(s) for s in example_shape)
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise ValueError(f"example_shape: expected (1, C, *P) with 2 or 3 spatial sizes, got {tuple(example_shape)}")
    divisor = int(getattr(model, "divisor", 1))
    if any(s % divisor for s in shape[2:]):
        raise ValueError(f"example_shape: spatial sizes must be multiples of the model divisor {divisor}, got {shape}")
    frozen = _inference_copy(model)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0), device=_device_of(frozen))
    out = Path(out)
    buffer = io.BytesIO()  # both exporters write to memory; the file is then written atomically, as checkpoints are
    if fmt == "onnx":
        _write_onnx(frozen, example, buffer, out)
    else:
        _write_torchscript(frozen, example, buffer, out)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def check_onnx(path: str | Path, model: nn.Module, example: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits for ``example``.

    Args:
        path: An ONNX file written by :func:`export_model`.
        model: The network it was exported from (run in eval mode, on a copy).
        example: Input ``(B, C, *S)``.

    Returns:
        ``max |onnx - torch|`` over all outputs, in logit units.

    Raises:
        SegmorphError: onnxruntime is not installed, or the file cannot be loaded.
    """
    try:
        import onnxruntime
    except ImportError:
        raise SegmorphError(f"checking ONNX files needs onnxruntime: {INSTALL_HINT}") from None
    if not Path(path).is_file():
        raise SegmorphError("no such file", path)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 (onnxruntime's errors derive from Exception only)
        raise SegmorphError(f"onnxruntime cannot load the model ({str(err).splitlines()[0][:200]})", path) from None
    frozen = _inference_copy(model)
    with torch.inference_mode():
        expected = frozen(example.to(_device_of(frozen))).float().cpu().numpy()
    feed = {session.get_inputs()[0].name: example.detach().cpu().numpy().astype(np.float32)}
    actual = session.run(None, feed)[0]
    if actual.shape != expected.shape:
        raise SegmorphError(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}", path)
    return float(np.abs(actual - expected).max())


def _inference_copy(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    if hasattr(frozen, "deep_supervision"):
        frozen.deep_supervision = False
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _write_onnx(model: nn.Module, example: torch.Tensor, buffer: io.BytesIO, path: Path) -> None:
    axes = {0: "batch", **{i: f"size{i - 2}" for i in range(2, example.ndim)}}
    try:
        with warnings.catch_warnings():
            # the exporter warns that it is the legacy one, and that InstanceNorm uses input statistics
            # (which is what instance normalisation does in eval mode too)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=["image"],
                output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
            )  # fmt: skip
    except ImportError as err:
        raise SegmorphError(f"ONNX export needs {err.name or 'onnx'}: {INSTALL_HINT}") from None
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:
        raise SegmorphError(f"ONNX export failed ({str(err).splitlines()[0][:200]})", path) from None


def _write_torchscript(model: nn.Module, example: torch.Tensor, buffer: io.BytesIO, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but still the portable format
        # InstanceNorm's input checks read sizes as Python values; they check, they do not compute
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(model, example)
        except RuntimeError as err:
            raise SegmorphError(f"TorchScript tracing failed ({str(err).splitlines()[0][:200]})", path) from None
        torch.jit.save(traced, buffer)
