"""Export: a Plan through an HDF5 file and back, bit for bit, without torch;
bad files refused with the key named."""
import dataclasses
import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked import convert, export
from lava_spiked.engine import Engine
from lava_spiked.bundled.digits_vit import digits_splits, load_default


def _assert_same_plan(a, b):
    """Every field of two Plans equal, arrays element for element and with
    the same dtype kind."""
    def same(x, y, where):
        if dataclasses.is_dataclass(x):
            for field in dataclasses.fields(x):
                same(getattr(x, field.name), getattr(y, field.name),
                     f"{where}.{field.name}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (p, q) in enumerate(zip(x, y)):
                same(p, q, f"{where}[{i}]")
        elif isinstance(x, np.ndarray):
            assert x.dtype.kind == np.asarray(y).dtype.kind, where
            np.testing.assert_array_equal(x, y, err_msg=where)
        else:
            assert x == y, where
    same(a, b, "plan")


@pytest.fixture(scope="module")
def bundled():
    splits = digits_splits()
    return convert(load_default(), splits["calibration"][0],
                   progress=False), splits["test"][0][:8]


@pytest.fixture(scope="module")
def encoder_net():
    """Another shape: nn.TransformerEncoderLayer (its MHA) with BatchNorm
    in place of LayerNorm, ReLU, mean pooling."""
    class Norm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.bn = nn.BatchNorm1d(c)

        def forward(self, x):
            return self.bn(x.transpose(1, 2)).transpose(1, 2)

    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(12, 3, 24, dropout=0.0,
                                       batch_first=True)
    layer.norm1, layer.norm2 = Norm(12), Norm(12)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(5 * 12, 4))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 5, 12))
    data = torch.randn(24, 5, 12)
    return convert(model.eval(), data[:16], T=16, B=1.2,
                   progress=False), data[16:].numpy()


def test_round_trip_is_exact(bundled, encoder_net, tmp_path):
    for i, (net, x) in enumerate((bundled, encoder_net)):
        path = tmp_path / f"net{i}.h5"
        export.save(net, path)
        loaded = export.load(path)
        _assert_same_plan(net.plan, loaded.plan)
        for mode in ("fixed", "float"):
            np.testing.assert_array_equal(Engine(loaded, mode)(x).logits,
                                          Engine(net, mode)(x).logits)
        np.testing.assert_array_equal(loaded.golden_fixed(x[0]),
                                      net.golden_fixed(x[0]))
        # written again: the same content, key by key
        export.save(loaded, tmp_path / "again.h5")
        _assert_same_plan(export.load(tmp_path / "again.h5").plan,
                          net.plan)
        with pytest.raises(ValueError, match="no captured model"):
            loaded.ann(x)


def test_token_shared_weights_are_stored_once(bundled, tmp_path):
    net, _ = bundled
    export.save(net, tmp_path / "net.h5")
    with h5py.File(tmp_path / "net.h5") as f:
        g = next(f["layers"][k] for k in f["layers"]
                 if f["layers"][k].attrs["name"] == "blocks.0.act")
        # the model's own (C, K) weight, once, not once per token
        fc1 = tuple(load_default().blocks[0].fc1.weight.shape)
        assert g["synapses/0000/weight"].shape == fc1
        assert g["synapses/0000/rows"].shape == (17, fc1[1])  # tokens x K


