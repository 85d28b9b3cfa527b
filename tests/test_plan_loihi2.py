"""The Loihi 2 rules (:mod:`lava_spiked.plan.loihi2`): the conformance
check, and the 24-bit lowering of ``target='loihi2'``."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked import convert, export
from lava_spiked.engine import Engine
from test_export import _assert_same_plan


def test_loihi2_check_names_what_does_not_fit(bundled, tmp_path):
    from lava_spiked.plan import loihi2
    net, _ = bundled
    found = loihi2.check(net)
    text = loihi2.report(net)
    # the 13-bit step-0 gain, the PhaseNeuron's window accumulator, the
    # neuron-side exponents (7..12), the int32 product currents; not the
    # long residual delay, which Lava chains in links of at most 62 steps
    assert any(v.where == "gain table" and v.value == 4096 for v in found)
    assert any("window accumulator" in v.quantity for v in found)
    exps = {v.value for v in found if "exponent" in v.quantity}
    assert exps and min(exps) >= 8 and max(exps) == 12
    assert all(not v.certain for v in found if "exponent" in v.quantity)
    assert not any("delay" in v.quantity.lower() for v in found)
    assert "spike x spike product current" in text
    with pytest.raises(ValueError, match="does not fit Loihi 2"):
        export.save(net, tmp_path / "strict.h5", strict=True)
    assert not (tmp_path / "strict.h5").exists()


def _largest_current(layer):
    """Every source at step 0 with its weights' signs: the largest row
    sum of |2k * 2**shift| over all synapses, summed per synapse."""
    return sum(max(sum(abs(int(w)) << int(sh) for w in row)
                   for row, sh in zip(syn.weight, syn.shift))
               for syn in layer.synapses)


@pytest.mark.parametrize("which", ["bundled", "encoder_net"])
def test_loihi2_target_sums_windows_in_24_bits(which, request, tmp_path):
    """target='loihi2': every synaptic layer gets the most gain bits
    (at most 11) with which no window can leave 24 bits, and so does every
    attention product; the check no longer names accumulators, gains or
    product currents (the bundled model fits entirely and saves with
    strict=True); the engine equals the integer golden model, the file
    keeps the bits, and the fixed_pt Lava run equals the engine."""
    from lava.magma.core.run_configs import Loihi2SimCfg

    from lava_spiked.plan import loihi2
    net, x = request.getfixturevalue(which)
    con = net.recode(target="loihi2")
    assert con.plan.target == "loihi2" and net.plan.target == "lava"
    for layer in con.plan.layers:
        if not layer.synapses:
            continue
        c = _largest_current(layer)
        assert layer.acc_bits == 24 and 1 <= layer.gain_bits <= 11
        assert c << layer.gain_bits < 1 << 23
        assert layer.gain_bits == 11 or c << (layer.gain_bits + 1) >= 1 << 23
    for op in con.plan.attention:
        k, m = con.plan[op.x].shape[-1], con.plan[op.v].shape[-2]
        g = con.plan[op.out].gain_bits
        assert int(abs(op.qk).max()) * k << (2 * op.qk_bits) < 1 << 23
        assert int(abs(op.av).max()) * m << (op.v_bits + g) < 1 << 23
        assert (op.acc_bits, op.woss_bits) == (24, 11)
    found = loihi2.check(con)
    assert not any(word in v.quantity for v in found for word in (
        "accumulator", "neuron", "gain", "product current"))
    if which == "bundled":  # no LayerNorm, fan-ins within 16 bits
        assert found == []
        export.save(con, tmp_path / "strict.h5", strict=True)
    got = Engine(con, "fixed")(x[:4]).logits.numpy()
    for row, sample in zip(got, x[:4]):
        np.testing.assert_array_equal(row, con.golden_fixed(sample))
    assert not np.array_equal(got, Engine(net, "fixed")(x[:4]).logits
                              .numpy())  # the gains did change
    export.save(con, tmp_path / "con.h5")
    loaded = export.load(tmp_path / "con.h5")
    _assert_same_plan(con.plan, loaded.plan)
    if which == "bundled":
        with loaded:
            out = loaded.infer(x[:2], Loihi2SimCfg(select_tag="fixed_pt"),
                               progress=False)
        np.testing.assert_array_equal(out, got[:2])


def test_loihi2_target_refuses_a_current_beyond_23_bits(bundled):
    """A layer whose one-step current alone exceeds 2**22 cannot be made
    to fit with gains of 1 bit: the error names it."""
    from lava_spiked.plan import loihi2
    net, _ = bundled
    plan = net.plan
    i = next(i for i, layer in enumerate(plan.layers) if layer.synapses)
    layer = plan.layers[i]
    # every weight at its largest mantissa and shift: a spike brings
    # 254 << 7, and enough copies of the synapse pass 2**22 a step
    syn = dataclasses.replace(
        layer.synapses[0], weight=np.full_like(layer.synapses[0].weight, 254),
        shift=np.full_like(layer.synapses[0].shift, 7))
    one = loihi2.current_bound(dataclasses.replace(layer, synapses=[syn]))
    layers = list(plan.layers)
    layers[i] = dataclasses.replace(layer,
                                    synapses=[syn] * ((1 << 22) // one + 1))
    with pytest.raises(ValueError, match=f"{layer.name}: a step's synaptic"):
        loihi2.conform(dataclasses.replace(plan, layers=layers))


def test_fan_in_split_hand_values():
    """A connection's per-step current: each channel's |weight| * 2**shift
    summed in input order, a new part where 450 would be passed; a weight
    above the limit on its own."""
    from lava_spiked.plan import Synapse
    syn = Synapse("x", rows=np.arange(4)[None], out=np.arange(2),
                  weight=np.array([[200, 200, 200, -200],
                                   [10, 10, 10, 10]], np.int32),
                  shift=np.array([0, 0]))
    parts = syn.split(450)
    assert [e for e, _ in parts] == [0, 0]
    np.testing.assert_array_equal(parts[0][1].weight,
                                  [[200, 200, 0, 0], [10, 10, 10, 10]])
    np.testing.assert_array_equal(parts[1][1].weight,
                                  [[0, 0, 200, -200], [0, 0, 0, 0]])
    assert len(syn.split()) == 1
    wide = dataclasses.replace(syn, shift=np.array([1, 0]))
    parts = wide.split(450)  # channel 0 at 400 a weight: one part each
    assert [e for e, _ in parts] == [0, 1, 1, 1, 1]
    np.testing.assert_array_equal(parts[0][1].weight[1], [10, 10, 10, 10])
    np.testing.assert_array_equal(
        [p.weight[0] for _, p in parts[1:]],
        [[200, 0, 0, 0], [0, 200, 0, 0], [0, 0, 200, 0], [0, 0, 0, -200]])
    big = dataclasses.replace(syn, shift=np.array([2, 0]))
    assert len(big.split(450)) == 1 + 4  # 800 each: alone, still too big


def test_loihi2_target_caps_synapse_shifts(bundled):
    """Shifts 9 and 0 in one synapse, 3 in another: conform raises the
    neuron's exponent by 2, leaves the shift-9 channel's mantissas (now
    shift 7) and the shift-3 synapse's (now 1), and rounds the shift-0
    channel's k = 3, -5, 127 by 2 bits: 1, -1, 32 (mantissas 2k)."""
    from lava_spiked.plan import loihi2
    from lava_spiked.plan import Synapse
    net, _ = bundled
    layer = next(layer for layer in net.plan.layers if layer.synapses)
    a = Synapse("x", rows=np.arange(3)[None], out=np.arange(2),
                weight=np.array([[254, 2, -4], [6, -10, 254]], np.int32),
                shift=np.array([9, 0]))
    b = Synapse("y", rows=np.arange(3)[None], out=np.arange(2),
                weight=np.array([[2, 4, 6], [8, 10, -12]], np.int32),
                shift=np.array([3, 3]))
    capped = loihi2._cap_shifts(dataclasses.replace(
        layer, synapses=[a, b], weight_exp=-5))
    assert capped.weight_exp == -3
    np.testing.assert_array_equal(capped.synapses[0].shift, [7, 0])
    np.testing.assert_array_equal(capped.synapses[0].weight,
                                  [[254, 2, -4], [2, -2, 64]])
    np.testing.assert_array_equal(capped.synapses[1].shift, [1, 1])
    np.testing.assert_array_equal(capped.synapses[1].weight, b.weight)
    assert loihi2._cap_shifts(capped) is capped


