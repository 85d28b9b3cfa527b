"""``lava_spiked.convert`` end to end (:mod:`lava_spiked.conversion`):
silent layers, the top-level names, an unmodified torchvision ViT."""
import numpy as np
import pytest
import torch
from torch import nn

import lava_spiked
from lava_spiked.capture import capture, run_graph
from lava_spiked.conversion import convert
from lava_spiked.engine import Engine


def test_silent_layer_converts():
    """A layer whose weights and bias are all zero never fires; the network
    still converts and matches the ANN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    x = torch.randn(16, 4)
    net = convert(model.eval(), x, progress=False)
    with torch.no_grad():
        want = model(x[:3]).numpy()
    np.testing.assert_allclose(Engine(net, "float")(x[:3]).logits, want,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(net.golden_fixed(x[0].numpy()), want[0],
                               atol=2.0 ** -16 * np.abs(want).max() * 2)


def test_top_level_convert_and_names():
    assert lava_spiked.convert is convert
    with pytest.raises(AttributeError, match="no attribute"):
        lava_spiked.not_a_name  # noqa: B018


def _torchvision_vit(**kw):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    cfg = dict(image_size=16, patch_size=8, num_layers=2, num_heads=2,
               hidden_dim=16, mlp_dim=32, num_classes=3)
    vit = VisionTransformer(**{**cfg, **kw}).double().eval()
    # torchvision zero-initialises the head, which would hide every error
    nn.init.normal_(vit.heads.head.weight)
    nn.init.normal_(vit.heads.head.bias)
    return vit


def test_unmodified_torchvision_vit_converts():
    """torchvision's VisionTransformer, unchanged (LayerNorm, GELU,
    nn.MultiheadAttention, class token, position embedding): the capture
    is exact, LayerNorm and GELU become staged populations, and the engine
    reproduces the integer golden model bit for bit."""
    vit = _torchvision_vit()
    graph = capture(vit, (3, 16, 16))
    kinds = {p.name: p.kind for p in graph.populations}
    assert kinds["encoder.layers.encoder_layer_0.ln_1"] == "layernorm"
    assert kinds["encoder.layers.encoder_layer_0.mlp.1"] == "activation"
    assert kinds["encoder.ln"] == "layernorm"
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = vit(x).numpy()
    np.testing.assert_allclose(run_graph(graph, x).numpy(), want, rtol=1e-9,
                               atol=1e-9)
    net = convert(vit, torch.randn(64, 3, 16, 16, dtype=torch.float64),
                  progress=False)
    res = Engine(net, "fixed")(x[:2], warn=False)
    for i in range(2):
        gold = net.golden_fixed(x[i].numpy())
        np.testing.assert_array_equal(res.logits[i].numpy(), gold)


def test_short_window_warns_with_the_usable_length():
    with pytest.warns(RuntimeWarning, match="keep only 27 of the T = 40"):
        convert(nn.Linear(3, 2), np.ones((4, 3)), T=40, B=1.4,
                progress=False)
