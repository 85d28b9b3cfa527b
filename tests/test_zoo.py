"""The model zoo matrix (tests/zoo.py): stock vision transformers from
torchvision, timm and Hugging Face, and Hugging Face text encoders and
decoders, in small random configurations.

For each model that converts: the captured graph evaluated exactly (no
spikes) equals the model's output, which checks capture apart from
quantisation, and the converted network runs on the engine. Each refused
model is refused by one UnsupportedModelError that names what it lacks.
Text models also keep the padding contract: an encoder's logits do not
depend on padding, a decoder's at a position do not depend on the tokens
after it. The README's tables are this matrix."""
import pathlib

import numpy as np
import pytest
import torch

from lava_spiked import convert
from lava_spiked.capture import UnsupportedModelError, capture, run_graph
from lava_spiked.engine import Engine
from lava_spiked.huggingface import convert as convert_text
from lava_spiked.huggingface import embed
from zoo import SHAPE, TEXT_ZOO, TOKENS, VOCAB, ZOO, build, table, \
    text_table


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model(name):
    entry, model = ZOO[name], build(name)
    if entry.refused:
        with pytest.raises(UnsupportedModelError) as err:
            capture(model, SHAPE)
        for part in entry.refused:
            assert part in str(err.value)
        return
    g = torch.Generator().manual_seed(1)
    x = torch.randn((40,) + SHAPE, generator=g)
    want = _logits(model, x[32:]).double()
    got = run_graph(capture(model, SHAPE), x[32:]).reshape(want.shape)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    net = convert(model, x[:32], progress=False)
    fixed, real = (np.asarray(Engine(net, mode)(x[32:].numpy(),
                                                warn=False).logits)
                   for mode in ("fixed", "float"))
    assert fixed.shape == real.shape == tuple(want.shape)
    # the integer and the float engine compute one code, up to rounding
    # that deep random models amplify (how closely either follows the ANN
    # at T = 40 depends on the model: tests of accuracy use trained ones)
    assert np.isfinite(fixed).all() and np.isfinite(real).all()
    assert np.corrcoef(fixed.ravel(), real.ravel())[0, 1] > 0.9


def _texts(n, seed, lengths=(3, TOKENS)):
    """``n`` random texts, right-padded tokenizer output (ids 3 and up:
    below are the families' special and padding ids)."""
    rng = np.random.default_rng(seed)
    count = rng.integers(lengths[0], lengths[1] + 1, n)
    ids = rng.integers(3, VOCAB, (n, TOKENS))
    mask = (np.arange(TOKENS)[None, :] < count[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, 1), "attention_mask": mask}


def _left(enc):
    """The same texts padded on the left."""
    shift = enc["attention_mask"].sum(1) - TOKENS
    return {k: np.stack([np.roll(row, -s) for row, s in zip(v, shift)])
            for k, v in enc.items()}


@pytest.mark.parametrize("name", TEXT_ZOO)
def test_text_zoo_model(name):
    """Capture equals the model with its attention mask; the engine runs;
    an encoder's logits are the same whichever side a text is padded; a
    decoder's outputs at a text's positions are the same whatever tokens
    follow (bit for bit, fixed mode)."""
    entry, model = TEXT_ZOO[name], build(name)
    net = convert_text(model, _texts(24, 0), TOKENS, progress=False)
    enc = _texts(6, 1)
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in enc.items()})[0]
    hidden, mask = embed(model, enc, TOKENS)
    got = run_graph(net.graph, torch.from_numpy(hidden),
                    attention_mask=torch.from_numpy(mask)).reshape(want.shape)
    real = torch.from_numpy(mask).bool() if want.dim() == 3 else \
        torch.ones(len(want), dtype=torch.bool)
    assert float((got - want)[real].abs().max() /
                 want[real].abs().max()) < 1e-5

    engine = Engine(net, "fixed")
    snn = engine(hidden, attention_mask=mask, warn=False).logits.numpy()
    assert snn.shape == tuple(want.shape) and np.isfinite(snn).all()
    if not entry.causal:
        left = engine(*embed(model, _left(enc), TOKENS)[:1],
                      attention_mask=mask, warn=False).logits.numpy()
        np.testing.assert_array_equal(left, snn)
        return
    # the first 5 tokens of each text alone, and followed by 7 more
    short = {k: v.copy() for k, v in _texts(6, 2, (TOKENS, TOKENS)).items()}
    short["attention_mask"][:, 5:] = 0
    outs = []
    for e in (short, _texts(6, 2, (TOKENS, TOKENS))):
        h, m = embed(model, e, TOKENS)
        outs.append(engine(h, attention_mask=m, warn=False).logits.numpy())
    np.testing.assert_array_equal(outs[0][:, :5], outs[1][:, :5])


def test_readme_tables_are_the_matrix():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    for part in (table(), text_table()):
        assert part in readme, "regenerate with: python tests/zoo.py"


@pytest.mark.slow
def test_tiny_swin_runs_in_lava_as_on_the_engine():
    """A torchvision Swin with shifted windows, the -100 mask, relative
    position bias and a patch merging runs in Lava (fixed_pt, fused
    blocks) bit for bit as on the engine."""
    from torchvision.models.swin_transformer import SwinTransformer

    from lava_spiked.lava_backend.imports import Loihi2SimCfg

    torch.manual_seed(0)
    model = SwinTransformer([2, 2], 8, [2, 1], [1, 2], [2, 2],
                            num_classes=3).eval()
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(34, 3, 8, 8)
    net = convert(model, x[:32], T=12, B=1.4, progress=False)
    assert any(op.mask.any() for op in net.plan.attention)  # -100: masks
    with net:
        got = net.infer(x[32:].numpy(), Loihi2SimCfg(select_tag="fixed_pt"),
                        progress=False)
    want = Engine(net, "fixed")(x[32:].numpy(), warn=False).logits.numpy()
    np.testing.assert_array_equal(got, want)
