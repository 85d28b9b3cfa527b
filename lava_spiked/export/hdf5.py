"""Save a Plan to a versioned HDF5 file and load it back, without torch.

``save(plan, path)`` writes every number the network needs: per layer its
shape, kind, scales, bias, window and weight exponent (and the integer
constants of an activation or LayerNorm stage), per synapse the
token-shared weight mantissas and their exponent per output channel
(stored once, with the two index maps that
say which neurons they connect), per attention its trace-product mantissas,
logit scale, bias, mask and schedule. ``load(path)`` returns a
:class:`~lava_spiked.network.SpikingNetwork` that runs in Lava (and on the
engine) exactly as the network that was saved; it imports neither torch nor
lava-dl. The schema is documented in ``docs/export.md``.

The layout follows lava-dl netx where it can (one group per layer in
topological order, with ``type``-like ``kind``, ``shape``, ``weight``,
``bias``) and carries its own format name and version, because netx has no
node for graded phase spikes, spike x spike products or the WOSS softmax and
silently skips types it does not know.

``python -m lava_spiked.export`` (:mod:`lava_spiked.export.__main__`) saves
the bundled model or reports on a file; what a Plan asks of a chip is
:func:`lava_spiked.plan.resources.resources`.
"""
import hashlib
import pathlib
import typing as ty

import h5py
import numpy as np

from lava_spiked.network import SpikingNetwork
from lava_spiked.numerics import fixed, nonlinear
from lava_spiked.plan import (KINDS, MASK, ActivationStage, CodeChoice,
                              Layer, LoweredAttention, NormStage, Plan,
                              RuntimeInput, Synapse, Window, loihi2)
from lava_spiked.validation import check_base, check_steps

FORMAT = "lava-spiked plan"
# 2 added the stages of activation and LayerNorm layers and a weight
# exponent per synapse, 3 one per output channel of a synapse, 4 the
# gain and accumulator bits of a layer (Loihi 2 conformant Plans), 5 a
# checksum on every dataset and on every group's attributes, 6 the
# record of how B was chosen (``code_choice``, where it was)
VERSION = 6
READABLE = (1, 2, 3, 4, 5, 6)
CHECKSUM = "sha256"  # the attribute that holds an object's checksum


class ExportError(ValueError):
    """A file that is not a readable lava-spiked Plan of this version."""


def save(plan: Plan, path: ty.Union[str, pathlib.Path],
         strict: bool = False) -> None:
    """Write ``plan`` (or a network's ``.plan``) to the HDF5 file ``path``.

    Parameters
    ----------
    strict : bool
        Refuse a Plan that does not fit the Loihi 2 conventions
        (:func:`lava_spiked.plan.loihi2.check`; today's Plans never do).

    Raises
    ------
    ValueError
        With ``strict``, if the Plan has Loihi 2 violations (listed).
    """
    plan = getattr(plan, "plan", plan)
    if strict:
        found = loihi2.check(plan)
        if found:
            raise ValueError("the Plan does not fit Loihi 2 (strict=True):\n"
                             + "\n".join(str(v) for v in found))
    with h5py.File(path, "w") as f:
        f.attrs.update(format=FORMAT, version=VERSION, B=plan.B, T=plan.T,
                       num_steps=plan.num_steps, input=plan.input,
                       output=plan.output, ann_macs=plan.ann_macs,
                       tokens=plan.tokens, mean_pool=plan.mean_pool)
        layers = f.create_group("layers")
        for i, layer in enumerate(plan.layers):
            g = layers.create_group(f"{i:04d}")
            g.attrs.update(name=layer.name, kind=layer.kind,
                           weight_exp=layer.weight_exp,
                           window_start=layer.window.start,
                           window_fire=layer.window.fire,
                           token_mask=layer.token_mask,
                           gain_bits=layer.gain_bits,
                           acc_bits=layer.acc_bits)
            g["shape"] = np.asarray(layer.shape, np.int64)
            g["scale"] = np.asarray(layer.scale, np.float64)
            g["bias"] = np.asarray(layer.bias, np.float64)
            if layer.stage is not None:
                _write_stage(g.create_group("stage"), layer.stage)
            synapses = g.create_group("synapses")
            for j, syn in enumerate(layer.synapses):
                s = synapses.create_group(f"{j:04d}")
                s.attrs["src"] = syn.src
                s["shift"] = np.asarray(syn.shift, np.int64)
                s["rows"] = np.asarray(syn.rows, np.int64)
                s["weight"] = np.asarray(syn.weight, np.int32)
                s["out"] = np.asarray(syn.out, np.int64)
        attention = f.create_group("attention")
        for k, op in enumerate(plan.attention):
            a = attention.create_group(f"{k:04d}")
            a.attrs.update(x=op.x, y=op.y, v=op.v, out=op.out,
                           qk_exp=op.qk_exp, av_exp=op.av_exp,
                           logit_start=op.logit_start, key_mask=op.key_mask,
                           qk_bits=op.qk_bits, v_bits=op.v_bits,
                           acc_bits=op.acc_bits, woss_bits=op.woss_bits)
            a["qk"] = np.asarray(op.qk, np.int32)
            a["av"] = np.asarray(op.av, np.int32)
            a["logit_scale"] = np.asarray(op.logit_scale, np.float64)
            a["logit_bias"] = np.asarray(op.logit_bias, np.float64)
            a["mask"] = np.asarray(op.mask, bool)
        if plan.code_choice is not None:
            c = f.create_group("code_choice")
            c.attrs["samples"] = plan.code_choice.samples
            c["grid"] = np.asarray(plan.code_choice.grid, np.float64)
            c["errors"] = np.asarray(plan.code_choice.errors, np.float64)
        _sign(f)


