"""The batched torch engine against Lava (every population's spikes and the
logits) and against the integer and float golden models."""
import dataclasses
import types
import warnings

import numpy as np
import pytest
import torch
from lava.magma.core.run_configs import Loihi2SimCfg

import fuzz
from conftest import DECIDED, TAGS, level_gap
from lava_spiked.bundled.digits_vit import (DigitsViT, digits_splits,
                                            load_default)
from lava_spiked.conversion import convert
from lava_spiked.engine import compiling, fixed_mode, ops, products, stages
from lava_spiked.engine import Engine
from lava_spiked.engine.ops import round_half_away, round_to_int
from lava_spiked.engine.products import Product, exact_in_f32, pruned
from lava_spiked.numerics import fixed
from lava_spiked.numerics.phase import threshold_factor
from lava_spiked.plan import Synapse

MODES = {"fixed_pt": "fixed", "floating_pt": "float"}


def _small_net(record=False):
    torch.manual_seed(3)
    model = DigitsViT(dim=8, heads=2, mlp=16).eval()
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (36, 1, 8, 8)).astype(np.float32)
    return convert(model, data[:32], T=10, B=1.3, progress=False,
                   record=record), data[32:]


@pytest.mark.parametrize("tag", TAGS)
def test_engine_equals_lava_layer_by_layer(tag):
    net, x = _small_net(record=True)
    with net:
        lava = net.infer(x[:2], Loihi2SimCfg(select_tag=tag), progress=False)
    res = Engine(net, MODES[tag])(x[:2])
    if tag == "floating_pt":  # numpy sums step by step, torch's products
        _assert_decided(res, net.plan)  # in their own order
    assert set(net.recorded[0]) <= set(res.steps)
    for i in range(2):
        for name, (step, sign) in net.recorded[i].items():
            np.testing.assert_array_equal(res.steps[name][i].numpy(),
                                          step.ravel(), err_msg=name)
            np.testing.assert_array_equal(res.signs[name][i].numpy(),
                                          sign.ravel(), err_msg=name)
    if tag == "fixed_pt":
        np.testing.assert_array_equal(res.logits.numpy(), lava)
    else:
        np.testing.assert_allclose(res.logits.numpy(), lava, rtol=1e-6,
                                   atol=1e-9)


