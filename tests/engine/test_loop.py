import csv
import json

import pytest
import torch

from helpers import sphere_case
from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint
from segmorph.engine.loop import TrainConfig
from segmorph.engine.schedules import learning_rate
from segmorph.errors import SegmorphError
from segmorph.nn import UNet
from segmorph.segmentation.task import fit


def _cases(count=3):
    cases = []
    for seed in range(count):
        image, label = sphere_case((16, 16, 8), seed=seed)
        normalised = (image.data - image.data.mean()) / image.data.std()
        cases.append((normalised, label.data))
    return cases


def _config(**kwargs):
    base = {"patch_size": (16, 16, 8), "batch_size": 2, "max_steps": 6, "steps_per_epoch": 3, "seed": 3, "amp": False}
    return TrainConfig(**{**base, **kwargs})


def _model():
    torch.manual_seed(0)
    return UNet(3, 1, 3, (4, 8), deep_supervision=True)


def test_learning_rate_schedules():
    assert learning_rate(1.0, 0.0, "poly", warmup=0.0) == 1.0
    assert learning_rate(1.0, 1.0, "poly", warmup=0.0) == 0.0
    assert learning_rate(1.0, 0.5, "cosine", warmup=0.0) == pytest.approx(0.5)
    assert learning_rate(1.0, 0.05, "poly", warmup=0.1) < 1.0
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(1.0, 0.5, "step")


def test_fit_writes_log_checkpoints_and_curves(tmp_path):
    result = fit(_model(), _cases(), _cases(1), _config(), tmp_path, {"name": "unet"}, 3, show_progress=False)
    assert result.steps == 6
    assert len(result.history) == 2
    assert {"checkpoint_best.pt", "checkpoint_last.pt", "train_log.csv", "curves.png"} <= {
        p.name for p in tmp_path.iterdir()
    }
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert 0.0 <= float(rows[-1]["val_dice"]) <= 1.0


def test_same_seed_gives_identical_weights(tmp_path):
    first = fit(_model(), _cases(), [], _config(), tmp_path / "a", {}, 3, show_progress=False)
    second = fit(_model(), _cases(), [], _config(), tmp_path / "b", {}, 3, show_progress=False)
    state_a, _, _ = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    state_b, _, _ = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert first.steps == second.steps
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_resume_continues_to_the_same_weights(tmp_path):
    fit(_model(), _cases(), [], _config(), tmp_path / "full", {}, 3, show_progress=False)

    def crash_after_first_epoch(record):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(_model(), _cases(), [], _config(), tmp_path / "part", {}, 3, callbacks=[crash_after_first_epoch],
            show_progress=False)  # fmt: skip
    resumed = fit(_model(), _cases(), [], _config(), tmp_path / "part", {}, 3, resume=True, show_progress=False)
    assert resumed.steps == 6
    full, _, _ = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    part, _, _ = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert all(torch.allclose(full[k], part[k], atol=1e-6) for k in full)


def test_training_learns_the_spheres(tmp_path):
    config = _config(max_steps=60, steps_per_epoch=30, learning_rate=1e-2, augment=False)
    torch.manual_seed(0)
    model = UNet(3, 1, 3, (8, 16), deep_supervision=True)
    result = fit(model, _cases(4), _cases(2), config, tmp_path, {}, 3, show_progress=False)
    assert result.history[-1].val_scores[0] > 0.8  # the outer ellipsoid; an untrained net scores ~0


def test_config_needs_a_limit():
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(patch_size=(8, 8))


def test_checkpoint_refuses_arbitrary_pickles(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config_json": "{}", "payload": Payload()}, path)
    with pytest.raises(SegmorphError, match="refused to load checkpoint"):
        load_checkpoint(path)


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "c.pt", model.state_dict(), {"network": model.config}, step=torch.tensor(3))
    state, config, extras = load_checkpoint(tmp_path / "c.pt")
    assert config == json.loads(json.dumps({"network": model.config}))
    assert int(extras["step"]) == 3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_weight_average_is_validated_saved_as_best_and_resumed(tmp_path):
    config = _config(ema_decay=0.9, max_steps=6)
    fit(_model(), _cases(), _cases(1), config, tmp_path / "full", {}, 3, show_progress=False)
    last, _, extras = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    best, _, _ = load_checkpoint(tmp_path / "full" / "checkpoint_best.pt")
    average = extras["ema"]
    assert set(average) == set(last)
    assert any(not torch.equal(average[k], last[k]) for k in last if last[k].dtype.is_floating_point)
    rows = list(csv.DictReader((tmp_path / "full" / "train_log.csv").open()))
    best_epoch = max(range(len(rows)), key=lambda i: float(rows[i]["val_dice"]))
    if best_epoch == len(rows) - 1:  # the last epoch was best: its checkpoint holds the average, not the weights
        assert all(torch.equal(best[k], average[k]) for k in best)

    def crash_after_first_epoch(record):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(_model(), _cases(), [], config, tmp_path / "part", {}, 3, callbacks=[crash_after_first_epoch],
            show_progress=False)  # fmt: skip
    fit(_model(), _cases(), [], config, tmp_path / "part", {}, 3, resume=True, show_progress=False)
    full = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")[2]["ema"]
    part = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")[2]["ema"]
    assert all(torch.allclose(full[k].float(), part[k].float(), atol=1e-6) for k in full)


def test_weight_average_known_answer():
    from segmorph.engine.loop import frozen_copy, update_average

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.0)
    average = frozen_copy(model)
    torch.nn.init.constant_(model.weight, 1.0)
    for _ in range(2):
        update_average(average, model, 0.5)
    assert average.weight.item() == pytest.approx(0.75)  # 0 -> 0.5 -> 0.75
    assert not average.weight.requires_grad
    with pytest.raises(ValueError, match="ema_decay"):
        _config(ema_decay=1.0)


