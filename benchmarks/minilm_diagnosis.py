"""Why the MiniLM SNN loses accuracy: phase code or weight mantissas?

    .venv/bin/python benchmarks/minilm_diagnosis.py

Two measurements on all-MiniLM-L6-v2 with the sentiment head (calibrated
on 128 calibration tweets, length 64):

1. the relative error of every population's decoded spikes against the ANN
   (8 validation tweets, layers 0 and 1) with the usual code (T = 40,
   B = 1.2) and with a code 20x finer (T = 200, B = 1.03, whose input
   error is 1 %): an error that does not shrink with the code is not the
   code's;
2. per synapse of layer 0, the relative error of the quantised weights
   (8-bit mantissas, exponents per output channel) against the real
   folded weights ``W * sigma_src / sigma_dst``, the share of nonzero
   weights that round to 0, and the spread of the largest weight per row
   (output channel) and per column (input channel).

Writes ``benchmarks/results/minilm_diagnosis.md``.
"""
import dataclasses
import pathlib
import time
import warnings

import numpy as np
import torch

from lava_spiked import Engine
from lava_spiked.bundled.text_data import (MAX_LENGTH, load_minilm,
                                           sentiment_head, tweets)
from lava_spiked.capture import run_graph
from lava_spiked.huggingface import convert, embed
from lava_spiked.numerics import fixed, phase
from lava_spiked.plan.lowering import _channel_scale, _source_scale

OUT = pathlib.Path(__file__).parent / "results" / "minilm_diagnosis.md"


def main():
    warnings.simplefilter("ignore", RuntimeWarning)
    torch.set_num_threads(2)
    t0 = time.time()
    model, tok = load_minilm()
    kw = dict(padding=True, truncation=True, max_length=MAX_LENGTH)
    cal, _ = tweets("calibration")
    net = convert(model, tok(cal[:128], **kw), length=MAX_LENGTH,
                  head=sentiment_head(), progress=False)
    val, _ = tweets("val")
    hidden, mask = embed(model, tok(val[:8], **kw), MAX_LENGTH)
    ref = {}
    run_graph(net.graph, torch.from_numpy(hidden),
              lambda name, v: ref.__setitem__(name, v.numpy()),
              torch.from_numpy(mask))
    names = [p.name for p in net.graph.populations
             if p.name.startswith(("input", "encoder.layer.0.",
                                   "encoder.layer.1."))]
    errors = {}
    for T, B in ((40, 1.2), (200, 1.03)):
        n = net.recode(B, T)
        res = Engine(n, "fixed")(hidden, attention_mask=mask, warn=False)
        errors[T, B] = {}
        for name in names:
            layer = n.plan[name]
            dec = phase.decode(res.steps[name].numpy(),
                               res.signs[name].numpy(), B, layer.scale)
            errors[T, B][name] = float(np.linalg.norm(dec - ref[name]) /
                                       np.linalg.norm(ref[name]))
    lines = [
        "# MiniLM: where the SNN's error comes from", "",
        f"Command: `python benchmarks/minilm_diagnosis.py` "
        f"({time.time() - t0:.0f} s). Relative error of each "
        "population's decoded spikes against the ANN (8 validation tweets, "
        "engine fixed mode):", "",
        "| population | T=40, B=1.2 | T=200, B=1.03 |", "|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {errors[40, 1.2][name]:.3f} | "
                     f"{errors[200, 1.03][name]:.3f} |")
    lines += ["", "Quantised weights of layer 0 (8-bit mantissas, an "
              "exponent per output channel, shared by rows within 4x); the "
              "current error is that of "
              "``W x`` on the ANN's own activations:", "",
              "| synapse | weight error | current error | nonzero weights "
              "rounded to 0 | row max spread | column max spread |",
              "|---|---|---|---|---|---|"]
    plan, sigmas = net.plan, net.sigmas
    for pop in net.graph.populations:
        if not pop.name.startswith("encoder.layer.0.") or not pop.synapses:
            continue
        layer = plan[pop.name]
        for syn, q in zip(pop.synapses, layer.synapses):
            w = syn.weight * _source_scale(syn, sigmas[syn.src])[None, :] / \
                _channel_scale(syn, layer.membrane_scale)[:, None]
            wq = fixed.dequantize_weights(q.weight, layer.weight_exp +
                                          q.shift[:, None])
            x = ref[syn.src].reshape(len(hidden), -1) / sigmas[syn.src]
            exact = dataclasses.replace(syn, weight=w).apply(x)
            err = dataclasses.replace(syn, weight=wq).apply(x) - exact
            rows, cols = np.abs(w).max(1), np.abs(w).max(0)
            lines.append(
                f"| {syn.src} -> {pop.name} | "
                f"{np.linalg.norm(wq - w) / np.linalg.norm(w):.3f} | "
                f"{np.linalg.norm(err) / np.linalg.norm(exact):.3f} | "
                f"{np.mean(q.weight[w != 0] == 0):.0%} | "
                f"{rows.max() / rows[rows > 0].min():.0f}x | "
                f"{cols.max() / cols[cols > 0].min():.0f}x |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