def _digest(*parts: ty.Any) -> str:
    """SHA-256 of values as the file holds them: a string by its UTF-8
    bytes, anything else by its numpy dtype, shape and bytes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            h.update(b"s" + part.encode())
        else:
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _group_digest(group) -> str:
    """Checksum of a group's attributes (its own checksum left out) and of
    the names of its members."""
    parts = []
    for key in sorted(k for k in group.attrs if k != CHECKSUM):
        parts += [key, group.attrs[key]]
    return _digest(*parts, "members", *sorted(group))


def _objects(f) -> ty.List[ty.Any]:
    """The root group and every group and dataset below it."""
    found = [f]
    f.visititems(lambda name, obj: found.append(obj))
    return found


def _sign(f) -> None:
    """Store the checksum of every dataset (its contents) and every group
    (its attributes and the names of its members) in the object's
    ``sha256`` attribute."""
    for obj in _objects(f):
        obj.attrs[CHECKSUM] = _digest(obj[()]) if isinstance(
            obj, h5py.Dataset) else _group_digest(obj)


def _verify(f) -> None:
    """Raise ValueError naming the first object of a file of version 5 or
    later whose checksum is missing or does not match its contents."""
    for obj in _objects(f):
        what = "dataset" if isinstance(obj, h5py.Dataset) else "group"
        if CHECKSUM not in obj.attrs:
            raise ValueError(f"{what} {obj.name} has no checksum")
        got = _digest(_read_dataset(obj)) if what == "dataset" \
            else _group_digest(obj)
        if got != obj.attrs[CHECKSUM]:
            raise ValueError(
                f"{what} {obj.name}" + (" (its attributes or members)"
                                         if what == "group" else "") +
                " does not match its checksum: the file was changed or "
                "damaged after it was saved")


def _read_dataset(ds) -> np.ndarray:
    """A dataset's values, refusing one whose stored bytes are not what
    its shape and dtype need (a damaged header could otherwise ask for
    any amount of memory)."""
    if ds.id.get_storage_size() != ds.size * ds.dtype.itemsize:
        raise ValueError(f"dataset {ds.name} stores "
                         f"{ds.id.get_storage_size()} bytes for "
                         f"{ds.shape} of {ds.dtype}")
    return ds[()]


def load(path: ty.Union[str, pathlib.Path],
         record: bool = False) -> SpikingNetwork:
    """Read a file written by :func:`save` into a runnable network.

    Parameters
    ----------
    path : str or pathlib.Path
    record : bool
        Probe every layer's spikes when run in Lava.

    Raises
    ------
    ExportError
        Naming the key (or the reason) when the file is not a complete,
        consistent lava-spiked Plan of this version. Nothing is built then.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ExportError(f"{path}: not a readable HDF5 file ({err})") \
            from None
    try:
        with f:
            _check_header(f, path)
            if f.attrs["version"] >= 5:
                _verify(f)
            plan = _read(f)
    except ExportError:
        raise
    except KeyError as err:
        raise ExportError(f"{path}: missing {err.args[0]}") from None
    except (TypeError, ValueError, OSError) as err:
        raise ExportError(f"{path}: {err}") from None
    except Exception as err:  # whatever else a damaged file makes h5py or
        # numpy raise: not a Plan this loader can trust
        raise ExportError(f"{path}: damaged ({type(err).__name__}: {err})") \
            from None
    return SpikingNetwork(plan, record=record)


def _check_header(f, path) -> None:
    """Refuse a file of another format or of a version this loader cannot
    read."""
    fmt, version = f.attrs.get("format"), f.attrs.get("version")
    if not isinstance(fmt, str) or fmt != FORMAT:
        raise ExportError(f"{path}: not a lava-spiked Plan (attribute "
                          f"'format' is {fmt!r})")
    if np.ndim(version) or version not in READABLE:
        raise ExportError(f"{path}: format version {version!r}; this "
                          f"lava-spiked reads versions {READABLE}")


