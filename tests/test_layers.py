"""Layer building blocks: darknet pooling, the eager inference shortcuts, partial shortcuts."""

import pytest
import torch
import torch.nn.functional as F

from cspnet.layers import AvgPool2x2, DarknetMaxPool, partial_add


@pytest.mark.parametrize("shape", [(2, 5, 8, 8), (1, 3, 7, 9), (1, 4, 1, 1), (2, 3, 6, 5)])
def test_darknet_2x2_max_pool_shortcut_equals_ceil_mode_pooling(shape):
    x = torch.randn(*shape)
    with torch.no_grad():  # the strided-view shortcut
        fast = DarknetMaxPool(2, 2)(x)
    torch.testing.assert_close(fast, F.max_pool2d(x, 2, 2, ceil_mode=True), rtol=0, atol=0)


def test_max_pool_keeps_max_pool_gradients_in_training():
    """Ties (common after activations) get the whole gradient in one place, as max_pool2d does."""
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    DarknetMaxPool(2, 2)(x).sum().backward()
    assert x.grad.sum().item() == 4 and x.grad.max().item() == 1


@pytest.mark.parametrize("ceil_mode", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 8, 8), (1, 3, 7, 9), (2, 3, 6, 5)])
def test_avg_pool_shortcut_equals_avg_pool2d(shape, ceil_mode):
    x = torch.randn(*shape)
    with torch.no_grad():
        fast = AvgPool2x2(ceil_mode)(x)
    torch.testing.assert_close(fast, F.avg_pool2d(x, 2, 2, ceil_mode=ceil_mode), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size,stride", [(5, 1), (9, 1), (13, 1), (2, 1), (3, 2)])
def test_darknet_max_pool_sizes(size, stride):
    """darknet: out = ceil(H / stride); 'same' windows for odd sizes, right/bottom pad for size 2."""
    x = torch.randn(1, 2, 13, 10)
    y = DarknetMaxPool(size, stride)(x)
    assert y.shape[-2:] == (-(-13 // stride), -(-10 // stride))
    if size % 2:  # symmetric 'same' window: the centre tap is inside
        assert torch.all(y >= x[..., ::stride, ::stride])


def test_partial_add_adds_over_the_common_channels_with_a_stride():
    x = torch.zeros(1, 4, 2, 2)
    s = torch.arange(2 * 4 * 4, dtype=torch.float).view(1, 2, 4, 4)
    out = partial_add(x, s)
    torch.testing.assert_close(out[:, :2], s[..., ::2, ::2])
    assert out[:, 2:].abs().sum() == 0
    assert partial_add(torch.zeros(1, 2, 3, 3), torch.ones(1, 5, 3, 3)).shape == (1, 2, 3, 3)