def test_engine_equals_golden_models_on_the_default_model():
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], progress=False)
    x = splits["test"][0][:40]
    fx, fl = Engine(net, "fixed")(x), Engine(net, "float")(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(fx.logits[i].numpy(),
                                      net.golden_fixed(x[i]))
        np.testing.assert_allclose(fl.logits[i].numpy(),
                                   net.golden_float(x[i]), rtol=1e-9,
                                   atol=1e-12)


def test_engine_rejects_bad_input_and_unprovable_networks():
    net, x = _small_net()
    with pytest.raises(ValueError, match="mode must be"):
        Engine(net, "int8")
    eng = Engine(net, "fixed")
    with pytest.raises(ValueError, match="x must be"):
        eng(x[:, :, :4])
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            eng(np.full((1, 1, 8, 8), bad))
        with pytest.raises(ValueError, match="NaN or inf"):  # a tensor
            eng(torch.full((1, 1, 8, 8), 1.0).index_fill_(3, torch.tensor(
                [2]), bad))
    # finite values whose sum overflows are not refused
    assert eng(torch.full((1, 1, 8, 8), 1e308, dtype=torch.float64),
               warn=False).saturated.item() > 0
    op = net.plan.attention[0]
    op.logit_scale = op.logit_scale * 0 + 100.0
    with pytest.raises(ValueError, match="holds logits below 64"):
        Engine(net.plan, "fixed")


def test_engine_counts_saturation_like_lava_and_stays_exact():
    """Inputs far beyond calibration saturate the 24-bit states: the engine
    counts what the fixed_pt models count and still equals Lava."""
    net, x = _small_net()
    x = x[:1] * 400.0  # the encoder alone saturates (|u| > 128 sigma)
    with net:
        with pytest.warns(RuntimeWarning, match="saturation"):
            lava = net.infer(x, Loihi2SimCfg(select_tag="fixed_pt"),
                             progress=False)
        lava_count = sum(net.events()["sat_count"].values())
    res = Engine(net, "fixed")(x)
    assert lava_count > 0
    assert int(res.saturated.sum()) == lava_count
    np.testing.assert_array_equal(res.logits.numpy(), lava)
    assert int(Engine(net, "float")(x).saturated.sum()) == 0


def test_fixed_fire_steps_equal_the_step_by_step_neuron_for_every_state():
    """Exhaustive over the integer membranes where the table matters (and
    beyond): the lookup equals fixed.first_spike, a loop over thresholds."""
    net, _ = _small_net()
    eng = Engine(net, "fixed")
    top = int(eng.arith.top)
    v = np.arange(-top - 3, top + 4)
    thresholds = fixed.threshold_table(net.B, net.T)
    gains = fixed.gain_table(net.B, net.T)
    for kind in ("bipolar", "relu"):
        want_step, want_sign = fixed.first_spike(v, thresholds,
                                                 kind == "relu")
        row = torch.as_tensor(v + top)  # fixed membranes are table rows
        step, sign = eng.arith.decode(row[None], kind)
        np.testing.assert_array_equal(step[0].numpy(), want_step)
        np.testing.assert_array_equal(sign[0].numpy(), want_sign)
        trace = eng.arith.trace(row, kind == "relu")
        np.testing.assert_array_equal(
            trace.numpy(), np.where(want_step >= 0,
                                    want_sign * gains[want_step], 0))


def test_fixed_softmax_traces_equal_its_fire_steps_for_every_input():
    """Exhaustive over the integer WOSS inputs where the table matters (and
    beyond): the trace table gives G at the fire step that the threshold
    count finds, 0 where silent."""
    net, _ = _small_net()
    eng = Engine(net, "fixed").arith
    d = np.arange(eng.woss_low - 5, 1, dtype=np.float64)
    want = eng.gains[eng.woss_steps(torch.as_tensor(d))].numpy()
    row = np.clip(d, eng.woss_low, 0) - eng.woss_low
    np.testing.assert_array_equal(
        eng.woss_trace[torch.as_tensor(row).long()].numpy(), want)
    assert want[0] == 0 and want[-1] == 4096


@pytest.mark.parametrize("mode", ["fixed", "float"])
def test_closed_form_fire_steps_are_exact_at_every_threshold(mode):
    """The estimate-and-correct WOSS fire step, and float mode's bucketed
    neuron step and trace, equal a plain count of the thresholds above x
    (and the gain at that step), on the thresholds themselves, their
    neighbours and random values."""
    net, _ = _small_net()
    eng = Engine(net, mode).arith
    rng = np.random.default_rng(0)
    finders = [(eng.woss_steps, eng.woss_steps.at.numpy()[:-1])]
    if mode == "float":  # c_B B**-m, by hand
        B, T = net.plan.B, net.plan.T
        table = threshold_factor(B) * B ** -np.arange(T, dtype=float)
        finders.append((eng.neurons.steps, table))
    for find, table in finders:
        if mode == "fixed":  # integer membranes
            edges = np.concatenate([table + k for k in (-2, -1, 0, 1, 2)])
            rand = -rng.integers(0, int(-table[-1]) + 10, 2000)
        else:
            edges = np.concatenate([table, np.nextafter(table, np.inf),
                                    np.nextafter(table, -np.inf)])
            rand = rng.uniform(2 * table.min(), 2 * table.max(), 2000)
        x = np.concatenate([edges, rand, [0.0, -np.inf, np.inf, 1e300]])
        if find is eng.woss_steps:
            x = np.minimum(x, 0.0)  # WOSS inputs are never positive
        else:
            x = np.abs(x)  # neurons compare magnitudes
        want = (x[:, None] < table[None, :]).sum(1)
        got = find(torch.as_tensor(x, dtype=torch.float64))
        np.testing.assert_array_equal(got.numpy(), want)
        if find != eng.woss_steps:
            traces = eng.neurons.traces(torch.as_tensor(x))
            np.testing.assert_array_equal(
                traces.numpy(), np.append(B ** -np.arange(T, dtype=float),
                                          0.0)[want])


def test_round_is_half_away_from_zero_like_fixed_round_shift():
    k = np.concatenate([np.arange(-70, 71), [2 ** 46 + 1, -(2 ** 46) - 3]])
    for n in (0, 1, 3, 12):
        got = round_half_away(torch.as_tensor(k * 2.0 ** -n))
        np.testing.assert_array_equal(got.numpy(), fixed.round_shift(k, n))


def _product(syn, w, dtype=torch.float64):
    """One synapse as the engine's product: ``f(x)`` -> its outputs."""
    rows, w, out = pruned(syn, w)
    p = Product(rows, [(w, out)], "cpu", dtype)
    return p, lambda x: p.pick(p(x), 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8])
