"""What an ``--init`` source (a pretraining run, another classification run) fixes for a new classification run.

A new run that starts from a source takes the source's classifier (name and width) and input size unless its own
settings name them, so that every tensor of the body can be loaded (:func:`segmorph.nn.transfer.initialize_from`).
"""

from __future__ import annotations

from pathlib import Path

from segmorph.classification.config import ModelSettings
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.nn.names import network_names
from segmorph.nn.transfer import checkpoint_of


def source_input_size(source: Path) -> tuple[int, ...] | None:
    """The input size (voxels per axis) the network of ``source`` was trained at, when its checkpoint states
    it: a classification run's ``classifier.input``, or a pretraining run's ``pretraining.input``."""
    _, config, _ = load_checkpoint(checkpoint_of(source))
    for section in ("classifier", "pretraining"):
        facts = config.get(section)
        stated = facts.get("input") if isinstance(facts, dict) else None
        if isinstance(stated, dict) and isinstance(stated.get("size"), list) and stated["size"]:
            return tuple(int(s) for s in stated["size"])
    return None


def source_model(source: str | Path) -> ModelSettings | None:
    """The classifier (name and first-stage width) of ``source``'s network, or None when it is not a classifier
    (a U-Net pretraining run, a segmentation run: its tensors are matched against the requested network).

    Raises:
        SegmorphError: Naming the source when it has no readable checkpoint.
    """
    _, config, _ = load_checkpoint(checkpoint_of(Path(source)))
    network = config.get("network")
    if not isinstance(network, dict) or network.get("name") not in network_names("classification"):
        return None
    width = network.get("width")
    if network["name"] == "simplecnn":
        features = network.get("features")
        width = features[0] if isinstance(features, list) and features else None
    if not isinstance(width, int) or width < 1:
        return None
    return ModelSettings(name=str(network["name"]), width=width)
