"""``segmorph train --synthetic GAN`` (GAN-made pairs mixed into training) and ``--annotate-every K`` (partial
annotation): patches drawn in the asked share, what run.json records, bad inputs refused before anything is written."""

import json

import pytest
import torch

from helpers import write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.loop import TrainConfig
from segmorph.segmentation.datasets import IGNORE
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.task import SegmentationTask
from segmorph.synthesis import train_gan
from segmorph.synthesis.task import GanSettings

QUICK = ["--max-steps", "2", "--set", "train.steps_per_epoch=2", "--set", "network.features=[4,8]", "--no-validate",
         "--no-check", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Five labelled cases and a GAN trained two steps on them."""
    root = tmp_path_factory.mktemp("synthetic")
    dataset = write_msd_dataset(root / "ds", num_cases=5)
    settings = GanSettings(generator_width_cap=8, discriminator_width=4, validation_cases=1)
    train_gan(dataset, root / "gan", max_steps=2, show_progress=False, settings=settings)
    return dataset, root / "gan"


def _cases(value: float, count: int = 3):
    return [(torch.full((1, 8, 8, 8), value), torch.ones(1, 8, 8, 8, dtype=torch.long)) for _ in range(count)]


def test_patches_come_from_the_synthetic_pairs_in_the_asked_share():
    config = TrainConfig(patch_size=(8, 8, 8), batch_size=4, max_steps=1, augment=False)
    task = SegmentationTask(_cases(0.0), [], config, 2, synthetic=_cases(1.0), synthetic_share=0.3)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([task.draw(generator)[0] for _ in range(500)])
    share = float((drawn.flatten(1).mean(1) == 1.0).float().mean())
    assert share == pytest.approx(0.3, abs=0.03)
    plain = SegmentationTask(_cases(0.0), [], config, 2)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(plain.draw(a)[0], plain.sampler.sample(4, b)[0])  # no synthetic cases: the draws of before
    with pytest.raises(Exception, match="synthetic_share"):
        SegmentationTask(_cases(0.0), [], config, 2, synthetic=_cases(1.0), synthetic_share=1.0)


def test_train_with_synthetic_pairs_records_them_and_resumes_with_them(data, tmp_path, capsys):
    dataset, gan = data
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), "--synthetic", str(gan), "--synthetic-share", "0.5",
                 "--synthetic-count", "6", *QUICK[:-1]]) == 0  # fmt: skip
    assert "synthetic: 6 pairs" in capsys.readouterr().err
    record = json.loads((out / "run.json").read_text())
    assert record["synthetic"] == {"run": str(gan), "share": 0.5, "count": 6}
    QUICK_MORE = [q if q != "2" else "4" for q in QUICK]
    assert main(["train", str(dataset), "--out", str(out), "--resume", *QUICK_MORE[:-1]]) == 0
    assert "synthetic: 6 pairs" in capsys.readouterr().err  # the recorded GAN, share and count come back


def test_annotate_every_keeps_every_kth_slice_of_the_training_cases(data, tmp_path):
    from segmorph.segmentation.pipeline import sparse_label

    dataset, _ = data
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), "--annotate-every", "3", *QUICK]) == 0
    assert json.loads((out / "run.json").read_text())["annotate_every"] == 3
    plan = Plan.load(out / "plan.json")
    label = torch.ones(1, 6, 5, 7, dtype=torch.long)
    sparse = sparse_label(label, plan, 3)
    axis = max(range(3), key=lambda a: (plan.preprocess.target_spacing[a], a))
    kept = [k for k in range(label.shape[axis + 1]) if bool((sparse.select(axis + 1, k) != IGNORE).all())]
    assert kept == list(range(0, label.shape[axis + 1], 3))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--synthetic", "{tmp}/no_gan"], "no_gan"),
        (["--synthetic", "{gan}", "--synthetic-share", "1.5"], "--synthetic-share"),
        (["--annotate-every", "-2"], "--annotate-every"),
        (["--synthetic", "{dataset}"], ""),
        (["--synthetic", "{gan}", "--synthetic-count", "100000000"], "--synthetic-count 100000000 pairs"),
        (["--cache", "{dataset}/cache"], "must not be the input folder"),
        (["--synthetic-share", "0.5"], "--synthetic-share and --synthetic-count need --synthetic"),
    ],
)
def test_bad_synthetic_and_annotation_inputs_exit_1_and_write_nothing(data, tmp_path, capsys, flags, message):
    dataset, gan = data
    flags = [f.format(tmp=tmp_path, gan=gan, dataset=dataset) for f in flags]
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), *flags, *QUICK]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()