def test_tail_average_is_the_mean_of_the_last_epochs_and_resumes(tmp_path):
    config = _config(max_steps=12, steps_per_epoch=3, tail_average=0.5)  # epochs end at progress 1/4, 1/2, 3/4, 1
    states = []

    def keep_epoch_weights(record):
        states.append(load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")[0])

    fit(_model(), _cases(), [], config, tmp_path / "full", {}, 3, callbacks=[keep_epoch_weights], show_progress=False)
    _, _, extras = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    assert len(states) == 4 and json.loads(extras["counters_json"])["tail_count"] == 3
    for key, value in extras["tail"].items():
        if value.dtype.is_floating_point:
            expected = torch.stack([s[key].double() for s in states[1:]]).mean(0)  # epochs 2-4: the last half
            assert torch.allclose(value.double(), expected, atol=1e-6), key

    def crash_after_second_epoch(record):
        if record.epoch == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(_model(), _cases(), [], config, tmp_path / "part", {}, 3, callbacks=[crash_after_second_epoch],
            show_progress=False)  # fmt: skip
    fit(_model(), _cases(), [], config, tmp_path / "part", {}, 3, resume=True, show_progress=False)
    part = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")[2]
    assert json.loads(part["counters_json"])["tail_count"] == 3
    assert all(torch.allclose(extras["tail"][k].float(), part["tail"][k].float(), atol=1e-6) for k in part["tail"])
    assert "tail" not in _plain_run_extras(tmp_path, _config(max_steps=6))
    with pytest.raises(ValueError, match="tail_average"):
        _config(tail_average=1.5)


def _plain_run_extras(tmp_path, config):
    fit(_model(), _cases(), [], config, tmp_path / "plain", {}, 3, show_progress=False)
    return load_checkpoint(tmp_path / "plain" / "checkpoint_last.pt")[2]


class _CountingTask:
    """A task with state of its own: it counts the batches it drew."""

    score_key = "dice"
    score_parts = ()

    def __init__(self):
        self.drawn = torch.zeros(1)

    def batch_loss(self, model, generator, device, amp):
        self.drawn += 1
        return sum(p.square().sum() for p in model.parameters())

    def validate(self, model, device):
        return []

    def state_dict(self):
        return {"drawn": self.drawn.clone()}

    def load_state_dict(self, state):
        self.drawn = state["drawn"].clone()


def test_task_state_is_saved_with_the_last_checkpoint_and_resumed(tmp_path):
    from segmorph.engine.loop import fit_task

    def crash_after_first_epoch(record):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_task(_model(), _CountingTask(), _config(), tmp_path, {}, callbacks=[crash_after_first_epoch],
                 show_progress=False)  # fmt: skip
    _, _, extras = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert float(extras["task"]["drawn"]) == 3
    resumed = _CountingTask()
    fit_task(_model(), resumed, _config(), tmp_path, {}, resume=True, show_progress=False)
    assert float(resumed.drawn) == 6
    _, _, best = load_checkpoint(tmp_path / "checkpoint_best.pt")
    assert "task" not in best


class _ScriptedScoresTask:
    """A task whose validation gives the scores of a script, one per epoch (NaN: validation it could not score)."""

    score_key = "r2"
    score_parts = ("r2",)

    def __init__(self, scores):
        self.scores = list(scores)

    def batch_loss(self, model, generator, device, amp):
        return sum(p.square().sum() for p in model.parameters())

    def validate(self, model, device):
        return [self.scores.pop(0)]


@pytest.mark.parametrize(
    ("scores", "best_epoch"),
    [
        ([float("nan")] * 3, 3),  # never scored: the latest epoch, and a best checkpoint exists
        ([float("nan"), -2.5, float("nan")], 2),  # a score below -1 is kept; an unscored epoch never replaces it
        ([-3.0, -1.5, -2.0], 2),
    ],
)
def test_best_epoch_with_unscorable_or_very_low_validation_scores(tmp_path, scores, best_epoch):
    from segmorph.engine.loop import fit_task

    result = fit_task(_model(), _ScriptedScoresTask(scores), _config(max_steps=9), tmp_path, {}, show_progress=False)
    assert result.best_epoch == best_epoch
    assert (tmp_path / "checkpoint_best.pt").is_file()
    expected = scores[best_epoch - 1]
    assert result.best_score == expected or (expected != expected and result.best_score != result.best_score)


class _NaNGradientTask(_ScriptedScoresTask):
    """Every other batch has a NaN gradient (as a degenerate batch in bfloat16 can)."""

    def __init__(self):
        super().__init__([0.5] * 3)
        self.batches = 0

    def batch_loss(self, model, generator, device, amp):
        self.batches += 1
        loss = sum(p.square().sum() for p in model.parameters())
        return loss * (float("nan") if self.batches % 2 else 1.0)


def test_steps_with_non_finite_gradients_are_skipped_and_counted(tmp_path, capsys):
    from segmorph.engine.loop import fit_task

    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit_task(model, _NaNGradientTask(), _config(max_steps=6, weight_decay=0.0), tmp_path, {})
    assert (result.steps, result.skipped_steps) == (6, 3)
    trained, _, extras = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert all(torch.isfinite(v).all() for v in trained.values() if v.dtype.is_floating_point)
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the finite steps did train
    assert json.loads(extras["counters_json"])["skipped_steps"] == 3
    assert "warning: 3 of 6 steps skipped: their gradients were not finite" in capsys.readouterr().err