@pytest.mark.parametrize("structure", ["plain", "gathered", "two rows"])
def test_synapse_equals_the_integer_product(structure, dtype):
    """The engine's token-shared product (with or without the row gather
    and the output pick, with unused entries; a pick that reads two of
    the rows, as a CLS head reads one token), in float64 and as int8
    products, gives exactly the int64 result of the Plan's own
    Synapse.apply and of a hand-built matrix, traces at +-4096
    included."""
    rng = np.random.default_rng(2)
    r, k, c, src_size = 5, 4, 3, 20
    w = rng.integers(-127, 128, (c, k)) * 2
    rows = np.arange(r * k).reshape(r, k)
    out = np.arange(r * c)
    if structure == "gathered":
        rows = rng.permutation(src_size)[:r * k].reshape(r, k)
        rows[1, 2] = -1
        out = rng.permutation(r * c)
        out[3] = -1
    if structure == "two rows":  # channels 2, 0 of row 3, channel 1 of 1
        out = np.array([3 * c + 2, -1, 1 * c + 1, 3 * c])
    syn = Synapse("src", rows, w.astype(np.int32), out)
    x = rng.integers(-4096, 4097, (7, src_size))
    x[0, :3], x[1, :3] = (-4096, 4096, -1), (127, 128, -129)
    dense = np.zeros((len(out), src_size), np.int64)  # by hand
    for o, idx in enumerate(out):
        if idx < 0:
            continue
        row, ch = divmod(idx, c)
        for kk in range(k):
            if rows[row, kk] >= 0:
                dense[o, rows[row, kk]] += w[ch, kk]
    want = x @ dense.T
    np.testing.assert_array_equal(syn.apply(x), want)
    fast, apply = _product(syn, w.astype(float), dtype)
    got = apply(torch.as_tensor(x, dtype=torch.float32))
    assert (got.shape[1], fast.rows is None) == (len(out),
                                                 structure == "plain")
    assert fast.r == (2 if structure == "two rows" else r)  # rows computed
    np.testing.assert_array_equal(got.numpy(), want)


