"""Draw the figures of the user guide from the library's own golden models.

Run from the repository root: ``python docs/figures/make_figures.py``
(a few seconds; writes the PNGs beside this file, which are committed).
"""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lava_spiked.golden import attention  # noqa: E402
from lava_spiked.numerics import phase  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def quantiser() -> None:
    """Q(x) against x, and the spike times of a small vector."""
    B, T = 1.4, 8  # coarse, so that the levels can be told apart
    x = np.linspace(-1.3, 1.3, 2001)
    code = phase.quantize(x, B, T)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(x, x, color="0.7", lw=1, label="x")
    left.plot(x, code.value, lw=1.5, label="decoded Q(x)")
    dead = phase.dead_zone(B, T)
    left.axvspan(-dead, dead, color="tab:red", alpha=0.15, label="dead zone")
    left.axvspan(1, 1.3, color="tab:orange", alpha=0.15,
                 label="clipped (|x| > sigma)")
    left.axvspan(-1.3, -1, color="tab:orange", alpha=0.15)
    left.set(xlabel="x / sigma", ylabel="decoded value / sigma",
             title=f"quantiser, B = {B}, T = {T}")
    left.legend(fontsize=8, loc="upper left")

    values = np.array([0.95, -0.6, 0.42, 0.3, -0.21, 0.12, 0.05, -0.02])
    code = phase.quantize(values, B, T)
    fired = code.step >= 0
    idx = np.arange(len(values))
    right.scatter(code.step[fired], idx[fired],
                  c=np.where(code.sign[fired] > 0, "tab:blue", "tab:red"),
                  marker="|", s=400, linewidths=3)
    for i, (v, s) in enumerate(zip(values, code.step)):
        label = f"x = {v:+.2f} -> " + (
            f"{code.value[i]:+.3f}" if s >= 0 else "no spike")
        right.text(T - 0.4, i, label, va="center", fontsize=8)
    right.set(xlim=(-0.5, T + 4.5), ylim=(-0.7, len(values) - 0.3),
              xlabel="fire step m (blue +1, red -1)", ylabel="neuron",
              title="one spike per neuron: value = s sigma B^-m")
    right.set_xticks(range(T))
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(HERE / "phase_code.png", dpi=110)
    plt.close(fig)


def woss() -> None:
    """WOSS against softmax on one row, and the falling threshold."""
    B, T = 1.15, 40
    z = np.array([2.1, 1.7, 1.2, 0.4, -0.3, -1.0, -2.2, -3.5])
    p, step = attention.woss(z, B, T)
    exact = np.exp(z - z.max())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    idx = np.arange(len(z))
    left.bar(idx - 0.2, exact / exact.sum(), 0.4, label="softmax(z)")
    left.bar(idx + 0.2, p / p.sum(), 0.4, label="WOSS p / R")
    left.set(xlabel="key c", ylabel="probability",
             title=f"one attention row, B = {B}, T = {T}")
    left.legend(fontsize=8)
    m = np.arange(T)
    right.step(m, -(m + 0.5) * np.log(B), where="post",
               label="threshold -(m + 1/2) ln B")
    fired = step >= 0  # z_7 lies below the last threshold: it never fires
    right.scatter(step[fired], (z - z.max())[fired], color="tab:red",
                  zorder=3, label="z_c - z_max, at its fire step")
    right.set(xlabel="fire step m of the softmax neuron",
              ylabel="shifted logit", title="winner at m = 0, others later")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "woss.png", dpi=110)
    plt.close(fig)


def attention_raster() -> None:
    """Spike times of every stage of one attention block (golden model)."""
    h, n, d, B, T = 1, 4, 4, 1.15, 40
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(0, 1, (h, n, d)) for _ in range(3))
    s = 0
    scales = dict(q=np.abs(q).max(2, keepdims=True),
                  k=np.abs(k).max(2, keepdims=True),
                  v=np.abs(v).max(1, keepdims=True))
    codes = {name: phase.quantize(x, B, T, scales[name])
             for name, x in (("q", q), ("k", k), ("v", v))}
    logit_scale = np.full((h, n, 1), 3.0)
    out_scale = np.abs(v).max()
    qk = scales["q"] * np.swapaxes(scales["k"], 1, 2) / (
        np.sqrt(d) * logit_scale)
    logit, p_step, _, out, _, _ = attention.attention_float(
        codes["q"].value / scales["q"],
        np.swapaxes(codes["k"].value / scales["k"], 1, 2),
        codes["v"].value / scales["v"], qk, 0.0, logit_scale,
        np.zeros((h, n, n), bool), scales["v"] / out_scale, out_scale, B, T)
    # fire windows as SpikingSelfAttention.schedule sets them
    rows = [("Q", codes["q"].step, s + T), ("K", codes["k"].step, s + T),
            ("V", codes["v"].step, s + T), ("logits", logit.step, s + 2 * T + 1),
            ("softmax", p_step, s + 3 * T + 1),
            ("output", out.step, s + 4 * T + 2)]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for r, (name, steps, fire) in enumerate(rows):
        ax.axvspan(fire, fire + T, ymin=1 - (r + 1) / len(rows),
                   ymax=1 - r / len(rows), color=f"C{r}", alpha=0.12)
        t = steps[steps >= 0] + fire
        ax.scatter(t, np.full(t.shape, r) + rng.uniform(-0.25, 0.25, t.shape),
                   marker="|", s=60, color=f"C{r}")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set(ylim=(len(rows) - 0.5, -0.5), xlim=(0, s + 5 * T + 2),
           xlabel="time step (shaded: each stage's fire window)",
           title=f"one attention block, h = {h}, N = {n}, d = {d}, "
                 f"B = {B}, T = {T}: each neuron fires at most once")
    fig.tight_layout()
    fig.savefig(HERE / "attention_raster.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    quantiser()
    woss()
    attention_raster()
