"""The network blocks' convolutions: oneDNN on float32 CPU input, identical results to PyTorch's own."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.nn.blocks import Conv2d, Conv3d, conv_layer, convolution, use_onednn


@pytest.mark.parametrize("stride", [1, 2])
def test_batch_of_one_3d_convolution_matches_pytorch_values_and_gradients(stride):
    torch.manual_seed(0)
    conv = conv_layer(3, 4, 8, 3, stride)
    x = torch.randn(1, 4, 9, 10, 7, requires_grad=True)
    ours = conv(x)
    reference = F.conv3d(x, conv.weight, None, stride=stride, padding=1)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    ours_grads = torch.autograd.grad(ours.square().sum(), (x, conv.weight))
    reference_grads = torch.autograd.grad(reference.square().sum(), (x, conv.weight))
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_2d_convolution_with_bias_matches_pytorch():
    torch.manual_seed(0)
    conv = Conv2d(3, 5, 1)
    x = torch.randn(1, 3, 6, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-5, rtol=1e-5)


def test_state_dict_is_that_of_torch_convolutions():
    ours, theirs = Conv3d(2, 3, 3, padding=1), nn.Conv3d(2, 3, 3, padding=1)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, 5, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_only_float32_cpu_input_outside_autocast_takes_onednn():
    weight = torch.zeros(2, 2, 3, 3, 3)
    assert use_onednn(torch.zeros(1, 2, 4, 4, 4), weight) == torch.backends.mkldnn.is_available()
    assert not use_onednn(torch.zeros(1, 2, 4, 4, 4, dtype=torch.float64), weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_onednn(torch.zeros(1, 2, 4, 4, 4), weight)


def test_float64_convolution_keeps_pytorch_path_and_dtype():
    conv = Conv3d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 5, 5, dtype=torch.float64)
    assert conv(x).dtype == torch.float64
    torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight, conv.bias, padding=1))


def test_float32_cpu_batches_of_one_reach_onednn(monkeypatch):
    calls = []
    original = torch.mkldnn_convolution

    def counting(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(torch, "mkldnn_convolution", counting)
    conv_layer(3, 2, 4)(torch.randn(1, 2, 6, 6, 6))
    assert calls == ([torch.Size([1, 2, 6, 6, 6])] if torch.backends.mkldnn.is_available() else [])
    conv_layer(3, 2, 4)(torch.randn(2, 6, 6, 6))  # unbatched input: PyTorch's own path
    assert len(calls) <= 1


def test_depthwise_convolution_helper_matches_pytorch():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 7, 6, 5)
    weight = torch.rand(3, 1, 1, 5, 1)  # one 1-D kernel per channel along the second axis
    torch.testing.assert_close(convolution(x, weight, [0, 2, 0], groups=3),
                               F.conv3d(x, weight, padding=(0, 2, 0), groups=3), atol=1e-5, rtol=1e-5)  # fmt: skip