def test_int8_rows_take_each_rows_largest_power_of_two():
    """Hand-checked rows: even mantissas up to 254 halve to int8, a row
    of multiples of 2**-5 keeps 2**-5, a zero row gets 1; mantissas
    beyond int8, or inputs whose int32 sums could overflow, are
    refused."""
    w = np.array([[254.0, -2.0, 0.0], [3 * 2.0 ** -5, 2.0 ** -4, 0.0],
                  [0.0, 0.0, 0.0]])
    mant, scale = products.int8_rows(w)
    np.testing.assert_array_equal(mant, [[127, -1, 0], [3, 2, 0],
                                         [0, 0, 0]])
    np.testing.assert_array_equal(scale, [2.0, 2.0 ** -5, 1.0])
    assert mant.dtype == np.int8
    with pytest.raises(ValueError, match="int8"):
        products.int8_rows(np.array([[255.0, 2.0]]))
    with pytest.raises(ValueError, match="int32"):
        products.int8_rows(np.zeros((1, 2 ** 31 // 127 ** 2 + 1)))


def test_synapses_sharing_a_product_pick_their_own_outputs():
    """Three synapses on the same rows of one source (a transposed pick,
    as a key operand's; a permuted pick with an unused entry; a narrower
    weight) in one product: each member's pick equals its own integer
    product."""
    rng = np.random.default_rng(3)
    r, k = 4, 5
    rows = rng.permutation(30)[:r * k].reshape(r, k)
    transposed = np.arange(r * 3).reshape(r, 3).T.ravel()
    synapses = [Synapse("src", rows, rng.integers(-127, 128, (c, k)) * 2,
                        out) for c, out in (
        (3, transposed), (2, np.append(rng.permutation(r * 2), -1)),
        (1, np.arange(r)))]
    x = rng.integers(-4096, 4097, (6, 30))
    members = [pruned(s, s.weight.astype(float))[1:] for s in synapses]
    shared = Product(rows, members, "cpu")
    y = shared(torch.as_tensor(x, dtype=torch.float64))
    assert y.shape == (6, r * 6)  # one product, all the members' columns
    for i, s in enumerate(synapses):
        np.testing.assert_array_equal(shared.pick(y, i).numpy(), s.apply(x))


@pytest.mark.parametrize("mode", ["fixed", "float"])
def test_products_stop_at_their_column_cap(monkeypatch, mode):
    """Synapses share a product up to PRODUCT_COLUMNS columns (a wider
    member alone): with a cap of 8, every product of the small network
    holds at most 8 columns or one member, and the results are those of
    the default cap's wider products (:func:`_agree`)."""
    net, x = _small_net()
    default = Engine(net, mode)
    assert max(g.exact.w.shape[1]
               for g in default.products.groups.values()) > 8
    wide = default(x, warn=False)
    monkeypatch.setattr(products, "PRODUCT_COLUMNS", 8)
    capped = Engine(net, mode)
    for g in capped.products.groups.values():
        assert g.exact.w.shape[1] <= 8 or len(g.exact.columns) == 1
    got = capped(x, warn=False)
    _agree(wide, got, net.plan)  # float: other widths may round otherwise


def test_float32_products_are_exact_up_to_their_bound():
    """At the largest row sum the float32 proof admits (mantissas at +-127,
    traces at +-4096), the float32 product and its rounding equal the int64
    product and fixed.round_shift; one more unit of row sum is refused."""
    rng = np.random.default_rng(4)
    exp = 8  # Dense unit 2**(e - 11) = 1/8: a rounding half is 4 units
    unit = 2.0 ** (exp - fixed.GAIN_FRAC_BITS)
    k = np.full((3, 33), fixed.WEIGHT_MANT_MAX)
    k[:, -1] = 4095 - 32 * fixed.WEIGHT_MANT_MAX  # row sum |k| = 4095
    k[1] *= -1
    k[2, ::2] *= -1
    w = 2 * k
    bound = 4095 * 4096 * 2.0
    assert exact_in_f32(bound * unit, 2 * unit)
    assert not exact_in_f32((bound + 2 * 4096) * unit, 2 * unit)
    r = 4
    syn = Synapse("src", np.arange(r * 33).reshape(r, 33),
                  w.astype(np.int32), np.arange(r * 3))
    g = 4096
    x = np.concatenate([np.full((1, r * 33), g), np.full((1, r * 33), -g),
                        np.sign(rng.normal(size=(6, r * 33))) * g,
                        rng.integers(-g, g + 1, (8, r * 33))])
    x = np.concatenate([x, x[:, ::-1]])
    want = syn.apply(x)  # int64 accumulator
    assert np.abs(want).max() == 4095 * 4096 * 2
    got = _product(syn, w * unit, torch.float32)[1](
        torch.as_tensor(x, dtype=torch.float32))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.double().numpy(), want * unit)
    # the engine's rounding of that accumulator, and of every tie near it
    acc = np.concatenate([want.ravel(), 2 * np.arange(-4100, 4100) + 1,
                          [bound - 4, -bound + 4, bound - 3]]).astype(
        np.int64)
    np.testing.assert_array_equal(
        round_to_int(torch.as_tensor(acc * unit, dtype=torch.float32))
        .numpy(), fixed.round_shift(acc, fixed.GAIN_FRAC_BITS - exp))


def _extreme_net():
    """The small network with most mantissas at +-254 (|k| = 127): every
    synapse still proves its float32 product exact."""
    net, x = _small_net()
    rng = np.random.default_rng(5)
    for layer in net.plan.layers[1:]:
        for s in layer.synapses:
            extreme = rng.random(s.weight.shape) < 0.7
            s.weight = np.where(
                extreme, np.where(rng.random(s.weight.shape) < 0.5, -254,
                                  254), s.weight).astype(np.int32)
    return net, x


@pytest.mark.parametrize("int8", [True, False])
def test_fixed_float32_path_equals_exact_path_and_golden(monkeypatch, int8):
    """On weights at the mantissa extremes, with and without saturation,
    the float32 path (taken: asserted) gives the bits of the exact path
    taken where float32 is not allowed (int8 products on a CPU with int8
    instructions, float64 on one without: both asserted) and the integer
    golden model's logits."""
    net, x = _extreme_net()
    rng = np.random.default_rng(6)
    x = np.concatenate([x, rng.uniform(-3, 3, (4, 1, 8, 8)), x[:1] * 400])
    fast = Engine(net, "fixed")
    dense = [k for k, a in fast.layers.items() if hasattr(a, "synapses")]
    assert all(g.f32 is not None for g in fast.products.groups.values())
    assert any(fast.layers[k].sum_f32 for k in dense)
    got = fast(x)
    for k in dense:  # float32 products summed in float64
        fast.layers[k] = dataclasses.replace(fast.layers[k], sum_f32=False)
    mixed = fast(x)
    monkeypatch.setattr(fixed_mode, "f32_products_exact",
                        lambda device: False)
    monkeypatch.setattr(products, "int8_instructions", lambda: int8)
    exact = Engine(net, "fixed")
    assert all(g.exact.w.dtype == (torch.int8 if int8 else torch.float64)
               for g in exact.products.groups.values())
    want = exact(x)
    np.testing.assert_array_equal(got.logits.numpy(), want.logits.numpy())
    np.testing.assert_array_equal(mixed.logits.numpy(), want.logits.numpy())
    np.testing.assert_array_equal(got.saturated.numpy(),
                                  want.saturated.numpy())
    assert int(got.saturated[-1]) > 0
    for name in want.steps:
        np.testing.assert_array_equal(got.steps[name].numpy(),
                                      want.steps[name].numpy(), name)
    for i in range(4):
        np.testing.assert_array_equal(got.logits[i].numpy(),
                                      net.golden_fixed(x[i]))


def test_float32_products_only_in_ieee_precision():
    """TF32 or bfloat16 matrix products (a backend setting) would break the
    exactness proof: the engine then runs every product in float64."""
    cpu = torch.device("cpu")
    assert products.f32_products_exact(cpu)
    before = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        assert not products.f32_products_exact(cpu)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before


@pytest.mark.parametrize("mode", ["fixed", "float"])
def test_unrecorded_run_keeps_logits_and_counts(mode):
    """record=False gives the same logits and saturation counts and no
    spikes; each of q, k and v reads its own channels of the fused
    in-projection (capture keeps only those), in one product for all
    three."""
    net, x = _small_net()
    x = np.concatenate([x, x[:1] * 400])
    eng = Engine(net, mode)
    full, bare = eng(x), eng(x, record=False)
    np.testing.assert_array_equal(bare.logits.numpy(), full.logits.numpy())
    np.testing.assert_array_equal(bare.saturated.numpy(),
                                  full.saturated.numpy())
    with pytest.raises(ValueError, match="record=True"):
        bare.steps
    op = net.plan.attention[0]
    (key, _), = eng.layers[op.x].synapses
    s = net.plan[op.x].synapses[0]
    assert len(s.weight) == 8  # of the in-projection's 24 (dim 8)
    assert len(pruned(s, s.weight)[1]) == len(s.weight)
    assert [eng.layers[k].synapses[0][0] for k in (op.y, op.v)] == \
        [key, key]


def test_keep_freed_memory_takes_effect_in_a_fresh_process():
    """glibc's mallopt is reachable here (Linux CI), in a process of its
    own since the setting is process-wide; results are unchanged."""
    import subprocess
    import sys
    script = ("import numpy as np\n"
              "from lava_spiked.engine import Engine, keep_freed_memory\n"
              "from lava_spiked.bundled.digits_vit import (digits_splits,"
              " load_default)\n"
              "from lava_spiked import convert\n"
              "s = digits_splits()\n"
              "net = convert(load_default(), s['calibration'][0][:32],"
              " progress=False)\n"
              "x = s['test'][0][:16]\n"
              "before = Engine(net, 'fixed')(x, warn=False).logits\n"
              "assert keep_freed_memory()\n"
              "after = Engine(net, 'fixed')(x, warn=False).logits\n"
              "assert (before == after).all()\n")
    done = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _same_results(a, b):
    np.testing.assert_array_equal(a.logits.numpy(), b.logits.numpy())
    _same_counts(a, b)


def _same_counts(a, b):
    """The same saturation and clipping counts."""
    np.testing.assert_array_equal(a.saturated.numpy(), b.saturated.numpy())
    assert a.clipped.keys() == b.clipped.keys()
    for name in a.clipped:
        np.testing.assert_array_equal(a.clipped[name].numpy(),
                                      b.clipped[name].numpy(), err_msg=name)


def _staged_net(width: int = 16, classes: int = 3):
    """A converted Linear-LayerNorm-GELU-Linear model and its test inputs,
    two of them large enough to clip."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, width), torch.nn.LayerNorm(width),
        torch.nn.GELU(), torch.nn.Linear(width, classes)).eval()
    data = torch.randn(40, 6)
    net = convert(model, data[:32], progress=False)
    x = data[32:].numpy()
    return net, np.concatenate([x, x[:2] * 30])


def test_stages_run_a_few_samples_at_a_time(monkeypatch):
    """Eager, the LayerNorm and GELU stages run on chunks of samples: one
    sample per chunk gives what the whole batch at once gives (logits,
    counts, spikes), in both modes."""
    net, x = _staged_net()
    for mode in ("fixed", "float"):
        whole = Engine(net, mode)(x, warn=False)  # 10 x 16: one chunk
        monkeypatch.setattr(stages, "STAGE_CHUNK", 1)
        chunked = Engine(net, mode)(x, warn=False)
        monkeypatch.undo()
        _same_results(whole, chunked)
        assert sum(int(c.sum()) for c in whole.clipped.values()) > 0
        _same_spikes(whole, chunked)


def test_compile_options():
    """Scalar loop remainders; 256-bit vectors on an AVX-512 CPU; of the
    Dynamo guards on the engine itself only the tensor guards stay (its
    Python state is fixed when it is built), every guard on the arguments
    and globals stays."""
    cpu = compiling.inductor_options(torch.device("cpu"))
    assert cpu["cpp.enable_loop_tail_vec"] is False
    assert cpu["assert_indirect_indexing"] is False
    assert ("cpp.simdlen" in cpu) == \
        torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert "cpp.simdlen" not in compiling.inductor_options(
        torch.device("cuda"))
    entries = [("L['self'].layers['a']['bias']", "TENSOR_MATCH", True),
               ("L['self'].reach['a']", "CONSTANT_MATCH", False),
               ("L['self'].plan.layers", "SEQUENCE_LENGTH", False),
               ("L['record']", "CONSTANT_MATCH", True),
               ("L['x']", "TENSOR_MATCH", True),
               ("G['torch'].backends", "ID_MATCH", True)]
    keep = compiling.tensor_guards_of_self([
        types.SimpleNamespace(name=name, guard_type=kind)
        for name, kind, _ in entries])
    assert keep == [k for _, _, k in entries]


def test_compiled_lookups_skip_index_checks():
    """Compiled with the engine's options, a table lookup of clamped
    indices is a plain gather: no bounds check and no wrap-around of
    negative indices in the generated C++ (both are in index_select's
    code under the default options), and the same values."""
    from torch._inductor.utils import run_and_get_code
    table = torch.arange(1000, dtype=torch.float32) / 7
    index = torch.arange(-5, 1195, dtype=torch.int32)
    lookup = torch.compile(
        lambda t, i: ops.lookup(t, i.clamp(0, 999)) * 2,
        options=compiling.inductor_options(torch.device("cpu")))
    got, (code,) = run_and_get_code(lookup, table, index)
    torch.testing.assert_close(got, table[index.clamp(0, 999).long()] * 2,
                               rtol=0, atol=0)
    assert "out of bounds" not in code and "blendv" not in code
    _, (default,) = run_and_get_code(torch.compile(
        lambda t, i: t.index_select(0, i.clamp(0, 999)) * 2), table, index)
    assert "out of bounds" in default and "blendv" in default


@pytest.mark.slow
def test_compiled_engines_do_not_share_a_recompile_budget(monkeypatch):
    """With Dynamo allowed one graph per code object, a fixed and a float
    engine of one network both run compiled (each compiles its own copy
    of the code), not the second one eagerly; a network with LayerNorm
    and GELU stages is one graph too (the stages are torch ops inside
    it)."""
    from torch._dynamo.utils import counters
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    net, x = _small_net()
    counters.clear()
    for mode in ("fixed", "float"):
        Engine(net, mode, compile=True)(x, warn=False)
    assert counters["stats"]["unique_graphs"] == 2
    assert counters["frames"]["ok"] == 2  # both frames compiled
    staged, x = _staged_net()
    counters.clear()
    Engine(staged, "fixed", compile=True)(x, warn=False)
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["frames"]["ok"] == 1


@pytest.mark.slow
def test_compiled_engine_equals_eager():
    """compile=True (TorchInductor) against the eager engine: the default
    model at two batch sizes (the second compiles with dynamic shapes),
    also under inference_mode, and a model with LayerNorm and GELU stages
    (in the compiled graph), 384 wide with a 2-class
    readout. Fixed mode: the same logits, counts and spikes, bit for bit.
    Float mode: the same spikes and counts and logits within the readout's
    rounding bound (:func:`_agree`): compiled code sums in
    its own order (Inductor turns the readout's product plus bias into one
    addmm, which MKL's AVX2 kernels round differently from a product and
    an addition), so which last bits agree is the CPU's to decide."""
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], progress=False)
    x = splits["test"][0]
    x = np.concatenate([x[:39], x[:1] * 400])  # one sample saturates
    for mode in ("fixed", "float"):
        eager, compiled = Engine(net, mode), Engine(net, mode, compile=True)
        for batch in (x, x[:17]):
            a, b = eager(batch, warn=False), compiled(batch, warn=False)
            assert mode == "float" or len(batch) < len(x) or \
                a.saturated.sum() > 0
            _agree(a, b, net.plan)
        with torch.inference_mode():  # x[:9]: membranes decided above
            _agree(*(e(x[:9], record=False, warn=False)
                     for e in (eager, compiled)), net.plan)
    staged, x = _staged_net(384, 2)
    for mode in ("fixed", "float"):  # compiles under inference_mode, as
        # a user's evaluation loop would (numpy traced there broke Dynamo)
        with torch.inference_mode():
            _agree(*(Engine(staged, mode, compile=c)(x, warn=False)
                     for c in (False, True)), staged.plan)