@pytest.mark.slow
def test_loaded_file_runs_in_lava_without_torch(bundled, tmp_path):
    """A fresh interpreter where importing torch fails loads the file and
    runs it in Lava under fixed_pt, bit for bit with the original."""
    net, x = bundled
    export.save(net, tmp_path / "net.h5")
    np.save(tmp_path / "x.npy", x[:2])
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None   # any import of torch raises
        import numpy as np
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava_spiked import export
        net = export.load({str(tmp_path / "net.h5")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        with net:
            out = net.infer(x, Loihi2SimCfg(select_tag="fixed_pt"),
                            progress=False)
        bad = [m for m in sys.modules if m.startswith(("lava.lib", "cv2"))]
        print(json.dumps(dict(out=out.tolist(), bad=bad)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res["bad"] == []  # neither lava-dl nor OpenCV
    for got, sample in zip(res["out"], x[:2]):
        np.testing.assert_array_equal(got, net.golden_fixed(sample))


def test_version_2_file_has_one_exponent_per_synapse(bundled, tmp_path):
    """A version 2 file holds one ``shift`` attr per synapse: every output
    channel of that synapse gets it."""
    net, _ = bundled
    path = tmp_path / "v2.h5"
    export.save(net, path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 2
        for layer in f["layers"].values():
            for syn in layer["synapses"].values():
                del syn["shift"]
                syn.attrs["shift"] = 3
    back = export.load(path)
    for layer in back.plan.layers:
        for syn in layer.synapses:
            assert syn.shift.tolist() == [3] * len(syn.weight)


def _broken(path, edit):
    """``edit`` a saved file, then checksum it anew: what is left to refuse
    is the content, as from a writer with a bug."""
    with h5py.File(path, "a") as f:
        edit(f)
        export._sign(f)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__setitem__("version", 99), "format version 99"),
    (lambda f: f.attrs.__setitem__("format", "netx"), "not a lava-spiked"),
    (lambda f: f.attrs.__delitem__("B"), "missing attribute /:B"),
    (lambda f: f.__delitem__("layers/0001/scale"),
     "missing dataset /layers/0001/scale"),
    (lambda f: (f.__delitem__("layers/0002/synapses/0000/weight"),
                f.create_dataset("layers/0002/synapses/0000/weight",
                                 data=np.ones((2, 8)))),
     "weight has dtype float64"),
    (lambda f: (f.__delitem__("layers/0001/bias"),
                f.create_dataset("layers/0001/bias", data=np.ones(3))),
     "bias has shape \\(3,\\)"),
    (lambda f: f["layers/0002/synapses/0000"].attrs.__setitem__("src",
                                                                "nowhere"),
     "source 'nowhere' is not an earlier layer"),
    (lambda f: f.attrs.__setitem__("T", 0), "T must be an integer"),
    (lambda f: f["layers/0002/synapses/0000/shift"].__setitem__(0, -1),
     "shift: -1 < 0"),
    (lambda f: (f.__delitem__("layers/0002/synapses/0000/shift"),
                f.create_dataset("layers/0002/synapses/0000/shift",
                                 data=np.zeros(1, np.int64))),
     "shift has shape \\(1,\\)"),
])
def test_bad_files_name_the_problem(bundled, tmp_path, edit, match):
    net, _ = bundled
    path = tmp_path / "net.h5"
    export.save(net, path)
    _broken(path, edit)
    with pytest.raises(export.ExportError, match=match):
        export.load(path)


def test_truncated_or_foreign_file(bundled, tmp_path):
    net, _ = bundled
    path = tmp_path / "net.h5"
    export.save(net, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(export.ExportError, match="not a readable HDF5"):
        export.load(path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(export.ExportError, match="not a readable HDF5"):
        export.load(tmp_path / "notes.txt")


def test_resources_count_what_lava_stores(bundled):
    from lava_spiked.lava_backend.build import sparse_weights
    net, _ = bundled
    plan = net.plan
    report = export.resources(net)
    stored = sum(sparse_weights(syn, layer.size, plan[syn.src].size).nnz
                 for layer in plan.layers for syn in layer.synapses)
    assert report.synapses == stored
    op, = plan.attention
    # the 204-step residual delay of the 8x8 input relays at 62, 124, 186
    assert plan.delay("input", "blocks.0.add") == 204
    assert report.neurons == sum(ly.size for ly in plan.layers) + \
        2 * op.qk.size + 3 * 64
    assert report.max_spikes == report.neurons - 10  # the readout reports
    assert report.steps == plan.num_steps == 369
    assert report.chips == pytest.approx(report.neurons / 1e6)
    assert "| Loihi 2 chips (estimate) |" in str(report)


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    export.main(["bundled", str(out), "--T", "24"])
    assert export.load(out).plan.T == 24
    export.main(["--report", str(out)])
    assert "| steps per sample |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        export.main(["--report", str(tmp_path / "missing.h5")])
    assert "not a readable HDF5 file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Lava's formats do not fit
        export.main(["bundled", str(tmp_path / "s.h5"), "--strict"])
    assert "does not fit Loihi 2" in capsys.readouterr().err
    export.main(["bundled", str(tmp_path / "s.h5"), "--strict",
                 "--target", "loihi2"])
    assert export.load(tmp_path / "s.h5").plan.target == "loihi2"
    export.main(["--report", str(tmp_path / "s.h5")])
    assert "fits the Loihi 2 conventions checked" in capsys.readouterr().out


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


@pytest.fixture(scope="module")
def staged_net():
    """LayerNorm, GELU (erf and tanh forms), SiLU: every stage kind."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(),
                          nn.Linear(16, 16), nn.GELU("tanh"),
                          nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 3))
    data = torch.randn(40, 6)
    return convert(model.eval(), data[:32], progress=False), \
        data[32:].numpy()


def test_staged_layers_round_trip(staged_net, tmp_path):
    net, x = staged_net
    path = tmp_path / "staged.h5"
    export.save(net, path)
    back = export.load(path)
    _assert_same_plan(net.plan, back.plan)
    np.testing.assert_array_equal(Engine(back, "fixed")(x).logits,
                                  Engine(net, "fixed")(x).logits)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f["layers/0002/stage/knots"].__setitem__(
        (0, 5), f["layers/0002/stage/knots"][0, 5] + 1),
     "knots do not match the scales"),
    (lambda f: f["layers/0001/stage"].attrs.__setitem__("gain_shift", 3),
     "constants do not match the scales"),
    (lambda f: f["layers/0002/stage"].attrs.__setitem__("fn", "elu"),
     "unknown activation 'elu'"),
    (lambda f: f.__delitem__("layers/0001/stage"),
     "missing group /layers/0001/stage"),
])
def test_bad_stages_are_refused(staged_net, tmp_path, edit, match):
    net, _ = staged_net
    path = tmp_path / "staged.h5"
    export.save(net, path)
    _broken(path, edit)
    with pytest.raises(export.ExportError, match=match):
        export.load(path)


def _objects(path):
    """Every group and dataset of a file: name -> its attributes, and for
    a dataset its values and the file offset of its data (else None)."""
    found = {}

    def take(obj):
        dataset = isinstance(obj, h5py.Dataset)
        found[obj.name] = (dict(obj.attrs), obj[()] if dataset else None,
                           obj.id.get_offset() if dataset else None)
    with h5py.File(path) as f:
        take(f)
        f.visititems(lambda name, obj: take(obj))
    return found


def _refused_or_same(path, plan):
    """Loading ``path`` raises ExportError or gives ``plan`` exactly:
    never another exception, never a different network."""
    try:
        back = export.load(path)
    except export.ExportError as err:
        return str(err)
    _assert_same_plan(plan, back.plan)
    return None


@pytest.mark.slow
def test_damaged_files_are_refused(bundled, tmp_path):
    """Every dataset deleted, turned to another dtype or shape, or with a
    byte of its data flipped, and every attribute deleted or changed: an
    ExportError naming that object. Truncated at 64 lengths and a byte
    flipped at 256 offsets anywhere (headers, indices, free space): an
    ExportError, or where the byte mattered to nothing, the same Plan."""
    net, _ = bundled
    good = tmp_path / "good.h5"
    export.save(net, good)
    path = tmp_path / "damaged.h5"
    data = good.read_bytes()
    objects = _objects(good)

    def damaged(edit):
        path.write_bytes(data)
        with h5py.File(path, "a") as f:
            edit(f)
        with pytest.raises(export.ExportError) as err:
            export.load(path)
        return str(err.value)

    def replace(name, value):
        def edit(f):
            attrs = dict(f[name].attrs)
            del f[name]
            f[name] = value
            f[name].attrs.update(attrs)  # its old checksum too
        return edit

    for name, (attrs, value, _) in objects.items():
        is_dataset = value is not None
        if name != "/":  # a member fewer: its group's checksum
            parent = name.rsplit("/", 1)[0] or "/"
            assert f"group {parent} (its attributes or members)" in \
                damaged(lambda f: f.__delitem__(name))
        if is_dataset:
            assert name in damaged(replace(name, value.astype(
                np.float32 if value.dtype.kind != "f" else np.int64)))
            assert name in damaged(replace(name, np.append(value, value)))
        for key, v in attrs.items():
            def drop(f, key=key):
                del f[name].attrs[key]

            def change(f, key=key):
                f[name].attrs[key] = v + "x" if isinstance(v, str) else \
                    np.asarray(v) + 1
            assert name in damaged(drop) and name in damaged(change)
    for name, (_, value, at) in objects.items():  # a byte of each
        if value is None or at is None:  # dataset's data (none if empty)
            continue
        broken = bytearray(data)
        broken[at] ^= 0x5A
        path.write_bytes(bytes(broken))
        assert name in _refused_or_same(path, net.plan)
    rng = np.random.default_rng(11)
    for n in rng.integers(0, len(data), 64):
        path.write_bytes(data[:n])
        assert _refused_or_same(path, net.plan)
    loaded = 0
    for at in rng.integers(0, len(data), 256):
        broken = bytearray(data)
        broken[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(broken))
        loaded += _refused_or_same(path, net.plan) is None
    assert loaded < 256  # some flips hit what matters
