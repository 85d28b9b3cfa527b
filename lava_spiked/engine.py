"""Batched torch engine that computes a converted network like its Lava
models do, on CPU or CUDA.

Every layer fires only after integrating its whole window (W = T), so its
spikes are a function of its integrated input, and that input is a closed
form of its sources' spikes:

``float`` (= ``floating_pt``)
    ``A = sum_s W_s @ (x_hat_s / sigma_s) + b / sigma``, then the phase
    quantiser; attention as :func:`lava_spiked.attention.attention_float`.
``fixed`` (= ``fixed_pt``, bit for bit)
    The 48-bit dendritic accumulator of a PhaseNeuron sums ``a_in * G_j``
    exactly and is rounded once when the window closes, so it equals
    ``W @ (sign * G[step])``: one matrix product per synapse. For a trace
    product, a pair of spikes at steps m and m' adds
    ``s s' G[min] * G[max] = s G[m] * s' G[m']`` whatever their order, so
    the logit accumulator is ``w * (X_G @ Y_G)`` and the attention output's
    is ``w * (P_G @ V_G)``. Products run in float64, which is exact because
    the constructor proves every sum stays below 2**53; it also proves that
    no accumulator or WOSS membrane can saturate mid-window (where step
    order would matter) and refuses networks for which it cannot.

Cost: one matrix product per synapse plus elementwise quantisation per
layer, not T steps.
"""
import typing as ty
import warnings

import numpy as np
import torch

from lava_spiked import fixed
from lava_spiked.network import SpikingNetwork
from lava_spiked.phase import threshold_factor
from lava_spiked.validation import check_batch

EXACT = 2.0 ** 53  # float64 integers are exact below this


class EngineResult(ty.NamedTuple):
    """Logits (batch, *out_shape) and, per spiking population, fire steps
    (-1 = silent) and signs, each (batch, *shape)."""

    logits: torch.Tensor
    steps: ty.Dict[str, torch.Tensor]
    signs: ty.Dict[str, torch.Tensor]