@pytest.mark.slow
def test_auto_compiles_once_eager_calls_took_the_expected_compile(
        monkeypatch):
    """compile='auto' (the default): calls run eagerly until the eager
    calls of one batch size have taken compiler.estimate_s, then that size
    runs compiled (one graph) and other sizes stay eager; every call gives
    what the eager engine gives. An engine used for a few small batches
    never compiles; nor does one where the OS has less than twice the
    memory a compile may keep: it warns once, at the caller's line."""
    from torch._dynamo.utils import counters
    net, x = _small_net()
    few = Engine(net, "fixed")
    assert few.compiler.compile == "auto" and few.compiler.estimate_s > 1
    for _ in range(3):
        few(x, warn=False)
    assert few.compiler.batch_sizes == set()
    eager = Engine(net, "fixed", compile=False)
    auto = Engine(net, "fixed")
    auto.compiler.estimate_s = 1e-9  # one eager call takes longer
    counters.clear()
    for batch, compiled in [(x, set()), (x, {len(x)}), (x[:3], {len(x)}),
                            (x, {len(x)})]:
        _agree(eager(batch, warn=False), auto(batch, warn=False), net.plan)
        assert auto.compiler.batch_sizes == compiled
    assert counters["stats"]["unique_graphs"] == 1
    with pytest.raises(ValueError, match="compile must be True, False or "
                       "'auto', got 'yes'"):
        Engine(net, "fixed", compile="yes")
    short = Engine(net, "fixed")
    short.compiler.estimate_s = 1e-9
    monkeypatch.setattr(compiling, "available_memory",
                        lambda: short.compiler.estimate_bytes)
    short(x, warn=False)
    with pytest.warns(RuntimeWarning, match=r"keeps running eagerly: "
                      r"compiling this network may take up to about "
                      r"[0-9.]+ GB and [0-9.]+ GB are available") as caught:
        short(x, warn=False)
    assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short(x, warn=False)
    assert short.compiler.batch_sizes == set()


