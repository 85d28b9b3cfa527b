"""The engine: :class:`Engine` builds a Plan's layers once
(:mod:`lava_spiked.engine.layers`) and runs batches through them, in the
arithmetic of its mode (:mod:`lava_spiked.engine.arithmetic`), eagerly or
compiled (:mod:`lava_spiked.engine.compiling`)."""
import typing as ty

import torch

from lava_spiked.numerics import fixed
from lava_spiked.engine.fixed_mode import FixedArithmetic
from lava_spiked.engine.float_mode import FloatArithmetic
from lava_spiked.engine.compiling import Compiler
from lava_spiked.engine.layers import attention_layer, dense_layer
from lava_spiked.engine.ops import regain
from lava_spiked.engine.products import Products
from lava_spiked.engine.result import EngineResult
from lava_spiked.golden.models import clip_sizes, warn_clipped
from lava_spiked.validation import check_batch

ARITHMETIC = {"fixed": FixedArithmetic, "float": FloatArithmetic}


class Engine:
    """Evaluate a Plan on batches with torch.

    Parameters
    ----------
    plan : Plan or SpikingNetwork
        A converted network (its Lava processes are not run).
    mode : {'fixed', 'float'}
        Integer (``fixed_pt``) or floating-point (``floating_pt``) model.
    device : str or torch.device, optional
        Default 'cpu'.
    compile : bool or 'auto', optional
        Run the layers through ``torch.compile`` (TorchInductor), which
        fuses the elementwise passes between the matrix products: the same
        results (bit for bit in fixed mode; float mode as
        :mod:`lava_spiked.engine` states), in less time per batch, after a
        compile on the first call (tens of seconds on CPU; Inductor's
        on-disk cache makes a later compile of the same network a fraction
        of that). With
        ``True`` a second batch size recompiles once, with a dynamic
        batch dimension, whose code runs up to about 1.1x slower than the
        first size's (measured on the encoder ViT). LayerNorm and
        activation stages are in the same graph
        (:mod:`lava_spiked.numerics.torch_stages`). The default, ``'auto'``,
        runs eagerly until the eager calls of one batch size have taken as long
        as a first compile of this network is expected to take
        (``compiler.estimate_s``), then compiles for that batch size
        (calls of other sizes, such as a dataset's last batch, stay
        eager): an evaluation of a dataset compiles, a few batches do
        not, and neither choice costs more than about twice the better
        one would have. ``benchmarks/results/engine_vs_ann.md`` has the
        numbers. A compile also takes memory while it runs, most of it
        kept by the allocator afterwards: a process kept 0.07 GB after
        compiling the bundled DigitsViT, 0.25 GB the encoder ViT and 8.1
        GB the 6-layer MiniLM (``benchmarks/compile_memory.py``, CPU):
        ``'auto'`` does not compile where the OS has less than twice 0.19
        GB per layer available, and says so once.

    Raises
    ------
    ValueError
        If ``mode`` is unknown or bit-exactness cannot be proven for the
        network's weights and scales.

    Attributes
    ----------
    compiler : lava_spiked.engine.compiling.Compiler
        Its ``estimate_s``: seconds a first compile of this network is
        expected to take on CPU, uncached (1.2 s per layer, measured),
        after which ``compile='auto'`` compiles; its ``batch_sizes``: the
        batch sizes that have run compiled so far.
    arith : lava_spiked.engine.arithmetic.Arithmetic
        The mode's arithmetic.

    Notes
    -----
    Fixed mode's float32 products need IEEE float32 matrix products; where
    TF32 or bfloat16 products are allowed (``torch.backends`` precision
    settings, read at every call) every product runs in float64 instead.
    """

    def __init__(self, plan: ty.Any, mode: str = "fixed",
                 device: ty.Union[str, torch.device] = "cpu",
                 compile: ty.Union[bool, str] = "auto") -> None:
        if mode not in ARITHMETIC:
            raise ValueError(f"mode must be 'fixed' or 'float', got {mode!r}")
        plan = getattr(plan, "plan", plan)
        self.plan, self.mode = plan, mode
        self.device = torch.device(device)
        self.arith = ARITHMETIC[mode](plan, self.device)
        self.layers: ty.Dict[str, ty.Any] = {}
        self.products = Products()
        # last layer (index) that reads each trace, or each product: freed
        # after it (a product reads its source at its first member)
        self.last_read: ty.Dict[ty.Any, int] = {}
        for i, layer in enumerate(plan.layers[1:]):
            op = plan.attention_of(layer.name)
            if op is not None:
                self.layers[layer.name] = attention_layer(self.arith, plan,
                                                          op)
                self.last_read.update((src, i) for src in (op.x, op.y, op.v))
            else:
                self.layers[layer.name] = dense_layer(
                    self.arith, self.products, layer, i)
        self.products.build(self.device, mode == "fixed")
        for key, group in self.products.groups.items():
            self.last_read[key] = group.last
            self.last_read[group.src] = max(
                self.last_read.get(group.src, -1), group.first)
        self.clip_sizes = clip_sizes(plan)
        self.input_scale = self.arith.tensor(plan[plan.input].scale)
        self.output_scale = self.arith.tensor(plan[plan.output].scale)
        self.compiler = Compiler(self, compile, len(plan.layers) - 1)

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def __call__(self, x: ty.Any, record: bool = True,
                 warn: bool = True,
                 attention_mask: ty.Any = None) -> EngineResult:
        """Run a batch (batch, *sample_shape).

        Parameters
        ----------
        x : array_like or torch.Tensor
        record : bool
            Keep every layer's membrane, so that the result can decode
            spikes (``steps``, ``signs``); False keeps only the logits and
            the saturation and clipping counts (:mod:`lava_spiked.engine`
            states the memory either takes).
        warn : bool
            Warn (one RuntimeWarning per call, naming the populations) where
            more than :data:`lava_spiked.golden.models.CLIP_WARN_FRACTION` of a
            population's values in this batch were clipped, as
            :meth:`lava_spiked.network.SpikingNetwork.infer` does; the counts
            are in :attr:`EngineResult.clipped` either way.
        attention_mask : array_like, optional
            (batch, N) token masks, 1 for real tokens, for a network that
            takes one (:meth:`lava_spiked.plan.Plan.check_mask`).
        """
        res = self._run(x, record, attention_mask)
        if warn:
            warn_clipped({k: int(v.sum()) for k, v in res.clipped.items()},
                         self.clip_sizes, len(res.logits), stacklevel=4)
        return res

    def _run(self, x: ty.Any, record: bool,
             attention_mask: ty.Any) -> EngineResult:
        plan = self.plan
        first = plan[plan.input]
        if not torch.is_tensor(x):
            x = check_batch("x", x, first.shape)
        elif tuple(x.shape[1:]) != first.shape or \
                not torch.isfinite(x.sum()):  # NaN and inf propagate: one
            # pass on the tensor's own device; a sum that overflows takes
            # the full check, as does any other doubt
            x = check_batch("x", x.cpu(), first.shape)
        x = torch.as_tensor(x, dtype=torch.float64, device=self.device)
        valid = plan.check_mask(attention_mask, len(x))
        pad = None if valid is None else torch.as_tensor(~valid,
                                                         device=self.device)
        logits, saturated, membranes, clipped = self.compiler(
            x, pad, record, self.arith.f32_products())
        if plan.mean_pool:
            logits = torch.as_tensor(plan.pool(logits.cpu().numpy(), valid),
                                     device=self.device)
        return EngineResult(logits, saturated, membranes if record else None,
                            self, clipped)

    def _layers(self, x: torch.Tensor, pad: ty.Optional[torch.Tensor],
                record: bool, f32: bool):
        """The layers on a checked batch ``x``: the logits (before mean
        pooling), saturation counts, membranes and clipping counts. Per
        layer the state holds its membrane and kind (decoded to spikes on
        demand) and its trace; products of the synapse groups that later
        layers still read; each is freed after its last reader."""
        plan, arith = self.plan, self.arith
        n = len(x)
        first = plan[plan.input]
        u, saturated = arith.encode(x.reshape(n, -1) / self.input_scale)
        saturated = saturated + torch.zeros(n, dtype=torch.int64,
                                            device=self.device)
        clipped = {first.name: arith.clipped(u, False)}
        membranes = {first.name: (u, "bipolar")}
        traces = {first.name: arith.trace(u, False)}
        products: ty.Dict[tuple, torch.Tensor] = {}
        for i, layer in enumerate(plan.layers[1:]):
            op = plan.attention_of(layer.name)
            if op is not None:
                saturated = saturated + self._attend(op, traces, membranes,
                                                     clipped, pad)
            else:
                kind = "relu" if layer.kind == "relu" else "bipolar"
                v = self._membrane(layer, traces, products, f32)
                saturated = saturated + arith.saturated(v, layer.name)
                if layer.kind == "readout":
                    return self._logits(v, layer), saturated, membranes, \
                        clipped
                stage = self.layers[layer.name].stage
                if stage is not None:
                    v, clipped[layer.name], n_sat = arith.stage(
                        layer, stage, arith.stage_input(v))
                    saturated = saturated + n_sat
                else:
                    clipped[layer.name] = arith.clipped(v, kind == "relu")
                if layer.token_mask:  # padded tokens never fire
                    v = v.reshape(n, pad.shape[1], -1).masked_fill(
                        pad[..., None], arith.silent).reshape(n, -1)
                membranes[layer.name] = (v, kind)
                traces[layer.name] = arith.trace(v, kind == "relu", record)
            for done in (traces, products):
                for k in [k for k in done if self.last_read.get(k) == i]:
                    del done[k]
            if not record:
                membranes.clear()
        raise AssertionError("no readout layer")

    def _membrane(self, layer, traces: dict, products: dict,
                  f32: bool) -> torch.Tensor:
        """A dense layer's closed membrane from its sources' traces,
        computing the products it is the first to read."""
        a = self.layers[layer.name]
        acc = None
        for key, member in a.synapses:
            group = self.products[key]
            product = group.product(f32)
            if key not in products:  # its first member
                products[key] = product(regain(traces[group.src],
                                               group.bits))
            y = product.pick(products[key], member)
            if acc is None:
                acc = y if (f32 and a.sum_f32) or \
                    y.dtype == torch.float64 else y.double()
            else:
                acc += y
        return self.arith.close(acc, a.bias, layer.name)

    def _logits(self, v: torch.Tensor, layer) -> torch.Tensor:
        """The readout's membrane (fixed: its table row, saturated here)
        in the model's units, (batch, *out_shape)."""
        return (self.arith.logits(v) * self.output_scale).reshape(
            (v.shape[0],) + layer.shape)

    def _attend(self, op, traces, membranes, clipped, pad) -> torch.Tensor:
        """Run one attention; return its saturation counts (its clipping
        counts go into ``clipped``). ``pad`` (batch, N): padded tokens,
        masked as keys where the attention has ``key_mask``."""
        a, arith = self.layers[op.out], self.arith
        mask = a.mask  # None: nothing masked
        if op.key_mask:
            keys = pad[:, None, None, :]
            mask = keys if mask is None else mask | keys
        plan, name = self.plan, op.out
        # fixed: a logit sums products of two 13-bit traces, beyond
        # float32's exact range
        qk_bits, v_bits, out_bits, woss_bits = a.bits
        xs, ys, vs = [regain(traces[k], bits).double().view(
            (-1,) + plan[k].shape) for k, bits in (
                (op.x, qk_bits), (op.y, qk_bits), (op.v, v_bits))]
        n = xs.shape[0]
        v = arith.close(a.w_qk * arith.matmul(xs, ys), a.bias, op.logits)
        saturated = arith.saturated(v, op.logits)
        clipped[op.logits] = arith.clipped(v, False)
        membranes[op.logits] = (v, "bipolar")
        # WOSS: decoded logits, shift by the largest positive unmasked
        # one; masked entries never fire (below the last threshold)
        z = arith.woss_input(regain(arith.trace(v, False), woss_bits)
                             .double() * a.unit)
        if mask is not None:
            z = z.masked_fill(mask, 0)
        d = z - z.amax(-1, keepdim=True).clamp_(min=0)
        if mask is not None:
            d = d.masked_fill(mask, arith.masked)
        membranes[op.softmax] = (d, "woss")
        p = arith.softmax_traces(d)
        # 12-bit trace units
        row_sum = regain(p, woss_bits).sum(-1, keepdim=True) * \
            2.0 ** (fixed.GAIN_FRAC_BITS - woss_bits)
        out, n_sat = arith.normalize(
            a.w_av * arith.matmul(regain(p, out_bits), vs), row_sum, name)
        out = out.reshape(n, -1)
        clipped[name] = arith.clipped(out, False)
        membranes[name] = (out, "bipolar")
        traces[name] = arith.trace(out, False)
        return saturated + n_sat
