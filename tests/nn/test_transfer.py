"""Transfer (:mod:`segmorph.nn.transfer`): exactly the tensors whose name and shape match are copied."""

import json
import pickle

import pytest
import torch

from segmorph.engine.checkpoints import save_checkpoint
from segmorph.errors import SegmorphError
from segmorph.nn import UNet, build_network
from segmorph.nn.classifiers import Ensemble, ResNet, SimpleCNN
from segmorph.nn.transfer import (
    TransferRecord,
    checkpoint_of,
    encoder_parameter_names,
    initialize_from,
    source_network,
)


def _save_run(folder, model, name="checkpoint_best.pt", prefix=None, extra=None):
    """A run folder holding ``model``'s weights (under ``prefix`` when given) as the training loop writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    network = {"name": "unet", **model.config} if "name" not in model.config else dict(model.config)
    state = model.state_dict() if prefix is None else {prefix + k: v for k, v in model.state_dict().items()}
    config = {"network": network, **({} if prefix is None else {"transfer_prefix": prefix}), **(extra or {})}
    save_checkpoint(folder / name, state, config)
    return folder


def _unet(ndim=3, num_classes=2, seed=0):
    torch.manual_seed(seed)
    return UNet(ndim, 1, num_classes, (4, 8, 16), deep_supervision=True)


def test_unet_with_another_head_loads_everything_but_the_heads(tmp_path):
    source = _unet(num_classes=2, seed=1)
    run = _save_run(tmp_path / "seg", source)
    target = _unet(num_classes=3, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    record = initialize_from(target, run)
    heads = {k for k in target.state_dict() if k.startswith("heads.")}
    assert heads and set(record.skipped) == heads
    assert set(record.loaded) == set(target.state_dict()) - heads
    assert record.skipped["heads.0.weight"] == "shape [2, 4, 1, 1, 1] in the source, [3, 4, 1, 1, 1] here"
    assert record.skipped["heads.0.bias"] == "shape [2] in the source, [3] here"
    state = target.state_dict()
    assert all(torch.equal(state[k], source.state_dict()[k]) for k in record.loaded)
    assert all(torch.equal(state[k], before[k]) for k in heads)  # the heads keep their own start
    assert record.source == str(run / "checkpoint_best.pt")
    assert "initialised" in record.summary() and "heads.0.weight" in record.summary() and "\n" not in record.summary()
    assert json.loads(json.dumps(record.to_dict()))["skipped"]["heads.0.bias"] == "shape [2] in the source, [3] here"


def test_a_2d_source_into_a_3d_network_is_refused_in_one_line(tmp_path):
    run = _save_run(tmp_path / "seg2d", _unet(ndim=2))
    with pytest.raises(SegmorphError, match="a 2D network; this run trains a 3D one") as err:
        initialize_from(_unet(ndim=3), run)
    assert err.value.path == str(run / "checkpoint_best.pt")
    assert "\n" not in str(err.value)


def test_pretraining_prefix_is_removed(tmp_path):
    source = _unet(num_classes=1, seed=4)
    run = _save_run(tmp_path / "pre", source, prefix="network.", extra={"pretraining": {"objective": "masked"}})
    target = _unet(num_classes=3, seed=5)
    record = initialize_from(target, run)
    assert "encoder.0.first.0.weight" in record.loaded
    assert torch.equal(target.encoder[0].first[0].weight, source.encoder[0].first[0].weight)
    assert set(record.skipped) == {k for k in target.state_dict() if k.startswith("heads.")}


def test_classifier_from_another_classification_run_keeps_its_own_final_layer(tmp_path):
    torch.manual_seed(0)
    source = ResNet(2, 1, 2, width=4, blocks=(1, 1, 1, 1))
    for module in source.modules():  # batch-norm statistics are buffers: they travel too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(0.5)
    run = _save_run(tmp_path / "cls", source, name="classifier.pt", extra={"classifier": {"class_names": ["a", "b"]}})
    (run / "checkpoint_best.pt").write_bytes(b"not read: classifier.pt holds the kept weights")
    assert checkpoint_of(run) == run / "classifier.pt"
    target = ResNet(2, 1, 3, width=4, blocks=(1, 1, 1, 1))
    record = initialize_from(target, run)
    assert set(record.skipped) == {"fc.weight", "fc.bias"}
    assert "stem.0.1.running_mean" in record.loaded
    assert torch.all(target.stem[0][1].running_mean == 0.5)
    assert source_network(run)["name"] == "resnet"


def test_nothing_matching_is_refused(tmp_path):
    run = _save_run(tmp_path / "cls", SimpleCNN(3, 1, 2, features=(4, 8)))
    with pytest.raises(SegmorphError, match="no weight matches this network by name and shape"):
        initialize_from(_unet(ndim=3), run)


def test_bad_sources_are_refused_naming_the_file(tmp_path):
    with pytest.raises(SegmorphError, match="not found") as err:
        initialize_from(_unet(), tmp_path / "missing")
    assert err.value.path == str(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegmorphError, match="no checkpoint_best.pt or classifier.pt"):
        checkpoint_of(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SegmorphError, match=r"not a PyTorch checkpoint \(neither a zip archive nor a pickle\)") as err:
        initialize_from(_unet(), tmp_path / "junk.pt")
    assert err.value.path == str(tmp_path / "junk.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))  # a pickle, not a torch file
    with pytest.raises(SegmorphError, match=r"refused to load checkpoint: not a plain-weights file \(Unsupported"):
        initialize_from(_unet(), tmp_path / "legacy.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code",))


def test_a_checkpoint_holding_code_is_refused_with_the_reason(tmp_path):
    torch.save({"model": {}, "config_json": "{}", "extra": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SegmorphError) as err:
        initialize_from(_unet(), tmp_path / "evil.pt")
    assert err.value.problem == ("refused to load checkpoint: not a plain-weights file (Unsupported global: GLOBAL "
                                 "print was not an allowed global by default)")  # fmt: skip


def test_a_cross_validation_run_is_refused_naming_a_fold(tmp_path):
    run = tmp_path / "cv"
    _save_run(run / "fold_0", _unet())
    (run / "crossval.json").write_text(json.dumps({"task": "segmentation"}))
    with pytest.raises(SegmorphError, match="give one fold's folder") as err:
        initialize_from(_unet(), run)
    assert str(run / "fold_0") in err.value.problem
    assert initialize_from(_unet(), run / "fold_0").loaded  # the fold itself loads


def test_an_ensemble_is_refused_naming_a_member(tmp_path):
    member = {"name": "simplecnn", "ndim": 2, "in_channels": 1, "num_classes": 2, "features": [4, 8], "dropout": 0.2}
    run = _save_run(tmp_path / "ens", Ensemble([member, member]), name="classifier.pt")
    with pytest.raises(SegmorphError, match="an ensemble of 2 classifiers") as err:
        initialize_from(build_network(member), run)
    assert "member_0" in err.value.problem


def test_encoder_parameter_names():
    unet = _unet()
    assert encoder_parameter_names(unet) == [n for n, _ in unet.named_parameters() if n.startswith("encoder.")]
    cnn = SimpleCNN(2, 1, 2, features=(4, 8))
    names = encoder_parameter_names(cnn)
    assert "fc.weight" not in names and len(names) == len(list(cnn.parameters())) - 2
    with pytest.raises(ValueError, match="no encoder"):
        encoder_parameter_names(torch.nn.Linear(2, 2))


def test_record_summary_lists_a_few_skipped_names():
    record = TransferRecord("x.pt", ("a",), {f"h{i}": "not in the source" for i in range(5)})
    assert record.summary() == (
        "initialised 1 of 6 tensors from x.pt; not loaded: h0 (not in the source), h1 (not in the source), "
        "h2 (not in the source) and 2 more"
    )