@pytest.mark.slow
def test_compiled_engine_equals_eager_with_masks_and_stages():
    """A generated transformer with LayerNorm, GELU, an additive padding
    mask and a mean over the real tokens, samples of every length:
    compiled and eager engines agree (fixed: bit for bit)."""
    arch = dataclasses.replace(
        fuzz.from_seed(3), attention="hand", norm="layer", order="pre",
        activation="gelu", pooling="mean", causal="none",
        padding="additive", unsupported="none", depth=2, tokens=6)
    g = torch.Generator().manual_seed(arch.seed)
    x = torch.randn(30, arch.tokens, arch.features, generator=g).numpy()
    real = (np.arange(arch.tokens)[None] <
            np.arange(30)[:, None] % arch.tokens + 1).astype(np.int64)
    net = convert(fuzz.build(arch), x[:24], attention_mask=real[:24],
                  T=arch.T, B=arch.B, progress=False)
    assert any(layer.stage is not None for layer in net.plan.layers)
    for mode in ("fixed", "float"):
        _agree(*(Engine(net, mode, compile=c)(x[24:], warn=False,
                                              attention_mask=real[24:])
                 for c in (False, True)), net.plan)


def _assert_decided(res, plan):
    """Every float membrane that ``res`` recorded lies more than DECIDED
    from each level it is compared with (:func:`conftest.level_gap`)."""
    assert level_gap(res, plan) > DECIDED