class Engine:
    """Evaluate a :class:`SpikingNetwork` on batches with torch.

    Parameters
    ----------
    net : SpikingNetwork
        A converted network (its Lava processes are not run).
    mode : {'fixed', 'float'}
        Integer (``fixed_pt``) or floating-point (``floating_pt``) model.
    device : str or torch.device, optional
        Default 'cpu'.

    Raises
    ------
    ValueError
        If ``mode`` is unknown or bit-exactness cannot be proven for the
        network's weights and scales.
    """

    def __init__(self, net: SpikingNetwork, mode: str = "fixed",
                 device: ty.Union[str, torch.device] = "cpu") -> None:
        if mode not in ("fixed", "float"):
            raise ValueError(f"mode must be 'fixed' or 'float', got {mode!r}")
        self.net, self.mode = net, mode
        self.device = torch.device(device)
        B, T = net.B, net.T
        t = self._tensor
        if mode == "fixed":
            self.gains = t(fixed.gain_table(B, T))
            self.thresholds = t(fixed.threshold_table(B, T))
            self.woss_thresholds = t(fixed.woss_thresholds(B, T))
        else:
            steps = np.arange(T, dtype=np.float64)
            self.gains = t(B ** -steps)
            self.thresholds = t(threshold_factor(B) * B ** -steps)
            self.woss_thresholds = t(-(steps + 0.5) * np.log(B))
        self.sigma = {p.name: t(net._sigma(p)) for p in net.graph.populations}
        self.attention = {op.out.name: op for op in net.graph.attention}
        self.layers = {}
        for pop in net.graph.populations[1:]:
            if pop.name in self.attention:
                self.layers[pop.name] = self._attention_layer(
                    self.attention[pop.name])
            else:
                dense, exp = net._dense_exp[pop.name]
                mats = [self._matrix(d if mode == "fixed" else
                                     fixed.dequantize_weights(d, exp))
                        for d in dense]
                # each input adds at most |w| * 4096 (trace of step 0)
                self._prove(sum(float(np.abs(d).sum(-1).max())
                                for d in dense) * 4096.0, pop.name)
                bias = pop.bias / net._sigma(pop).ravel()
                self.layers[pop.name] = (mats, exp, self._bias(bias))

    # ----------------------------------------------------------- utilities
    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64),
                               device=self.device)

    def _matrix(self, w: np.ndarray) -> torch.Tensor:
        """Synapse matrix, sparse (CSR) when mostly zero: token-wise layers
        fold into block-diagonal matrices (about 6 % nonzero for the bundled
        ViT). Sums of the same integers in float64 are exact in any order.
        """
        m = self._tensor(w)
        if (w != 0).mean() > 0.25:
            return m
        with warnings.catch_warnings():  # "CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return m.to_sparse_csr()

    def _bias(self, bias_norm: np.ndarray) -> torch.Tensor:
        if self.mode == "float":
            return self._tensor(bias_norm)
        return self._tensor(fixed.to_state(bias_norm)[0])

    def _prove(self, bound: float, name: str) -> None:
        """Refuse a layer whose accumulator could reach ``bound`` >= 2**47
        (it could saturate mid-window) or leave float64's exact range."""
        if self.mode == "float":
            return
        if bound >= min(fixed.ACC_MAX, EXACT):
            raise ValueError(
                f"{name}: the accumulator may reach {bound:.3g}, beyond "
                "2**47, where saturation would depend on spike order; the "
                "engine cannot reproduce fixed_pt bit for bit")

    def _attention_layer(self, op):
        net, t = self.net, self._tensor
        (qk, av), (qk_exp, av_exp) = net._dense_exp[op.out.name]
        s_logit = np.broadcast_to(net.sigmas[op.logit_node],
                                  op.coef.shape).astype(float)
        # an element sums at most K pairs of 4096 * 4096 (logits) or M
        # softmax spikes times 4096 * 4096 (output), times its weight
        g2 = float(1 << fixed.GAIN_FRAC_BITS) ** 2
        self._prove(np.abs(qk).max() * op.x.shape[-1] * g2,
                    op.out.name + ":logits")
        self._prove(np.abs(av).max() * op.v.shape[-2] * g2, op.out.name)
        if self.mode == "fixed" and np.abs(s_logit).max() >= 2 ** (
                fixed.STATE_BITS - 1 - fixed.STATE_FRAC_BITS - 1):
            raise ValueError(f"{op.out.name}: logit scales of 64 or more "
                             "could saturate the WOSS membrane mid-window")
        if self.mode == "fixed":
            w_qk, w_av = t(qk), t(av)
            unit = t(fixed.to_state(s_logit)[0])
        else:
            w_qk = t(fixed.dequantize_weights(qk, qk_exp))
            w_av = t(fixed.dequantize_weights(av, av_exp))
            unit = t(s_logit)
        return dict(w_qk=w_qk, w_av=w_av, qk_exp=qk_exp, av_exp=av_exp,
                    bias=self._bias(op.bias / s_logit), unit=unit,
                    mask=torch.as_tensor(op.mask, device=self.device))

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def __call__(self, x: ty.Any) -> EngineResult:
        """Run a batch (batch, *sample_shape) and return logits and spikes.
        """
        net, g = self.net, self.net.graph
        if not torch.is_tensor(x):
            x = check_batch("x", x, g.input.shape)
        elif tuple(x.shape[1:]) != g.input.shape or \
                not torch.isfinite(x).all():  # checked on its own device
            x = check_batch("x", x.cpu(), g.input.shape)
        x = torch.as_tensor(x, dtype=torch.float64, device=self.device)
        steps, signs = {}, {}
        u = x / self.sigma[g.input.name]
        if self.mode == "fixed":
            u = self._to_state(u)
        steps[g.input.name], signs[g.input.name] = self._fire(u, False)
        for pop in g.populations[1:]:
            if pop.name in self.attention:
                self._attend(self.attention[pop.name], steps, signs)
                continue
            mats, exp, bias = self.layers[pop.name]
            n = x.shape[0]
            acc = sum(_product(self._trace(steps[s.name],
                                           signs[s.name]).reshape(n, -1), w)
                      for (s, _), w in zip(pop.inputs, mats))
            v = self._close(acc, bias, exp).reshape((n,) + pop.shape)
            if pop.kind == "readout":
                if self.mode == "fixed":
                    v = v * 2.0 ** -fixed.STATE_FRAC_BITS
                return EngineResult(v * self.sigma[pop.name], steps, signs)
            steps[pop.name], signs[pop.name] = self._fire(
                v, pop.kind == "relu")
        raise AssertionError("no readout population")

    def _attend(self, op, steps, signs) -> None:
        a = self.layers[op.out.name]
        xg = self._trace(steps[op.x.name], signs[op.x.name])
        yg = self._trace(steps[op.y.name], signs[op.y.name])
        v = self._close(a["w_qk"] * (xg @ yg), a["bias"], a["qk_exp"] -
                        fixed.GAIN_FRAC_BITS)
        l_step, l_sign = self._fire(v, False)
        steps[op.out.name + ":logits"] = l_step
        signs[op.out.name + ":logits"] = l_sign
        # WOSS: decoded logits, shift by the largest positive unmasked one
        z = self._trace(l_step, l_sign) * a["unit"]
        if self.mode == "fixed":
            z = _round_shift(z, fixed.GAIN_FRAC_BITS)
        live = (l_step >= 0) & ~a["mask"]
        z = torch.where(live, z, torch.zeros_like(z))
        positive = live & (l_sign > 0)
        z_max = torch.where(positive, z, torch.zeros_like(z)).amax(
            -1, keepdim=True)
        p_step = self._count_above(self.woss_thresholds, z - z_max)
        p_step = torch.where((p_step == self.net.T) | a["mask"],
                             torch.full_like(p_step, -1), p_step)
        steps[op.out.name + ":softmax"] = p_step
        signs[op.out.name + ":softmax"] = (p_step >= 0).to(p_step.dtype)
        pg = self._trace(p_step, torch.ones_like(p_step))
        row_sum = pg.sum(-1, keepdim=True)
        vg = self._trace(steps[op.v.name], signs[op.v.name])
        out = self._close(a["w_av"] * (pg @ vg), 0.0,
                          a["av_exp"] - fixed.GAIN_FRAC_BITS)
        safe = torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
        if self.mode == "fixed":  # fixed.normalize, in exact int64
            num = out.abs().long() << fixed.GAIN_FRAC_BITS
            r = safe.long()
            q = torch.div(2 * num + r, 2 * r, rounding_mode="floor")
            out = torch.where(row_sum > 0, torch.sign(out) * q.double(),
                              torch.zeros_like(out))
        else:
            out = torch.where(row_sum > 0, out / safe, torch.zeros_like(out))
        steps[op.out.name], signs[op.out.name] = self._fire(out, False)

    def _trace(self, step: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """``sign * G[step]`` (fixed) or ``sign * B**-step`` (float); 0 where
        silent."""
        g = self.gains[step.clamp(min=0)]
        return torch.where(step >= 0, sign * g, torch.zeros_like(g))

    def _to_state(self, u: torch.Tensor) -> torch.Tensor:
        x = (u * (1 << fixed.STATE_FRAC_BITS)).clamp(
            -(fixed.STATE_MAX + 1.0), fixed.STATE_MAX + 1.0)
        return torch.sign(x) * torch.floor(x.abs() + 0.5).clamp(
            max=fixed.STATE_MAX)

    def _close(self, acc, bias, exp: int) -> torch.Tensor:
        """Membrane when the window closes (see fixed.close_window)."""
        if self.mode == "float":  # weights are already dequantised
            return acc + bias
        v = bias + _round_shift(acc, fixed.GAIN_FRAC_BITS - exp)
        return v.clamp(-fixed.STATE_MAX, fixed.STATE_MAX)

    @staticmethod
    def _count_above(falling: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """How many of the falling thresholds lie strictly above ``x``: the
        first step at which ``x`` reaches its threshold."""
        rising = falling.flip(0).contiguous()
        below = torch.searchsorted(rising, x.contiguous(), right=True)
        return len(falling) - below

    def _fire(self, v: torch.Tensor, unipolar: bool):
        """First fire step against the falling thresholds, and sign."""
        step = self._count_above(self.thresholds, v if unipolar else v.abs())
        silent = step == self.net.T
        if unipolar:
            silent |= v <= 0
        step = torch.where(silent, torch.full_like(step, -1), step)
        sign = torch.where(silent, torch.zeros_like(v), torch.sign(v))
        return step, sign


def _product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for a dense or CSR ``w`` (batch, n_out)."""
    return (w @ x.T).T if w.layout == torch.sparse_csr else x @ w.T


def _round_shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """torch twin of :func:`lava_spiked.fixed.round_shift` on float64
    integers (exact below 2**53)."""
    if n <= 0:
        return x * float(1 << -n)
    return torch.sign(x) * torch.floor((x.abs() + (1 << (n - 1))) /
                                       float(1 << n))