def _attr(group, key: str, kind: type):
    if key not in group.attrs:
        raise KeyError(f"attribute {group.name}:{key}")
    value = group.attrs[key]
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"attribute {group.name}:{key} must be a "
                            "string")
        return value
    if kind is int:
        if not np.issubdtype(np.asarray(value).dtype, np.integer):
            raise TypeError(f"attribute {group.name}:{key} must be an "
                            "integer")
        return int(value)
    return float(value)


def _array(group, key: str, kind: str, ndim: int,
           size: ty.Optional[int] = None) -> np.ndarray:
    """Dataset ``key``: numpy kind 'i' (integer), 'f' or 'b', ``ndim``
    axes, and ``size`` elements where given."""
    if key not in group or not isinstance(group[key], h5py.Dataset):
        raise KeyError(f"dataset {group.name}/{key}")
    value = _read_dataset(group[key])
    where = f"dataset {group.name}/{key}"
    if np.asarray(value).dtype.kind != kind:
        raise TypeError(f"{where} has dtype {np.asarray(value).dtype}, "
                        f"expected kind {kind!r}")
    if np.ndim(value) != ndim or (size is not None and np.size(value)
                                  != size):
        raise ValueError(f"{where} has shape {np.shape(value)}, expected "
                         f"{ndim} axes" + (f" and {size} elements"
                                           if size is not None else ""))
    return np.asarray(value)


def _write_stage(g, stage) -> None:
    if isinstance(stage, ActivationStage):
        g.attrs["fn"] = stage.fn
        g["pre_scale"] = np.asarray(stage.pre_scale, np.float64)
        g["knots"] = np.asarray(stage.knots, np.int64)
        g["row"] = np.asarray(stage.row, np.int64)
    else:
        g.attrs.update(pre_scale=stage.pre_scale, eps=stage.eps,
                       eps_state=stage.eps_state,
                       gain_shift=stage.gain_shift)
        g["gain"] = np.asarray(stage.gain, np.int64)


def _read_stage(g, kind: str, shape, scale: np.ndarray):
    """The stage of a staged layer, checked against the constants its
    scales imply (the Lava models derive them from the scales, the engine
    reads them: a file where they differ would run two networks)."""
    if kind not in ("activation", "layernorm"):
        if "stage" in g:
            raise ValueError(f"{g.name}: a {kind} layer has no stage")
        return None
    if "stage" not in g:
        raise KeyError(f"group {g.name}/stage")
    st = g["stage"]
    size = int(np.prod(shape))
    if kind == "activation":
        fn = nonlinear.check_activation(_attr(st, "fn", str))
        pre = _array(st, "pre_scale", "f", 1, size)
        knots, row = _array(st, "knots", "i", 2), _array(st, "row", "i", 1,
                                                          size)
        want = nonlinear.knot_table(fn, pre, scale)
        if knots.shape[1] != fixed.KNOTS or not (
                np.array_equal(knots, want[0]) and
                np.array_equal(row, want[1])):
            raise ValueError(f"{st.name}: knots do not match the scales")
        return ActivationStage(fn, pre, knots, row)
    pre, eps = _attr(st, "pre_scale", float), _attr(st, "eps", float)
    const = nonlinear.layer_norm_constants(shape[-1], eps, pre, scale)
    stage = NormStage(pre, eps, _attr(st, "eps_state", int),
                      _array(st, "gain", "i", 1, size),
                      _attr(st, "gain_shift", int))
    if (stage.eps_state, stage.gain_shift) != (
            const.eps_state, const.gain_shift) or \
            not np.array_equal(stage.gain, const.gain):
        raise ValueError(f"{st.name}: constants do not match the scales")
    return stage


def _formats(group, version: int, *keys: str) -> ty.List[int]:
    """The integer formats ``*_bits`` of a layer or an attention: 1..12
    bits of traces and gains, 24 or 48 of accumulators (files before
    version 4: 12 and 48)."""
    out = []
    for key in keys:
        acc = key == "acc_bits"
        if key not in group.attrs and version < 4:
            out.append(fixed.ACC_BITS if acc else fixed.GAIN_FRAC_BITS)
            continue
        value = _attr(group, key, int)
        if acc and value not in (fixed.STATE_BITS, fixed.ACC_BITS):
            raise ValueError(f"{group.name}:{key}: {value}, not 24 or 48")
        if not acc and not 1 <= value <= fixed.GAIN_FRAC_BITS:
            raise ValueError(f"{group.name}:{key}: {value} outside 1..12")
        out.append(value)
    return out