def _readout_rounding(plan) -> float:
    """How far apart two orders of summing the float readout can put a
    logit, given the same spikes: ``2 n 2**-53`` times the largest sum of
    its terms' magnitudes (traces at most 1, so a row's absolute weight
    sum plus the bias), in logit units."""
    out = plan[plan.output]
    w = [s.weight * 2.0 ** (out.weight_exp + s.shift[:, None] -
                            fixed.STATE_FRAC_BITS) for s in out.synapses]
    n = sum(x.shape[1] for x in w) + 1
    terms = sum(np.abs(x).sum(1).max() for x in w) + np.abs(out.bias).max()
    return 2 * n * 2.0 ** -53 * terms * np.abs(out.scale).max()


def _same_spikes(a, b):
    for name, step in a.steps.items():
        np.testing.assert_array_equal(step.numpy(), b.steps[name].numpy(),
                                      err_msg=name)
        np.testing.assert_array_equal(a.signs[name].numpy(),
                                      b.signs[name].numpy(), err_msg=name)


def _agree(a, b, plan):
    """What two evaluations of one batch that sum in different orders (the
    same mode) share on any CPU. Fixed: everything, bit for bit. Float:
    with every membrane decided (:func:`_assert_decided`, checked on the
    first result where it recorded them), the same spikes, saturation and
    clip counts, and logits within :func:`_readout_rounding`."""
    fixed_mode = a._engine.mode == "fixed"
    if a._membranes is not None:
        if not fixed_mode:
            _assert_decided(a, plan)
        _same_spikes(a, b)
    if fixed_mode:
        _same_results(a, b)
        return
    _same_counts(a, b)
    np.testing.assert_allclose(b.logits.numpy(), a.logits.numpy(),
                               rtol=2.0 ** -52, atol=_readout_rounding(plan))
