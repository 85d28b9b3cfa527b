"""Clipping (a value beyond its population's scale sigma, which the phase
code decodes to sigma) is counted per population, alike in Lava under both
tags, in the golden models and in both engine modes, and warned about above
CLIP_WARN_FRACTION."""
import warnings

import numpy as np
import pytest
from lava.magma.core.run_configs import Loihi2SimCfg

from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.conversion import convert
from lava_spiked.engine import Engine
from lava_spiked.golden.models import (CLIP_WARN_FRACTION, clip_sizes,
                                       golden_fixed, golden_float)
from lava_spiked.lava_backend.chain import PhaseChain
from lava_spiked.network import SpikingNetwork

MODES = {"fixed_pt": "fixed", "floating_pt": "float"}


def _clip_warnings(caught):
    return [w for w in caught if issubclass(w.category, RuntimeWarning)
            and "clipped" in str(w.message)]


def _chain():
    """Input sigma 2; every weight and bias exact in 8 bits and every
    counted membrane fed only by spikes that decode exactly to +-sigma.

    Sample [4, 1, -3]: input/sigma = [2, 0.5, -1.5] -> 2 clipped (decoded
    +2, ~1, -2). layer0 (bipolar, sigma 1): [1 * 2, 0.25 * -2,
    0.75 * -2 - 0.25] = [2, -0.5, -1.75] -> 2 clipped (decoded +1, ~-0.5,
    -1). layer1 (ReLU, sigma 1): [-1.5 * 1, -1.5 * -1, 1 * 1] =
    [-1.5, 1.5, 1.0] -> 1 clipped (negative values do not clip a ReLU
    neuron, and exactly sigma is not beyond it). The readout never clips.
    Sample 0: only layer0's bias -0.25 (decoded ~-0.2), nothing clips.
    """
    w0 = [[1, 0, 0], [0, 0, 0.25], [0, 0, 0.75]]
    w1 = [[-1.5, 0, 0], [0, 0, -1.5], [1, 0, 0]]
    w2 = [[1, 1, 1]]
    chain = PhaseChain([w0, w1, w2], [[0, 0, -0.25], 0, 0], [2, 1, 1, 1],
                       B=1.5, T=8, unipolar=[False, True])
    x = np.array([[4.0, 1.0, -3.0], [0.0, 0.0, 0.0]])
    return chain, x, {"input": 2, "layer0": 2, "layer1": 1}


def test_hand_checked_chain_counts_alike_everywhere():
    chain, x, want = _chain()
    zero = dict.fromkeys(want, 0)
    assert clip_sizes(chain.plan) == {"input": 3, "layer0": 3, "layer1": 3}
    for model in (golden_fixed, golden_float):
        assert model(chain.plan, x[0]).clipped == want
        assert model(chain.plan, x[1]).clipped == zero
    for mode in ("fixed", "float"):
        for record in (True, False):
            with pytest.warns(RuntimeWarning, match="input 33.3%"):
                res = Engine(chain.plan, mode)(x, record=record)
            assert {k: v.tolist() for k, v in res.clipped.items()} == \
                {k: [n, 0] for k, n in want.items()}
    net = SpikingNetwork(chain.plan)
    with net:
        for tag in MODES:
            with pytest.warns(RuntimeWarning) as caught:
                net.infer(x, Loihi2SimCfg(select_tag=tag), progress=False)
            assert net.clipped == want, tag
            # one warning per call, naming every population above 10 %
            clip = _clip_warnings(caught)
            assert len(clip) == 1
            assert all(f"{k} " in str(clip[0].message) for k in want)
            # counts are per call (the Vars are cumulative)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                net.infer(x[1:], Loihi2SimCfg(select_tag=tag),
                          progress=False)
            assert not _clip_warnings(caught)
            assert net.clipped == zero, tag


@pytest.fixture(scope="module")
def bundled_splits():
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], progress=False)
    return net, splits["calibration"][0], splits["test"][0]


def test_inputs_beyond_calibration_warn_and_lava_equals_the_engine(
        bundled_splits):
    net, calib, test = bundled_splits
    loud = calib[:2] * 20.0
    sizes = clip_sizes(net.plan)
    with net:
        with pytest.warns(RuntimeWarning, match=r"clipped .* in input "):
            net.infer(loud, Loihi2SimCfg(select_tag="fixed_pt"),
                      progress=False)
        lava = dict(net.clipped)
    with pytest.warns(RuntimeWarning, match=r"clipped .* in input "):
        res = Engine(net, "fixed")(loud, record=False)
    assert {k: int(v.sum()) for k, v in res.clipped.items()} == lava
    assert set(lava) == set(sizes) and "head.input" in lava
    assert net.plan.output not in lava
    assert lava["input"] > CLIP_WARN_FRACTION * sizes["input"] * len(loud)
    with pytest.warns(RuntimeWarning, match=r"clipped .* in input "):
        Engine(net, "float")(loud, record=False)


def test_ordinary_data_does_not_warn(bundled_splits):
    net, calib, test = bundled_splits
    sizes = clip_sizes(net.plan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("fixed", "float"):
            res = Engine(net, mode)(test, record=False)
            frac = max(int(v.sum()) / (sizes[k] * len(test))
                       for k, v in res.clipped.items())
            # measured 0.56 % (see CLIP_WARN_FRACTION)
            assert 0 < frac < CLIP_WARN_FRACTION / 10
        with net:
            net.infer(test[:2], Loihi2SimCfg(select_tag="fixed_pt"),
                      progress=False)
    assert not _clip_warnings(caught)
    res = Engine(net, "fixed")(test[:2], warn=False)
    assert net.clipped == {k: int(v.sum()) for k, v in res.clipped.items()}


def test_golden_models_count_attention_clipping_like_the_engine(
        bundled_splits):
    """Logit and attention-output membranes (which the attention golden
    models return) clip per sample as the engine counts them, in range and
    at 20x the calibration range."""
    net, calib, test = bundled_splits
    x = np.concatenate([test[:4], calib[:2] * 20])
    for mode, model in (("fixed", golden_fixed),
                        ("float", golden_float)):
        res = Engine(net, mode)(x, warn=False)
        for i, sample in enumerate(x):
            want = {k: int(v[i]) for k, v in res.clipped.items()}
            assert model(net.plan, sample).clipped == want, (mode, i)
        assert res.clipped["blocks.0.attn.attention:logits"].sum() > 0
