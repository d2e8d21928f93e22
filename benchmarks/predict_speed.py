"""Sliding-window prediction speed: segmorph against MONAI's ``sliding_window_inference``, same run.

Both sides get the same network (same weights, same threads), the same tile size, overlap 0.5, Gaussian
blending (sigma = tile / 8), the same tile batch size and, for test-time mirroring, the same 8 flip
combinations with logits averaged before one softmax (MONAI: a loop of whole-volume calls around it).
Tile grids are printed so that equal outputs can be checked; the max abs difference of the probabilities
is reported. Methods alternate case by case so that load from other processes hits them alike.

    python benchmarks/predict_speed.py --cases 10 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from segmorph.engine.sliding_window import CPU_BATCH_VOXELS, compile_for_inference, sliding_window_logits, tile_starts
from segmorph.io import read_image
from segmorph.nn import UNet, build_network

REPO = Path(__file__).resolve().parents[1]
Predictor = Callable[[torch.Tensor], torch.Tensor]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/msd_hippocampus"),
                        help="MSD hippocampus folder, relative to the repository root")  # fmt: skip
    parser.add_argument("--cases", type=int, default=10, help="hippocampus cases to time (default 10)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward, both libraries (default 4)")
    parser.add_argument("--hippo-patch", type=int, nargs=3, default=(40, 56, 40))
    parser.add_argument("--volume", type=int, nargs=3, default=(160, 192, 160), help="random volume size")
    parser.add_argument("--volume-patch", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 autocast rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--run", type=Path, help="a training run folder: use its best checkpoint's network")
    return parser.parse_args()


def build_model(run: Path | None) -> torch.nn.Module:
    """The benchmark network: random weights (seed 0), or a trained run's best checkpoint."""
    torch.manual_seed(0)
    if run is None:
        return UNet(3, 1, 3, features=(16, 32, 64, 128)).eval()
    from segmorph.engine.checkpoints import load_checkpoint

    state, config, _ = load_checkpoint(run / "checkpoint_best.pt")
    model = build_network({**config["network"], "deep_supervision": False})
    model.load_state_dict(state)
    return model.eval()


def segmorph_predictor(model, patch, batch_size, mirror_axes, amp) -> Predictor:
    def predict(image: torch.Tensor) -> torch.Tensor:
        return sliding_window_logits(model, image, patch, overlap=0.5, batch_size=batch_size,
                                     mirror_axes=mirror_axes, amp=amp)  # fmt: skip

    return predict


