"""Export (:mod:`lava_spiked.export`): a Plan through an HDF5 file and back,
bit for bit, without torch; bad files refused with the key named; the
``python -m lava_spiked.export`` CLI."""
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
from lava_spiked.bundled.digits_vit import load_default
from lava_spiked.engine import Engine
from lava_spiked.export import hdf5
from lava_spiked.export.__main__ import main as export_main


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
        hdf5._sign(f)


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


@pytest.fixture(scope="module")
def auto_bundled(bundled):
    """The bundled network with B chosen (``code_choice``)."""
    from lava_spiked.bundled.digits_vit import digits_splits
    net, _ = bundled
    return net.recode(B=(1.2, 1.25, 1.3), T=16, progress=False,
                      calibration_data=digits_splits()["calibration"][0])


def test_the_code_choice_round_trips(auto_bundled, tmp_path):
    path = tmp_path / "auto.h5"
    export.save(auto_bundled, path)
    with h5py.File(path, "r") as f:
        assert f.attrs["version"] == hdf5.VERSION == 6
        assert f["code_choice/grid"][()].tolist() == [1.2, 1.25, 1.3]
    back = export.load(path)
    assert back.plan.code_choice == auto_bundled.plan.code_choice
    assert back.plan.code_choice.chosen == back.B
    _assert_same_plan(auto_bundled.plan, back.plan)


def test_version_5_files_load_without_a_code_choice(bundled, auto_bundled,
                                                    tmp_path):
    """Files of version 5 (checksummed, no record) still load; a record in
    one is not read."""
    for net in (bundled[0], auto_bundled):
        path = tmp_path / "v5.h5"
        export.save(net, path)
        _broken(path, lambda f: f.attrs.__setitem__("version", 5))
        back = export.load(path)
        assert back.plan.code_choice is None
        _assert_same_plan(dataclasses.replace(net.plan, code_choice=None),
                          back.plan)


@pytest.mark.parametrize("edit, match", [
    (lambda f: (f.__delitem__("code_choice/errors"),
                f.create_dataset("code_choice/errors", data=np.ones(2))),
     "errors has shape \\(2,\\)"),
    (lambda f: f["code_choice/errors"].__setitem__(0, -1.0), "finite"),
    (lambda f: f["code_choice/grid"].__setitem__(0, 2.5), "B must be in"),
    (lambda f: f["code_choice/errors"].__setitem__(0, 0.0),
     "chose B = 1.2, the Plan has B = 1.25"),
    (lambda f: f["code_choice"].attrs.__delitem__("samples"),
     "missing attribute /code_choice:samples"),
])
def test_bad_code_choices_are_refused(auto_bundled, tmp_path, edit, match):
    assert auto_bundled.B == 1.25
    path = tmp_path / "auto.h5"
    export.save(auto_bundled, path)
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


def test_export_cli(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    export_main(["bundled", str(out), "--T", "24"])
    assert export.load(out).plan.T == 24
    export_main(["--report", str(out)])
    assert "| steps per sample |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        export_main(["--report", str(tmp_path / "missing.h5")])
    assert "not a readable HDF5 file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Lava's formats do not fit
        export_main(["bundled", str(tmp_path / "s.h5"), "--strict"])
    assert "does not fit Loihi 2" in capsys.readouterr().err
    export_main(["bundled", str(tmp_path / "s.h5"), "--strict",
                 "--target", "loihi2"])
    assert export.load(tmp_path / "s.h5").plan.target == "loihi2"
    export_main(["--report", str(tmp_path / "s.h5")])
    assert "fits the Loihi 2 conventions checked" in capsys.readouterr().out


def test_export_cli_chooses_B_and_keeps_the_record(tmp_path, capsys):
    """``--B auto`` with ``--target loihi2``: the file holds the choice
    made in Loihi 2's formats, the B it chose, and the CLI says so."""
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    out = tmp_path / "auto.h5"
    export_main(["bundled", str(out), "--T", "16", "--B", "auto",
                 "--target", "loihi2"])
    plan = export.load(out).plan
    want = convert(load_default(), digits_splits()["calibration"][0], T=16,
                   B="auto", target="loihi2", progress=False).plan
    assert plan.target == "loihi2" and plan.code_choice == want.code_choice
    assert plan.B == want.B == want.code_choice.chosen
    assert f"B = {plan.B} (auto), target loihi2" in capsys.readouterr().out


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
