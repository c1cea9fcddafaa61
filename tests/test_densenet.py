"""Dense blocks and the DenseNet family: concatenation order, the inference buffer, ELASTIC."""

import pytest
import torch
import torch.nn.functional as F

import cspnet
from cspnet.layers import DenseBlock
from cspnet.models.densenet import ElasticDenseLayer
from cspnet.tools.profile import profile


@pytest.mark.parametrize("new_first", [True, False])
@pytest.mark.parametrize("preact", [True, False])
def test_buffered_inference_equals_concatenation(new_first, preact):
    torch.manual_seed(0)
    block = DenseBlock(12, 3, growth=4, bottleneck_chs=8, preact=preact, new_first=new_first).eval()
    x = torch.randn(2, 12, 7, 5)
    expected = block._forward_concat(x)
    with torch.no_grad():
        got = block(x)  # no autograd: the pre-allocated buffer path
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.shape == (2, 12 + 3 * 4, 7, 5)


def test_darknet_order_puts_the_newest_features_first():
    """densenet201.cfg: [route] layers=-1,-3 concatenates [new, previous]."""
    torch.manual_seed(0)
    block = DenseBlock(6, 2, growth=3, bottleneck_chs=4, new_first=True).eval()
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        out = block(x)
        first_new = block.layers[0](x)
        second_new = block.layers[1](torch.cat([first_new, x], 1))
    torch.testing.assert_close(out, torch.cat([second_new, first_new, x], 1))


def test_training_path_keeps_gradients():
    block = DenseBlock(6, 2, growth=3, bottleneck_chs=4).train()
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad.abs().sum() > 0 and block.layers[0].conv1.conv.weight.grad is not None


def test_elastic_layer_sums_a_full_and_a_low_resolution_branch():
    torch.manual_seed(0)
    layer = ElasticDenseLayer(16, growth=8, bottleneck_chs=16, act="relu").eval()
    x = torch.randn(1, 16, 8, 6)
    with torch.no_grad():
        h = F.relu(layer.bn(x))
        low = F.interpolate(layer.low(F.avg_pool2d(h, 2)), size=(8, 6), mode="bilinear", align_corners=False)
        torch.testing.assert_close(layer(x), layer.high(h) + low)
        layer.low_res = False
        torch.testing.assert_close(layer(x), layer.high(h) + layer.low(h))


def test_elastic_csp_reproduces_the_papers_relative_change():
    """Table 3: CSPDenseNet-201-Elastic vs DenseNet-201-Elastic: -19% computation, params +3.5%."""
    with torch.device("meta"):
        base = profile(cspnet.create_model("densenet201_elastic"), 224)
        csp = profile(cspnet.create_model("cspdensenet201_elastic"), 224)
    paper_flops, paper_params = 7.13 / 8.77 - 1, 20.17 / 19.48 - 1
    assert csp.gflops / base.gflops - 1 == pytest.approx(paper_flops, abs=0.015)
    assert csp.params / base.params - 1 == pytest.approx(paper_params, abs=0.025)


def test_elastic_models_run_on_odd_sizes():
    model = cspnet.create_model("cspdensenet201_elastic", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 61)).shape == (1, 3)
