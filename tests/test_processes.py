"""PhaseEncoder and PhaseNeuron in Lava, under both tags, against the golden
models of lava_spiked.numerics.phase (float) and lava_spiked.numerics.fixed
(integer)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.process.variable import Var
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer
from lava.utils.weightutils import SignMode

from conftest import TAGS, lava_children, run
from lava_spiked.lava_backend.chain import PhaseChain
from lava_spiked.numerics import fixed, phase
from lava_spiked.processes import PhaseEncoder, PhaseNeuron, SpikeDelay


def spikes_of(trace, start, T):
    """Fire step (-1 if none) and sign per row of a sink trace."""
    window = trace[:, start:start + T]
    fired = window != 0
    return (np.where(fired.any(1), fired.argmax(1), -1),
            np.sign(window.sum(1)).astype(int))


@pytest.mark.parametrize("tag", TAGS)
def test_encoder_fires_at_phase_step(tag):
    B, T, start, sigma = 1.15, 12, 3, 2.0
    x = np.array([1.9, -1.2, 0.5, -0.05, 0.0, 9.0])
    enc = PhaseEncoder(data=x, scale=sigma, B=B, T=T, start=start)
    sink = RingBuffer(shape=x.shape, buffer=start + T + 2)
    enc.s_out.connect(sink.a_in)
    trace = run(enc, start + T + 2, tag, sink.data.get)
    assert not trace[:, :start].any() and not trace[:, start + T:].any()
    step, sign = spikes_of(trace, start, T)
    code = phase.quantize(x, B, T, sigma)
    np.testing.assert_array_equal(step, code.step)
    np.testing.assert_array_equal(sign, code.sign)
    assert (np.abs(trace).sum(1) <= 1).all()  # at most one spike each


def _one_layer(tag, x, w, bias, sigma_out, B, T, unipolar=False):
    """encoder -> Dense -> PhaseNeuron; returns spikes, v, fired, counts."""
    (dense_w,), exp = fixed.quantize_weights(w / sigma_out)
    enc = PhaseEncoder(data=x, B=B, T=T)
    dense = Dense(weights=dense_w, num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                  sign_mode=SignMode.MIXED)
    neuron = PhaseNeuron(shape=(w.shape[0],), B=B, T=T, start=1,
                         weight_exp=exp, bias=bias, scale=sigma_out,
                         unipolar=unipolar)
    sink = RingBuffer(shape=(w.shape[0],), buffer=2 * T + 2)
    enc.s_out.connect(dense.s_in)
    dense.a_out.connect(neuron.a_in)
    neuron.s_out.connect(sink.a_in)
    trace, v, fired, sat, stray = run(
        enc, 2 * T + 2, tag,
        lambda: (sink.data.get(), neuron.v.get(), neuron.fired.get(),
                 neuron.sat_count.get()[0], neuron.stray_count.get()[0]))
    step, sign = spikes_of(trace, 1 + T, T)
    return step, sign, v, fired, sat, stray, dense_w, exp


@pytest.mark.parametrize("unipolar", [False, True])
def test_neuron_fixed_state_for_state(rng, unipolar):
    B, T, sigma = 1.2, 10, 1.5
    x = rng.uniform(-1, 1, 9)
    w = rng.normal(0, 0.5, (6, 9))
    bias = rng.normal(0, 0.2, 6)
    step, sign, v, fired, sat, stray, dense_w, exp = _one_layer(
        "fixed_pt", x, w, bias, sigma, B, T, unipolar)
    enc_step, enc_sign = fixed.first_spike(
        fixed.to_state(x)[0], fixed.threshold_table(B, T), unipolar=False)
    gold = fixed.run_layer([enc_step], [enc_sign], [dense_w], exp,
                           bias / sigma, B, T, unipolar)
    np.testing.assert_array_equal(v.astype(np.int64), gold.v)
    np.testing.assert_array_equal(step, gold.step)
    np.testing.assert_array_equal(sign, gold.sign)
    np.testing.assert_array_equal(fired, gold.step >= 0)
    assert sat == gold.n_saturated == 0 and stray == 0
    if unipolar:
        assert (sign >= 0).all()


@pytest.mark.parametrize("unipolar", [False, True])
def test_neuron_float_matches_closed_form(rng, unipolar):
    B, T, sigma = 1.3, 10, 1.5
    x = rng.uniform(-1, 1, 9)
    w = rng.normal(0, 0.5, (6, 9))
    bias = rng.normal(0, 0.2, 6)
    step, sign, v, fired, sat, stray, dense_w, exp = _one_layer(
        "floating_pt", x, w, bias, sigma, B, T, unipolar)
    w_used = fixed.dequantize_weights(dense_w, exp) * sigma
    a = phase.layer(phase.quantize(x, B, T).value, w_used, bias)
    np.testing.assert_allclose(v * sigma, a, rtol=1e-9, atol=1e-12)
    code = phase.quantize(a, B, T, sigma, unipolar=unipolar)
    np.testing.assert_array_equal(step, code.step)
    np.testing.assert_array_equal(sign, code.sign)
    assert sat == 0 and stray == 0


def _chain(rng, B=1.15, T=16):
    sizes = [10, 14, 9, 4]
    ws = [rng.normal(0, 1 / np.sqrt(n), (m, n))
          for n, m in zip(sizes, sizes[1:])]
    bs = [rng.normal(0, 0.1, m) for m in sizes[1:]]
    x = rng.uniform(-1, 1, sizes[0])
    # sigma = max |activation| of the exact ANN on this sample
    acts, h = [x], x
    for i, (w, b) in enumerate(zip(ws, bs)):
        h = w @ h + b
        if i == 0:
            h = np.maximum(h, 0)
        acts.append(h)
    scales = [np.abs(a).max() for a in acts]
    return PhaseChain(ws, bs, scales, B, T, unipolar=[True, False]), x, acts


@pytest.mark.parametrize("tag", TAGS)
def test_chain_equals_golden(rng, tag):
    chain, x, acts = _chain(rng)
    got = chain.run(x, tag)
    if tag == "fixed_pt":
        want = chain.golden_fixed(x)
        np.testing.assert_array_equal(got.state, want.state)
        np.testing.assert_array_equal(got.output, want.output)
    else:
        want = chain.golden_float(x)
        np.testing.assert_allclose(got.output, want.output, rtol=1e-6,
                                   atol=1e-9)
    for a, b in zip(got.steps, want.steps):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.signs, want.signs):
        np.testing.assert_array_equal(a, b)
    assert got.saturated == want.saturated == 0
    # and the SNN tracks the ANN it was built from
    assert np.argmax(got.output) == np.argmax(acts[-1])


@pytest.mark.parametrize("tag", TAGS)
def test_bias_total_is_exact(tag):
    B, T, sigma = 1.15, 8, 2.0
    bias = np.array([0.3, -1.7, 0.0])
    chain = PhaseChain([np.zeros((3, 2))], [bias], [1.0, sigma], B, T)
    out = chain.run(np.array([0.5, -0.5]), tag).output
    if tag == "floating_pt":
        np.testing.assert_allclose(out, bias, rtol=1e-15)
    else:
        expected = np.round(bias / sigma * 2 ** 16) * sigma / 2 ** 16
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("tag", TAGS)
def test_period_streams_samples(rng, tag):
    """With period > 0 the windows repeat; setting data between runs
    streams samples through the same processes."""
    B, T, period = 1.2, 6, 16
    w = rng.normal(0, 0.5, (3, 4))
    (dense_w,), exp = fixed.quantize_weights(w)
    samples = [rng.uniform(-1, 1, 4) for _ in range(2)]
    enc = PhaseEncoder(data=samples[0], B=B, T=T, period=period)
    dense = Dense(weights=dense_w, num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                  sign_mode=SignMode.MIXED)
    neuron = PhaseNeuron(shape=(3,), B=B, T=T, start=1, weight_exp=exp,
                         period=period)
    sink = RingBuffer(shape=(3,), buffer=period)
    enc.s_out.connect(dense.s_in)
    dense.a_out.connect(neuron.a_in)
    neuron.s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag=tag)
    got = []
    try:
        for i, x in enumerate(samples):
            if i:  # Var.set needs a running runtime
                enc.data.set(x)
            enc.run(condition=RunSteps(num_steps=period), run_cfg=cfg)
            got.append(spikes_of(sink.data.get(), 1 + T, T))
    finally:
        enc.stop()
    for x, (step, sign) in zip(samples, got):
        a = phase.layer(phase.quantize(x, B, T).value,
                        fixed.dequantize_weights(dense_w, exp))
        code = phase.quantize(a, B, T)
        np.testing.assert_array_equal(step, code.step)
        np.testing.assert_array_equal(sign, code.sign)


@pytest.mark.parametrize("tag", TAGS)
def test_input_outside_window_is_counted(tag):
    # fire steps 0 and 2 (levels 1, 2/3, 4/9): arrivals at steps 1 and 3
    enc = PhaseEncoder(data=np.array([0.9, 0.5]), B=1.5, T=4)
    dense = Dense(weights=np.array([[2, 2]]),
                  num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                  sign_mode=SignMode.MIXED)
    late = PhaseNeuron(shape=(1,), B=1.5, T=4, start=5)  # should be 1
    enc.s_out.connect(dense.s_in)
    dense.a_out.connect(late.a_in)
    stray = run(enc, 14, tag, lambda: late.stray_count.get()[0])
    assert stray == 2  # both spikes arrived before the window opened


def test_saturation_is_counted_and_warned():
    # hidden sigma far below the activity: A / sigma exceeds 128
    chain = PhaseChain([np.full((2, 3), 50.0), np.eye(2)], [0.0, 0.0],
                       [1.0, 0.5, 1.0], B=1.3, T=6)
    x = np.array([1.0, 1.0, 1.0])
    with pytest.warns(RuntimeWarning, match="saturation"):
        got = chain.run(x, "fixed_pt")
    want = chain.golden_fixed(x)
    assert got.saturated == want.saturated > 0
    np.testing.assert_array_equal(got.state, want.state)


def test_nan_set_at_runtime_is_counted_without_hang():
    enc = PhaseEncoder(data=np.array([0.9, 0.9]), B=1.2, T=4, period=8)
    sink = RingBuffer(shape=(2,), buffer=8)
    enc.s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    try:
        enc.run(condition=RunSteps(num_steps=8), run_cfg=cfg)
        enc.data.set(np.array([np.nan, 0.9]))
        enc.run(condition=RunSteps(num_steps=8), run_cfg=cfg)
        invalid, trace = enc.invalid_count.get()[0], sink.data.get()
    finally:
        enc.stop()
    assert invalid == 1
    assert not trace[0].any() and trace[1].any()
    assert lava_children() == []


def test_failed_run_leaves_no_process(rng, monkeypatch):
    """A failure while the network is up (here: reading the sinks) still
    stops every Lava process."""
    chain, x, _ = _chain(rng, T=4)

    def broken(self):
        raise RuntimeError("reading failed")

    with monkeypatch.context() as patch:
        patch.setattr(Var, "get", broken)
        with pytest.raises(RuntimeError, match="reading failed"):
            chain.run(x, "fixed_pt")
    assert lava_children() == []
    chain.run(x, "floating_pt")  # and the next run is unaffected
    assert lava_children() == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(B=1.0), "B must be in"),
    (dict(B=2.01), "B must be in"),
    (dict(T=1), "T must be an integer in \\[2, 1024\\]"),
    (dict(start=-1), "start must be"),
    (dict(period=5), "period must be"),
    (dict(scale=np.ones(3)), "scale has shape"),
    (dict(scale=0.0), "scale must be > 0"),
    (dict(bias=[np.nan, 0.0]), "bias contains 1 NaN"),
    (dict(shape=(0,)), "shape must be"),
    (dict(weight_exp=1.5), "weight_exp must be an int"),
    (dict(readout=True, unipolar=True), "readout neurons do not spike"),
])
def test_neuron_rejects_bad_arguments(kwargs, match):
    args = dict(shape=(2,), B=1.2, T=8, start=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PhaseNeuron(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(data=[0.1, np.inf]), "data contains 1 NaN"),
    (dict(B=3), "B must be in"),
    (dict(T=0), "T must be an integer"),
    (dict(scale=[1.0, 2.0, 3.0]), "scale has shape"),
])
def test_encoder_rejects_bad_arguments(kwargs, match):
    args = dict(data=[0.1, 0.2], B=1.2, T=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PhaseEncoder(**args)


def test_chain_rejects_mismatches():
    with pytest.raises(ValueError, match="weights\\[1\\] has 3 inputs"):
        PhaseChain([np.ones((2, 4)), np.ones((1, 3))], [0, 0], [1, 1, 1],
                   1.2, 8)
    chain = PhaseChain([np.ones((2, 4))], [0], [1, 1], 1.2, 8)
    with pytest.raises(ValueError, match="x has shape \\(3,\\)"):
        chain.run(np.ones(3), "fixed_pt")
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        chain.run(np.array([0, 0, np.nan, 0]), "fixed_pt")
    with pytest.raises(ValueError, match="tag must be one of"):
        chain.run(np.ones(4), "float")
    assert lava_children() == []


@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.floats(1.01, 2.0), T=st.integers(4, 64),
       seed=st.integers(0, 2 ** 32 - 1), relu=st.booleans())
def test_property_lava_equals_golden(B, T, seed, relu):
    """Random base, window, weights and inputs: floating_pt equals the float
    closed form, fixed_pt equals the integer golden model exactly."""
    r = np.random.default_rng(seed)
    w1, w2 = r.normal(0, 0.6, (5, 4)), r.normal(0, 0.6, (3, 5))
    b1, b2 = r.normal(0, 0.1, 5), r.normal(0, 0.1, 3)
    x = r.uniform(-1, 1, 4)
    h = w1 @ x + b1
    scales = [1.0, max(np.abs(h).max(), 1e-3), 1.0]
    chain = PhaseChain([w1, w2], [b1, b2], scales, B, T, unipolar=[relu])
    fx, fl = chain.run(x, "fixed_pt"), chain.run(x, "floating_pt")
    gi, gf = chain.golden_fixed(x), chain.golden_float(x)
    np.testing.assert_array_equal(fx.state, gi.state)
    for a, b in zip(fx.steps + fl.steps, gi.steps + gf.steps):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fl.output, gf.output, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tag", TAGS)
def test_spike_delay_shifts_spikes(tag):
    B, T, delay = 1.2, 6, 9
    x = np.array([[0.9, -0.5], [0.3, 0.0]])
    enc = PhaseEncoder(data=x, B=B, T=T)
    late = SpikeDelay(shape=x.shape, delay=delay)
    direct, delayed = (RingBuffer(shape=x.shape, buffer=T + delay + 1)
                       for _ in range(2))
    enc.s_out.connect(direct.a_in)
    enc.s_out.connect(late.s_in)
    late.s_out.connect(delayed.a_in)
    a, b = run(enc, T + delay + 1, tag,
               lambda: (direct.data.get(), delayed.data.get()))
    assert a.any()
    np.testing.assert_array_equal(b[..., delay:], a[..., :-delay])
    assert not b[..., :delay].any()


@pytest.mark.parametrize("delay", [0, -2, 1.5, True])
def test_spike_delay_rejects_bad_delay(delay):
    with pytest.raises(ValueError, match="delay must be an integer >= 1"):
        SpikeDelay(shape=(2,), delay=delay)