def test_loihi2_target_splits_a_wide_fan_in(tmp_path):
    """600 inputs into one neuron: the default lowering's one connection
    can carry 34,430 a step (beyond Dense's 16 bits); target='loihi2'
    builds it as several Sparse connections, each within 16 bits, whose
    sum is the synapse; the plan then fits, and Lava fixed_pt equals the
    engine bit for bit."""
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.sparse.process import Sparse

    from lava_spiked.plan import loihi2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(600, 8), nn.ReLU(), nn.Linear(8, 3))
    data = torch.randn(34, 600)
    net = convert(model.eval(), data[:32], progress=False)
    con = net.recode(target="loihi2")
    wide = [v for v in loihi2.check(net)
            if v.quantity == "per-step synaptic current of one connection"]
    assert [v.where for v in wide] == ["1"] and wide[0].value > 32767
    assert loihi2.check(con) == []
    syn = con.plan["1"].synapses[0]
    parts = loihi2.connections(con.plan, syn)
    assert len(parts) >= 2
    assert all(_largest_current(dataclasses.replace(
        con.plan["1"], synapses=[p])) <= 32767 for _, p in parts)
    np.testing.assert_array_equal(
        sum(p.scaled() for _, p in parts), syn.scaled())
    x = data[32:].numpy()
    with con:
        out = con.infer(x, Loihi2SimCfg(select_tag="fixed_pt"),
                        progress=False)
        into = [p for k, p in con.processes.items()
                if k.split("#")[0] == f"{syn.src}->1"]
        assert len(into) == len(parts)
        assert all(isinstance(p, Sparse) for p in into)
    np.testing.assert_array_equal(out, Engine(con, "fixed")(x).logits
                                  .numpy())
