"""Hippocampus inter-patient registration benchmark: segmorph (classical, learned) against ANTsPy.

Fixed random pairs of cases kept out of the registration training split (the run's ``held_out``
cases, or the same split computed here when no model is given), each crop padded (centred) to a
common 64³ grid. For every method: mean Dice of labels 1 and 2 of the warped moving labels against
the fixed labels, HD95 (mm), folding (% of voxels with det J <= 0) and seconds per pair (transform
plus warping the labels; the model is loaded once). A learned model trained with label guidance
also sees the moving labels (those it warps; the fixed labels are only scored); its row "learned,
images only" runs it without them. The methods take turns pair by pair, so a slow
spell of the machine (timings on a shared VM vary by 20-50%) hits them alike. ANTsPy (``pip install -e ".[bench-reg]"`` in a
separate environment: antspyx pins numpy<2.4 and scipy<1.16) runs on the same pairs in the same run.

    python benchmarks/reg_hippocampus.py --model runs/reg --pairs 30
    python benchmarks/reg_hippocampus.py --pairs 5 --skip learned     # classical only, quick
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from segmorph.metrics.segmentation import case_metrics
from segmorph.registration.classical import register_classical
from segmorph.registration.learned.training import split_registration_cases
from segmorph.registration.pairs import RegistrationCase, draw_pairs, load_registration_cases
from segmorph.registration.run import deformation_quality
from segmorph.segmentation.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
LABELS = {1: "anterior", 2: "posterior"}
# A method maps (fixed, moving) to the warped moving labels and a function giving the folding % (not timed).
Method = Callable[[RegistrationCase, RegistrationCase], tuple[np.ndarray, Callable[[], float]]]


def score(warped: np.ndarray, fixed: RegistrationCase) -> dict[str, float]:
    rows = case_metrics(warped, fixed.label.numpy()[0], fixed.label.spacing, LABELS)
    return {f"dice_{r['label']}": r["dice"] for r in rows} | {f"hd95_{r['label']}": r["hd95"] for r in rows}


def segmorph_method(kind: str, model=None, refine: int = 0, prealign: str | None = None,
                    passes: int | None = None, guided: bool = True) -> Method:  # fmt: skip
    """A method returning (warped moving labels, folding %) for a pair.

    ``guided``: a learned model trained with label guidance also gets the moving labels (the ones it warps).
    """

    def run(fixed: RegistrationCase, moving: RegistrationCase):
        if kind == "none":
            return moving.label.numpy()[0], lambda: 0.0
        if kind == "learned":
            transform = model.register(fixed.image, moving.image, refine=refine, prealign=prealign, passes=passes,
                                       moving_labels=moving.label if guided else None)  # fmt: skip
        else:
            transform = register_classical(fixed.image, moving.image, kind)
        warped = transform.warp(moving.label, fixed.image.affine, fixed.image.spatial_shape).numpy()[0]
        if transform.is_affine():
            return warped, lambda: 0.0
        return warped, lambda: deformation_quality(transform, fixed.image)["folding_percent"]

    return run


def ants_method(kind: str) -> Method:
    """ANTsPy ``registration`` with default settings of ``type_of_transform=kind`` (same grid, arrays)."""
    import ants

    def image(x: np.ndarray):
        return ants.from_numpy(np.ascontiguousarray(x.astype(np.float32)))

    def run(fixed: RegistrationCase, moving: RegistrationCase):
        f = image(fixed.image.numpy()[0])
        result = ants.registration(f, image(moving.image.numpy()[0]), type_of_transform=kind)
        warped = ants.apply_transforms(f, image(moving.label.numpy()[0]), result["fwdtransforms"],
                                       interpolator="genericLabel").numpy()  # fmt: skip

        def folding() -> float:
            try:
                if kind != "SyN":
                    return 0.0
                jacobian = ants.create_jacobian_determinant_image(f, result["fwdtransforms"][0]).numpy()
                return 100.0 * float((jacobian <= 0).mean())
            finally:  # ANTs leaves its transform files in the temporary folder
                for path in set(result["fwdtransforms"]) | set(result["invtransforms"]):
                    Path(path).unlink(missing_ok=True)

        return np.rint(warped).astype(np.int64), folding

    return run


def evaluate(methods: dict[str, Method], cases: list[RegistrationCase], pairs) -> dict[str, dict]:
    """Every method on every pair, interleaved pair by pair so a slow spell of the machine hits all alike.

    Each method first runs once on the first pair, untimed and unscored (lazy initialisation).
    """
    for method in methods.values():
        method(cases[pairs[0][0]], cases[pairs[0][1]])[1]()
    records: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in methods}
    for fixed_index, moving_index in pairs:
        fixed, moving = cases[fixed_index], cases[moving_index]
        for name, method in methods.items():
            rows, seconds, folding = records[name]
            started = time.perf_counter()
            warped, folding_of = method(fixed, moving)
            seconds.append(time.perf_counter() - started)
            rows.append(score(warped, fixed))
            folding.append(folding_of())
    return {name: summarise(name, *records[name]) for name in methods}


def summarise(name: str, rows: list[dict], seconds: list[float], folding: list[float]) -> dict:
    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    summary["mean_dice"] = (summary["dice_1"] + summary["dice_2"]) / 2
    summary["folding_percent"] = float(np.mean(folding))
    summary["seconds_per_pair"] = float(np.mean(seconds))
    print(f"{name:<22} Dice {summary['mean_dice']:.3f} (ant {summary['dice_1']:.3f}, post {summary['dice_2']:.3f})  "
          f"HD95 {(summary['hd95_1'] + summary['hd95_2']) / 2:5.2f} mm  folding {summary['folding_percent']:.4f}%  "
          f"{summary['seconds_per_pair']:6.3f} s/pair", flush=True)  # fmt: skip
    return summary


def held_out_cases(data: Path, model: Path | None, seed: int) -> list[str]:
    if model is not None:
        return json.loads((model / "run.json").read_text())["split"]["held_out"]
    ids = list(load_dataset(data).case_ids)
    return split_registration_cases(ids, 0, 5, seed)["held_out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "datasets" / "msd_hippocampus")
    parser.add_argument("--model", type=Path, help="segmorph train-registration run folder")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--refine", type=int, default=20, help="instance-optimisation steps for learned+refine")
    parser.add_argument(
        "--prealign",
        choices=("auto", "prior", "affine", "com", "none"),
        help="learned pre-alignment (default: the model's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out (e.g. ants learned)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ids = held_out_cases(args.data, args.model, args.seed)
    cases = load_registration_cases(load_dataset(args.data), ids, (64, 64, 64))
    pairs = draw_pairs(args.pairs, len(cases), args.seed + 1)
    print(f"{len(pairs)} pairs among {len(cases)} held-out cases, 64³ grid, {args.threads} threads", flush=True)
    methods: dict[str, Method] = {"none": segmorph_method("none"), "segmorph affine": segmorph_method("affine"),
                                  "segmorph deformable": segmorph_method("deformable")}  # fmt: skip
    if args.model is not None and "learned" not in args.skip:
        from segmorph.registration.learned.model import LearnedRegistration

        model = LearnedRegistration.load(args.model)
        methods["segmorph learned"] = segmorph_method("learned", model, prealign=args.prealign)
        if model.config.passes > 1:
            methods["learned, one pass"] = segmorph_method("learned", model, prealign=args.prealign, passes=1)
        if model.config.label_guidance > 0:
            methods["learned, images only"] = segmorph_method("learned", model, prealign=args.prealign, guided=False)
        if args.refine > 0:
            methods[f"learned + refine {args.refine}"] = segmorph_method("learned", model, args.refine, args.prealign)
    if "ants" not in args.skip:
        try:
            methods["ANTsPy Affine"] = ants_method("Affine")
            methods["ANTsPy SyN"] = ants_method("SyN")
        except ImportError:
            print("antspyx is not installed: ANTs rows skipped (pip install antspyx in a separate venv)")
    results = evaluate(methods, cases, pairs)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak_gib:.2f} GiB")
    if "ANTsPy SyN" in results:
        syn = results["ANTsPy SyN"]["seconds_per_pair"]
        for name, summary in results.items():
            print(f"{name:<22} time ratio SyN / method: {syn / max(summary['seconds_per_pair'], 1e-9):6.1f}x")
    if args.out:
        args.out.write_text(json.dumps({"pairs": pairs, "results": results, "peak_rss_gib": peak_gib}, indent=2))


if __name__ == "__main__":
    main()
