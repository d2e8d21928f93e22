"""Export a network for deployment: ONNX (onnxruntime) or TorchScript; files written atomically.

The exported graph of a single run maps an image batch ``(B, C, *S)`` to logits ``(B, K, *S)`` (eval mode, deep
supervision off). ONNX uses PyTorch's TorchScript-based exporter, which needs no extra package beyond
``onnx``, with dynamic batch and spatial axes; sizes must stay multiples of the network's divisor.

An ensemble (a cross-validation run's folds, or the runs of a ``segmorph find-best`` folder) is exported either as
one graph holding every network, :class:`MeanOfSoftmax`, whose output is the class probabilities ``(B, K, *S)``:
the weighted mean over the networks of ``softmax(logits)`` along the class axis (the mean that
:mod:`segmorph.segmentation.ensemble` predicts with); or as its members, one file of logits per network in a folder,
with :data:`COMBINE_FILE` naming each file and its weight. Every network takes the same input, the scan
preprocessed as the runs' ``plan.json`` says, so members whose plans differ in patch, channels, labels, slice axis
or preprocessing are refused. The ensemble's clean-up (``postprocessing.json``) is not part of any graph.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes, atomic_write_text
from segmorph.outputs import Output, check_outputs

if TYPE_CHECKING:
    from segmorph.segmentation.plan import Plan
    from segmorph.segmentation.predict import Predictor

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
INSTALL_HINT = "pip install segmorph[export]"
COMBINE_FILE = "combine.json"  # in a members folder: each member's file and weight, and how to combine them


class Exported(NamedTuple):
    """What :func:`export_run` wrote.

    Attributes:
        path: The file (one graph) or the folder (``members=True``).
        input_shape: The example input shape ``(1, C, *P)``: the plan's patch.
        networks: How many networks it holds (1 for a single run).
        output: ``"logits"`` (a single run, or each member file) or ``"probabilities"`` (an ensemble as one graph).
    """

    path: Path
    input_shape: tuple[int, ...]
    networks: int
    output: str


class MeanOfSoftmax(nn.Module):
    """An ensemble as one network: ``(B, C, *P)`` -> ``sum_n weights[n] * softmax(networks[n](x), dim=1)``.

    The output ``(B, K, *P)`` holds class probabilities (each in [0, 1], summing to 1 over K when the weights do).

    Args:
        networks: Networks mapping ``(B, C, *P)`` to logits ``(B, K, *P)``, all with the same C and K.
        weights: One weight per network (e.g. ``1 / len(networks)``).
    """

    def __init__(self, networks: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if not networks or len(networks) != len(weights):
            raise ValueError(f"networks and weights: expected one weight per network, got {len(networks)} and "
                             f"{len(weights)}")  # fmt: skip
        self.networks = nn.ModuleList(networks)
        self.weights = [float(w) for w in weights]
        self.divisor = math.lcm(*(int(getattr(n, "divisor", 1)) for n in networks))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = self.networks[0](image).softmax(1) * self.weights[0]
        for network, weight in zip(self.networks[1:], self.weights[1:]):
            total = total + network(image).softmax(1) * weight
        return total


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path, checkpoint: str = "best", members: bool = False
) -> Exported:
    """Export a trained run's network (``segmorph export``), its input shape that of the plan's patch.

    A single run gives one graph of logits. A cross-validation run (every fold with a checkpoint) or an ensemble
    folder (``ensemble.json``) gives one :class:`MeanOfSoftmax` graph of probabilities, or with ``members`` the
    folder ``out`` holding one file of logits per network (``fold_<k>.onnx``; ``member_<i>[_fold_<k>]`` for an
    ensemble folder's runs, ``.pt`` for TorchScript) and :data:`COMBINE_FILE`: each file's weight and the rule
    ``sum of weight * softmax(logits, axis 1)``, with the input's shape, the labels and the preprocessing.

    A 2D network of 3D scans (``plan.slice_axis``, trained with ``--network-dims 2``) is exported as it is: its
    graph takes 2D slices ``(B, C, *P)`` across that axis of the preprocessed scan, and a caller stacks the slices.

    ``out`` is checked first (not a file of the run folders, its folder writable), before the models load.

    Returns:
        What was written: its path, the example input shape ``(1, C, *P)``, the number of networks, the output.

    Raises:
        ValueError: Unknown ``fmt``.
        SegmorphError: ``members`` for a single run, members whose plans differ, or a failed export.
    """
    from segmorph.segmentation.crossval_layout import is_cross_validation_run
    from segmorph.segmentation.ensemble import ensemble_members, load_predictor
    from segmorph.segmentation.find_best import is_ensemble_folder, read_members
    from segmorph.segmentation.predict import PredictOptions

    _check_format(fmt)
    run_dir, out = Path(run_dir), Path(out)
    ensemble = is_cross_validation_run(run_dir) or is_ensemble_folder(run_dir)
    if members and not ensemble:
        raise SegmorphError("--members: this run is a single model; export it without --members", run_dir)
    reads = [run_dir, *(read_members(run_dir) if is_ensemble_folder(run_dir) else [])]
    check_outputs([Output.folder(out), Output.file(out / COMBINE_FILE)] if members else [out], inputs=reads)
    predictor = load_predictor(run_dir, "cpu", PredictOptions(checkpoint=checkpoint), postprocess="none")
    found = ensemble_members(predictor)
    plan = _common_plan(found)
    shape = (1, plan.network_channels, *plan.train.patch_size)
    if members:
        return Exported(_export_members(found, plan, shape, fmt, out, reads), shape, len(found), "logits")
    if not ensemble:
        return Exported(export_model(found[0][1].model, shape, fmt, out), shape, 1, "logits")
    model = MeanOfSoftmax([member.model for _, member, _ in found], [weight for _, _, weight in found])
    return Exported(export_model(model, shape, fmt, out, "probabilities"), shape, len(found), "probabilities")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")


def _plan_facts(plan: Plan) -> dict[str, Any]:
    """What every member of an exported ensemble must share: one input, one set of classes."""
    return {"patch": tuple(plan.train.patch_size), "channels": (plan.channel_names, plan.network_channels),
            "labels": plan.labels, "slice axis": plan.slice_axis, "preprocessing": plan.preprocess}  # fmt: skip


def _common_plan(found: list[tuple[str, Predictor, float]]) -> Plan:
    """The members' shared plan; a member whose plan differs from the first's is refused in one line."""
    first = found[0][1]
    facts = _plan_facts(first.plan)
    for _, member, _ in found[1:]:
        differ = [key for key, value in _plan_facts(member.plan).items() if value != facts[key]]
        if differ:
            verb = "differ" if len(differ) > 1 else "differs"
            raise SegmorphError(f"{', '.join(differ)} {verb} from {first.run_dir}'s; an exported ensemble takes one "
                                "input and gives one set of classes", member.run_dir / "plan.json")  # fmt: skip
    return first.plan


def _export_members(
    found: list[tuple[str, Predictor, float]], plan: Plan, shape: tuple[int, ...], fmt: str, out: Path,
    reads: list[Path],
) -> Path:  # fmt: skip
    """One file of logits per network in ``out``, then :data:`COMBINE_FILE` (written last: it lists the files)."""
    files = [out / f"{name}{SUFFIXES[fmt]}" for name, _, _ in found]
    check_outputs([Output.folder(out), *files, out / COMBINE_FILE], inputs=reads)
    for path, (_, member, _) in zip(files, found, strict=True):
        export_model(member.model, shape, fmt, path)
    axes = "(batch, channel, *patch); batch and spatial sizes may change (multiples of each network's divisor)"
    entries = [{"file": path.name, "weight": weight, "run": str(member.run_dir.resolve())}
               for path, (_, member, weight) in zip(files, found, strict=True)]  # fmt: skip
    given = {"name": "image", "shape": list(shape), "axes": axes, "slice_axis": plan.slice_axis,
             "preprocess": plan.to_dict()["preprocess"]}  # fmt: skip
    record = {
        "format": fmt,
        "input": given,
        "output": "logits (batch, class, *patch) per member",
        "combine": "probabilities = sum over members of weight * softmax(logits, axis 1)",
        "labels": {str(k): name for k, name in sorted(plan.labels.items())},
        "members": entries,
    }
    atomic_write_text(out / COMBINE_FILE, json.dumps(record, indent=2) + "\n")
    return out


def export_model(
    model: nn.Module, example_shape: Sequence[int], fmt: str, out: str | Path, output_name: str = "logits"
) -> Path:
    """Write ``model`` as ONNX or TorchScript; the model itself is left untouched (a copy is exported).

    Args:
        model: Network mapping ``(B, C, *P)`` to logits ``(B, K, *P)`` (or, as :class:`MeanOfSoftmax`, to
            probabilities).
        example_shape: ``(1, C, *P)`` of a representative input (2D or 3D); filled with random values.
        fmt: ``"onnx"`` (opset 17, dynamic batch and spatial axes) or ``"torchscript"`` (``torch.jit.trace``).
        out: Destination file; its folder is created.
        output_name: The ONNX graph's output name (``"logits"``, or ``"probabilities"`` for an ensemble).

    Returns:
        The written path.

    Raises:
        ValueError: Unknown ``fmt`` or bad ``example_shape``.
        SegmorphError: The exporter is missing or fails.
    """
    _check_format(fmt)
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
        _write_onnx(frozen, example, buffer, out, output_name)
    else:
        _write_torchscript(frozen, example, buffer, out)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def check_onnx(path: str | Path, model: nn.Module, example: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs for ``example``.

    Args:
        path: An ONNX file written by :func:`export_model`.
        model: The network it was exported from (run in eval mode, on a copy).
        example: Input ``(B, C, *S)``.

    Returns:
        ``max |onnx - torch|`` over all outputs, in the output's units (logits, or probabilities of an ensemble).

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


def _write_onnx(model: nn.Module, example: torch.Tensor, buffer: io.BytesIO, path: Path, output_name: str) -> None:
    axes = {0: "batch", **{i: f"size{i - 2}" for i in range(2, example.ndim)}}
    try:
        with warnings.catch_warnings():
            # the exporter warns that it is the legacy one, and that InstanceNorm uses input statistics
            # (which is what instance normalisation does in eval mode too)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=["image"],
                output_names=[output_name], dynamic_axes={"image": axes, output_name: axes},
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