def _read(f) -> Plan:
    version = int(f.attrs["version"])
    layers: ty.List[Layer] = []
    for key in sorted(f["layers"], key=int):
        g = f["layers"][key]
        shape = tuple(int(n) for n in _array(g, "shape", "i", 1))
        size = int(np.prod(shape))
        kind = _attr(g, "kind", str)
        if kind not in KINDS:
            raise ValueError(f"{g.name}: unknown kind {kind!r}")
        synapses = []
        for skey in sorted(g["synapses"], key=int):
            s = g["synapses"][skey]
            rows = _array(s, "rows", "i", 2)
            weight = _array(s, "weight", "i", 2)
            out = _array(s, "out", "i", 1, size)
            src = _attr(s, "src", str)
            if rows.shape[1] != weight.shape[1]:
                raise ValueError(f"{s.name}: rows has {rows.shape[1]} inputs "
                                 f"per row, weight {weight.shape[1]}")
            sources = {layer.name: layer.size for layer in layers}
            if src not in sources:
                raise ValueError(f"{s.name}: source {src!r} is not an "
                                 "earlier layer")
            if rows.size and not -1 <= rows.min() <= rows.max() < \
                    sources[src]:
                raise ValueError(f"{s.name}/rows: indices outside the "
                                 f"{sources[src]} neurons of {src!r}")
            if out.size and not -1 <= out.min() <= out.max() < \
                    len(rows) * len(weight):
                raise ValueError(f"{s.name}/out: indices outside the "
                                 f"{len(rows)} x {len(weight)} products")
            # version 2: one exponent per synapse, 1: one per layer
            shift = _array(s, "shift", "i", 1, len(weight)) if "shift" in s \
                else np.full(len(weight), _attr(s, "shift", int)
                             if "shift" in s.attrs else 0, np.int64)
            if shift.size and shift.min() < 0:
                raise ValueError(f"{s.name}/shift: {shift.min()} < 0")
            synapses.append(Synapse(src, rows, weight, out, shift))
        scale = _array(g, "scale", "f", 1, size)
        gain_bits, acc_bits = _formats(g, version, "gain_bits", "acc_bits")
        layers.append(Layer(
            _attr(g, "name", str), shape, kind, scale,
            _array(g, "bias", "f", 1, size), synapses,
            _attr(g, "weight_exp", int),
            Window(_attr(g, "window_start", int),
                   _attr(g, "window_fire", int)),
            _read_stage(g, kind, shape, scale),
            bool(g.attrs.get("token_mask", False)), gain_bits, acc_bits))
    attention = []
    names = {layer.name: layer for layer in layers}
    for key in sorted(f["attention"], key=int):
        a = f["attention"][key]
        qk = _array(a, "qk", "i", 3)
        for role in ("x", "y", "v", "out"):
            if _attr(a, role, str) not in names:
                raise ValueError(f"{a.name}: attribute {role} names no "
                                 "layer")
        if np.size(a["av"]) != names[_attr(a, "out", str)].size:
            raise ValueError(f"{a.name}/av does not match its output layer")
        attention.append(LoweredAttention(
            _attr(a, "x", str), _attr(a, "y", str), _attr(a, "v", str),
            _attr(a, "out", str), qk, _attr(a, "qk_exp", int),
            _array(a, "av", "i", 3), _attr(a, "av_exp", int),
            _array(a, "logit_scale", "f", 3, qk.size),
            _array(a, "logit_bias", "f", 3, qk.size),
            _array(a, "mask", "b", 3, qk.size), _attr(a, "logit_start", int),
            bool(a.attrs.get("key_mask", False)),
            *_formats(a, version, "qk_bits", "v_bits", "acc_bits",
                      "woss_bits")))
    for key in ("input", "output"):
        if _attr(f, key, str) not in names:
            raise ValueError(f"attribute {key} names no layer")
    # version 1 files have no runtime token mask
    tokens = _attr(f, "tokens", int) if "tokens" in f.attrs else 0
    return Plan(check_base(_attr(f, "B", float)),
                check_steps(_attr(f, "T", int)), layers, attention,
                _attr(f, "input", str), _attr(f, "output", str),
                _attr(f, "num_steps", int), _attr(f, "ann_macs", float),
                [RuntimeInput(MASK, (tokens,))] if tokens else [],
                bool(f.attrs.get("mean_pool", False)),
                _read_code_choice(f) if version >= 6 else None)


def _read_code_choice(f) -> ty.Optional[CodeChoice]:
    """The record of how B was chosen, None where the file has none (B
    was given); the Plan checks that it chose the file's B."""
    if "code_choice" not in f:
        return None
    c = f["code_choice"]
    grid = _array(c, "grid", "f", 1)
    for b in grid:
        check_base(b)
    return CodeChoice(tuple(grid), tuple(_array(c, "errors", "f", 1,
                                                grid.size)),
                      _attr(c, "samples", int))