def monai_predictor(model, patch, batch_size, mirror_axes, amp) -> Predictor:
    """MONAI's sliding window in a mirroring loop that averages logits, then softmax.

    The image is padded to the tile once, before the loop, exactly as MONAI pads it (centred, extra voxel
    after), so that all flipped copies share one grid; MONAI padding each flipped copy itself would shift
    the grid by a voxel on odd padding, which changes the output but not the time.
    """
    flips = [[a + 2 for a in c] for n in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, n)]

    def predict(image: torch.Tensor) -> torch.Tensor:
        missing = [max(p - s, 0) for s, p in zip(image.shape[1:], patch)]
        padded = F.pad(image[None], [n for m in reversed(missing) for n in (m // 2, m - m // 2)])
        crop = tuple(slice(m // 2, m // 2 + s) for m, s in zip(missing, image.shape[1:]))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            total = None
            for dims in flips:
                logits = sliding_window_inference(padded.flip(dims) if dims else padded, patch, batch_size, model,
                                                  overlap=0.5, mode="gaussian")  # fmt: skip
                logits = logits.float().flip(dims) if dims else logits.float()
                total = logits if total is None else total.add_(logits)
            return torch.softmax(total[(0, slice(None)) + crop] / len(flips), dim=0)

    return predict


def same_grid(shape, patch) -> bool:
    """Whether MONAI's tile corners equal segmorph's for this image and tile size (overlap 0.5)."""
    padded = [max(s, p) for s, p in zip(shape, patch)]
    interval = _get_scan_interval(padded, patch, len(patch), (0.5,) * len(patch))
    monai = sorted(tuple(sl.start for sl in slices) for slices in dense_patch_slices(padded, patch, interval))
    ours = sorted(itertools.product(*tile_starts(padded, patch, 0.5)))
    return monai == ours


def zscore(image: torch.Tensor) -> torch.Tensor:
    return (image - image.mean()) / image.std().clamp_min(1e-8)


def timed(predict: Predictor, image: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = predict(image)
    return time.perf_counter() - start, out


def compare(methods: dict[str, Predictor], images: list[torch.Tensor]) -> dict[str, dict]:
    """Run every method on every image, alternating their order; times in s and max |p - p_MONAI|."""
    results = {name: {"times": [], "diff": 0.0} for name in methods}
    names = list(methods)
    for index, image in enumerate(images):
        outputs = {}
        for name in names if index % 2 == 0 else names[::-1]:
            seconds, outputs[name] = timed(methods[name], image)
            results[name]["times"].append(seconds)
        reference = outputs["MONAI fp32"]
        for name in names:
            results[name]["diff"] = max(results[name]["diff"], float((outputs[name] - reference).abs().max()))
    return results


def print_table(title: str, results: dict[str, dict], voxels: list[int]) -> None:
    base = sum(results["MONAI fp32"]["times"])
    print(f"\n{title}")
    print(f"{'method':<24}{'total s':>9}{'s/case':>9}{'median s':>10}{'Mvox/s':>9}{'speedup':>9}{'max|dp|':>11}")
    for name, r in results.items():
        total = sum(r["times"])
        print(f"{name:<24}{total:>9.2f}{total / len(r['times']):>9.3f}{statistics.median(r['times']):>10.3f}"
              f"{sum(voxels) / total / 1e6:>9.3f}{base / total:>8.2f}x{r['diff']:>11.2e}")  # fmt: skip


def methods_for(
    model, patch, batch_size, mirror_axes, bf16: bool, monai_batches=(), compiled=None
) -> dict[str, Predictor]:  # fmt: skip
    """The rows of one table; ``monai_batches`` adds MONAI fp32 rows with other tile batch sizes.

    ``compiled`` (a function returning a new :func:`compile_for_inference` of the network) adds segmorph's
    ``--compile`` row and, for a fair view, MONAI running its own compiled copy of the same network.
    """
    methods = {
        "MONAI fp32": monai_predictor(model, patch, batch_size, mirror_axes, False),
        "segmorph fp32": segmorph_predictor(model, patch, batch_size, mirror_axes, False),
    }
    if compiled is not None:
        methods["segmorph fp32 --compile"] = segmorph_predictor(compiled(), patch, batch_size, mirror_axes, False)
        methods["MONAI fp32, compiled net"] = monai_predictor(compiled(), patch, batch_size, mirror_axes, False)
    for other in monai_batches:
        methods[f"MONAI fp32 sw_batch {other}"] = monai_predictor(model, patch, other, mirror_axes, False)
    if bf16:
        methods["MONAI bf16 autocast"] = monai_predictor(model, patch, batch_size, mirror_axes, True)
        methods["segmorph bf16 autocast"] = segmorph_predictor(model, patch, batch_size, mirror_axes, True)
    return methods


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.run)
    data = args.data if args.data.is_absolute() else REPO / args.data
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, tile batch {args.batch_size} (segmorph "
          f"on CPU: at most {CPU_BATCH_VOXELS} voxels per batch), "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}, model divisor {model.divisor}")  # fmt: skip

    files = sorted((data / "imagesTr").glob("*.nii.gz"))[: args.cases]
    images = [zscore(read_image(f).data) for f in files]
    patch = tuple(args.hippo_patch)
    grids = sum(same_grid(i.shape[1:], patch) for i in images)
    compiled = None if args.no_compile else lambda: compile_for_inference(model)
    methods = methods_for(model, patch, args.batch_size, (0, 1, 2), not args.no_bf16, compiled=compiled)
    started = time.perf_counter()
    compare(methods, images[:1])  # warm-up: oneDNN primitives, Gaussian maps, compilation
    print(f"warm-up on one case, all methods, compilation included: {time.perf_counter() - started:.1f} s")
    results = compare(methods, images)
    print_table(f"(a) {len(images)} hippocampus cases, mirroring over 3 axes (8 passes), tile {patch}, overlap 0.5; "
                f"tile grids identical in {grids}/{len(images)} cases", results, [i[0].numel() for i in images])  # fmt: skip

    generator = torch.Generator().manual_seed(1)
    volume = torch.randn((1, *args.volume), generator=generator)
    patch = tuple(args.volume_patch)
    tiles = len(list(itertools.product(*tile_starts(args.volume, patch, 0.5))))
    methods = methods_for(model, patch, args.batch_size, (), not args.no_bf16, monai_batches=(1,), compiled=compiled)
    compare(methods, [volume[:, : patch[0], : patch[1], : patch[2]]])  # warm-up
    results = compare(methods, [volume])
    print_table(f"(b) random volume {tuple(args.volume)}, no mirroring, tile {patch} ({tiles} tiles), overlap 0.5; "
                f"tile grids identical: {same_grid(args.volume, patch)}", results, [volume[0].numel()])  # fmt: skip
    print("\nspeedup = MONAI fp32 time / method time; max|dp| = largest probability difference to MONAI fp32")


if __name__ == "__main__":
    main()
