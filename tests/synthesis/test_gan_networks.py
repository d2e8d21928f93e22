"""The GAN's networks: shapes in 2D and 3D, rebuilt from their stored config, bad arguments named."""

from __future__ import annotations

import pytest
import torch

from segmorph.synthesis.networks import (
    LabelToImageGenerator,
    PatchDiscriminator,
    SpadeNorm,
    build_synthesis_network,
    discriminator_features,
)


@pytest.mark.parametrize(("ndim", "shape"), [(2, (32, 24)), (3, (16, 8, 24))])
def test_generator_maps_labels_and_noise_to_image_channels_of_the_same_grid(ndim, shape):
    generator = LabelToImageGenerator(ndim, num_classes=3, out_channels=2, features=(4, 8), noise_channels=1)
    assert generator.divisor == 2
    out = generator(torch.randn(2, 4, *shape))
    assert out.shape == (2, 2, *shape)


@pytest.mark.parametrize(("ndim", "patch"), [(2, (64, 64)), (3, (40, 56, 40))])
def test_discriminator_scores_patches(ndim, patch):
    features = discriminator_features(patch, width=4)
    scores = PatchDiscriminator(ndim, 5, features)(torch.zeros(1, 5, *patch))
    assert scores.shape[:2] == (1, 1) and all(4 <= s <= p // 4 for s, p in zip(scores.shape[2:], patch))


def test_spade_norm_follows_the_labels():
    """Features that are constant everywhere come out different where the labels differ: the labels steer them."""
    torch.manual_seed(0)
    spade = SpadeNorm(2, channels=3, label_channels=2, hidden=4)
    labels = torch.zeros(1, 2, 8, 8)
    labels[:, 0, :, :4] = 1
    labels[:, 1, :, 4:] = 1
    out = spade(torch.randn(1, 3, 8, 8), labels)
    assert out.shape == (1, 3, 8, 8)
    coarse = spade(torch.randn(1, 3, 4, 4), labels)  # labels averaged down to the features' grid
    assert coarse.shape == (1, 3, 4, 4)


def test_networks_rebuild_from_their_config_with_the_same_weights():
    torch.manual_seed(0)
    for network in (LabelToImageGenerator(3, 2, 1, (4, 8)), PatchDiscriminator(2, 3, (4, 8))):
        rebuilt = build_synthesis_network(network.config)
        rebuilt.load_state_dict(network.state_dict())
        assert rebuilt.config == network.config


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"ndim": 4, "num_classes": 2, "out_channels": 1}, "ndim"),
        ({"ndim": 2, "num_classes": 2, "out_channels": 1, "features": (8,)}, "features"),
        ({"ndim": 2, "num_classes": 1, "out_channels": 1}, "num_classes"),
        ({"ndim": 2, "num_classes": 2, "out_channels": 1, "dropout": 1.5}, "dropout"),
    ],
)
def test_bad_generator_arguments_are_named(arguments, named):
    with pytest.raises(ValueError, match=named):
        LabelToImageGenerator(**arguments)


def test_unknown_network_names_are_refused():
    with pytest.raises(ValueError, match="name"):
        build_synthesis_network({"name": "unet", "ndim": 2})
