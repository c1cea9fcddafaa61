"""Memory-efficient dense blocks in training: the same outputs and gradients as plain
concatenation, with each layer's concatenated input saved as its pieces (linear, not quadratic)."""

import pytest
import torch

from cspnet.layers import DenseBlock, dense


def _step(block, x, seed=1):
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_()
    block.zero_grad()
    y = block(x)
    (y * torch.randn_like(y)).sum().backward()
    return y.detach(), x.grad, [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize("preact,new_first", [(False, True), (True, False)])
def test_lean_training_path_equals_concatenation(preact, new_first):
    torch.manual_seed(0)
    block = DenseBlock(8, 4, growth=4, bottleneck_chs=8, preact=preact, new_first=new_first).train()
    x = torch.randn(2, 8, 9, 9)
    block.memory_efficient = True
    lean = _step(block, x)
    block.memory_efficient = False
    plain = _step(block, x)
    torch.testing.assert_close(lean[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(lean[1], plain[1], rtol=0, atol=0)
    for a, b in zip(lean[2], plain[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_each_layer_input_is_saved_as_pieces(monkeypatch):
    packed = []
    real = dense._recat_hooks

    def counting(cat, pieces):
        pack, unpack = real(cat, pieces)

        def counting_pack(t):
            out = pack(t)
            packed.append(isinstance(out, dense._Pieces))
            return out

        return counting_pack, unpack

    monkeypatch.setattr(dense, "_recat_hooks", counting)
    block = DenseBlock(8, 5, growth=4, bottleneck_chs=8).train()
    block(torch.randn(1, 8, 6, 6)).sum().backward()
    assert sum(packed) >= 5  # at least the first conv of every layer keeps pieces, not a concatenation
    packed.clear()
    block.memory_efficient = False
    block(torch.randn(1, 8, 6, 6)).sum().backward()
    assert packed == []  # the plain path installs no hooks
