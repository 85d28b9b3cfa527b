"""A character-level GPT-2 on tweets, converted: perplexity, next-character
agreement and greedy generation, ANN against SNN.

The model is a stock ``transformers.GPT2LMHeadModel`` (4 layers, d = 128,
4 heads, 64 positions) trained here on the training split of the bundled
tweet corpus (``lava_spiked.bundled.text_data.tweets``), one character per
token; the checkpoint is kept in ``benchmarks/results/gpt2_tweets.pt`` and
trained again only with ``--train``. Converted with
:func:`lava_spiked.huggingface.convert` on calibration tweets, it is
measured on the first 64 characters of held-out test tweets:

- perplexity per character, ANN and SNN (engine, fixed mode);
- next-character agreement: how often the SNN's most likely next character
  is the ANN's;
- greedy generation: over ``--prompts`` prompts (the first 16 characters of
  test tweets), how many of 20 generated characters equal the ANN's before
  the first difference;
- the relative error of each kind of population, engine spikes against
  the exact model.

``--lava`` measures only this instead: the model converted for
16 + 20 = 36 characters, 20 greedy characters after one prompt generated
in Lava (fixed_pt) and compared with the engine's, bit for bit (one Lava
run per character: about half an hour on a 2-core machine).

Usage::

    python benchmarks/gpt2_tweets.py [--train] [--T 40] [--B 1.15] \
        [--texts 500] [--lava]

Results are appended to ``benchmarks/results/gpt2_tweets.md`` with the
command that made them.
"""
import argparse
import collections
import pathlib
import platform
import sys
import time

import numpy as np
import torch
import transformers

HERE = pathlib.Path(__file__).resolve().parent
CHECKPOINT = HERE / "results" / "gpt2_tweets.pt"
RESULTS = HERE / "results" / "gpt2_tweets.md"
LENGTH = 64  # characters per text, the network's tokens
PROMPT, NEW = 16, 20


class Chars:
    """Character vocabulary: the training split's characters seen at
    least ``min_count`` times; id 0 stands for every other one."""

    def __init__(self, texts, min_count=20):
        counts = collections.Counter("".join(texts))
        self.chars = ["\ufffd"] + sorted(c for c, n in counts.items()
                                         if n >= min_count)
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, texts, length=LENGTH):
        """Right-padded ids and attention mask, (n, length)."""
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, t in enumerate(texts):
            row = [self.index.get(c, 0) for c in t[:length]]
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def build(vocab):
    import transformers
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=LENGTH, n_embd=128, n_layer=4,
        n_head=4))


def train(chars, texts, steps, batch=64, seed=0):
    """AdamW with a cosine schedule on random 64-character windows of the
    training tweets."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(len(chars.chars))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps,
                                                pct_start=0.05)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        pick = rng.integers(0, len(texts), batch)
        windows = []
        for i in pick:
            t = texts[i]
            start = rng.integers(0, max(1, len(t) - LENGTH + 1))
            windows.append(t[start:start + LENGTH])
        enc = chars.encode(windows)
        ids = torch.from_numpy(enc["input_ids"])
        mask = torch.from_numpy(enc["attention_mask"])
        out = model(input_ids=ids, attention_mask=mask,
                    labels=ids.masked_fill(mask == 0, -100))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step}: loss {out.loss.item():.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval(), time.perf_counter() - t0


def nll(logits, enc):
    """Mean negative log-likelihood per predicted character (positions 1
    to count - 1 of each text) and the argmax at each predicting
    position."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    ids = torch.from_numpy(enc["input_ids"])
    mask = torch.from_numpy(enc["attention_mask"]).bool()
    logp = torch.log_softmax(logits[:, :-1], -1)
    target = ids[:, 1:]
    keep = mask[:, 1:]
    picked = logp.gather(-1, target[..., None])[..., 0]
    return float(-picked[keep].mean()), logits[:, :-1].argmax(-1), keep


def stage_errors(net, hidden, mask):
    """Relative error ``||decoded - exact|| / ||exact||`` of each kind of
    population (the engine's spikes against the exact captured model;
    unmasked logits only), over texts of full length, in graph order:
    kind -> error."""
    from lava_spiked import Engine
    from lava_spiked.capture import run_graph

    exact = {}
    run_graph(net.graph, torch.from_numpy(hidden), lambda name, v:
              exact.__setitem__(name, v.numpy()),
              torch.from_numpy(mask))
    from lava_spiked.numerics import phase

    result = Engine(net, "fixed")(hidden, attention_mask=mask, warn=False)
    plan = net.plan
    layers = {layer.name for layer in plan.layers}
    sums = collections.defaultdict(lambda: [0.0, 0.0])
    for name, steps in result.steps.items():
        if name not in exact:
            continue  # the softmax has no exact counterpart
        sigma = plan[name].scale if name in layers else \
            plan.attention_of(name.rsplit(":", 1)[0]).logit_scale.ravel()
        got = phase.decode(steps.numpy(), result.signs[name].numpy(),
                           plan.B, sigma)
        want = exact[name].reshape(got.shape)
        role = "logits" if ":" in name else \
            name.split(".")[-1].rstrip("_0123456789")
        # a masked logit is 0 in the exact model and fires unread
        keep = want != 0 if role == "logits" else np.ones(want.shape, bool)
        sums[role][0] += float(((got - want)[keep] ** 2).sum())
        sums[role][1] += float((want[keep] ** 2).sum())
    return {role: (d / w) ** 0.5 for role, (d, w) in sums.items() if w}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--T", type=int, default=40)
    parser.add_argument("--B", type=float, default=1.15)
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--center", action="store_true",
                        help="convert with center_logits=True")
    parser.add_argument("--lava", action="store_true",
                        help="only the Lava generation check")
    args = parser.parse_args(argv)

    from lava_spiked import Engine
    from lava_spiked.huggingface import convert, embed, generate
    from lava_spiked.bundled.text_data import tweets

    torch.set_num_threads(2)
    train_texts, _ = tweets("train")
    chars = Chars(train_texts)
    if args.train or not CHECKPOINT.exists():
        model, train_s = train(chars, train_texts, args.steps)
        torch.save({"state_dict": model.state_dict(), "chars": chars.chars,
                    "steps": args.steps, "train_s": train_s}, CHECKPOINT)
    saved = torch.load(CHECKPOINT, weights_only=False)
    if saved["chars"] != chars.chars:
        sys.exit("the checkpoint's vocabulary is not this corpus's: "
                 "--train again")
    model = build(len(chars.chars))
    model.load_state_dict(saved["state_dict"])
    model.eval()

    cal_texts, _ = tweets("calibration")
    test_texts, _ = tweets("test")
    command = " ".join(["python benchmarks/gpt2_tweets.py"] +
                       (argv or sys.argv[1:]))
    heading = (f"`{command}` ({time.strftime('%Y-%m-%d')}, "
               f"{platform.processor() or platform.machine()}, "
               f"torch {torch.__version__}, transformers "
               f"{transformers.__version__}; checkpoint: {saved['steps']} "
               f"steps, {saved['train_s']:.0f} s of training)\n")
    if args.lava:
        return record(lava_check(model, chars, cal_texts, test_texts, args,
                                 heading))
    t0 = time.perf_counter()
    net = convert(model, chars.encode(cal_texts[:args.calibration]), LENGTH,
                  T=args.T, B=args.B, center_logits=args.center,
                  progress=False)
    convert_s = time.perf_counter() - t0
    enc = chars.encode(test_texts[:args.texts])
    with torch.no_grad():
        ann = model(**{k: torch.from_numpy(v) for k, v in enc.items()}
                    ).logits.double().numpy()
    hidden, mask = embed(model, enc, LENGTH)
    engine = Engine(net, "fixed")
    t0 = time.perf_counter()
    snn = np.concatenate([
        engine(hidden[i:i + 64], attention_mask=mask[i:i + 64],
               warn=False).logits.numpy()
        for i in range(0, len(hidden), 64)])
    engine_s = time.perf_counter() - t0
    ann_nll, ann_next, keep = nll(ann, enc)
    snn_nll, snn_next, _ = nll(snn, enc)
    agree = float((ann_next == snn_next)[keep].double().mean())

    full = enc["attention_mask"].all(1)
    errors = stage_errors(net, hidden[full][:32], mask[full][:32])

    # greedy generation from the first 16 characters of test tweets
    prompts = chars.encode(test_texts[:args.prompts], PROMPT)
    long_enough = prompts["attention_mask"].all(1)
    prompts = {k: v[long_enough] for k, v in prompts.items()}
    snn_texts = generate(net, model, prompts, NEW, progress=False)
    with torch.no_grad():
        ann_out = model.generate(
            torch.from_numpy(prompts["input_ids"]), max_new_tokens=NEW,
            do_sample=False, attention_mask=torch.from_numpy(
                prompts["attention_mask"]), pad_token_id=0)
    same = []
    for a, s in zip(ann_out.numpy()[:, PROMPT:], snn_texts):
        s = s[PROMPT:]
        diff = np.nonzero(a != s)[0]
        same.append(int(diff[0]) if len(diff) else NEW)

    lines = [f"\n## T = {args.T}, B = {args.B}"
             f"{', logits centred' if args.center else ''}\n",
             heading,
             f"- converted on {args.calibration} calibration tweets in "
             f"{convert_s:.1f} s: {len(net.plan.layers)} populations, "
             f"{net.num_steps} steps per text",
             f"- {len(enc['input_ids'])} test tweets (first {LENGTH} "
             f"characters), {int(keep.sum())} predicted characters",
             f"- perplexity per character: ANN {np.exp(ann_nll):.3f}, SNN "
             f"{np.exp(snn_nll):.3f} (x{np.exp(snn_nll - ann_nll):.3f})",
             f"- next-character agreement SNN vs ANN: {100 * agree:.1f} %",
             f"- greedy generation, {len(same)} prompts of {PROMPT} "
             f"characters, {NEW} new: on average {np.mean(same):.1f} "
             f"characters equal the ANN's before the first difference; "
             f"{sum(s == NEW for s in same)} prompts all {NEW}",
             f"- engine: {engine_s:.1f} s for the test texts",
             "- relative error of each kind of population (engine spikes "
             "vs the exact model, 32 texts of 64 characters): " +
             ", ".join(f"{k} {100 * v:.1f} %" for k, v in errors.items())]
    for i in range(3):
        lines.append(f"- sample: {chars.decode(prompts['input_ids'][i])!r}"
                     f" -> ANN {chars.decode(ann_out[i, PROMPT:].numpy())!r}"
                     f", SNN {chars.decode(snn_texts[i][PROMPT:])!r}")
    record(lines)


def lava_check(model, chars, cal_texts, test_texts, args, heading):
    """20 greedy characters after one prompt, in Lava and on the engine,
    with the model converted for exactly the prompt and those characters
    (each Lava run costs time in proportion to the network's length)."""
    from lava_spiked.huggingface import convert, generate
    from lava_spiked.lava_backend.imports import Loihi2SimCfg

    length = PROMPT + NEW
    net = convert(model, chars.encode(cal_texts[:args.calibration], length),
                  length, T=args.T, B=args.B, center_logits=args.center,
                  progress=False)
    prompt = chars.encode(test_texts[:1], PROMPT)
    want = generate(net, model, prompt, NEW, progress=False)[0]
    t0 = time.perf_counter()
    with net:
        got = generate(net, model, prompt, NEW,
                       run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))[0]
    seconds = time.perf_counter() - t0
    same = np.array_equal(got, want)
    return [f"\n## Lava, T = {args.T}, B = {args.B}"
            f"{', logits centred' if args.center else ''}\n",
            heading,
            f"- converted for {length} characters: "
            f"{len(net.plan.layers)} populations, {net.num_steps} steps "
            f"per run",
            f"- prompt {chars.decode(prompt['input_ids'][0])!r}; {NEW} "
            f"greedy characters in Lava (fixed_pt): "
            f"{chars.decode(got[PROMPT:])!r}",
            "- " + ("the engine's, character for character"
                    if same else "NOT the engine's: "
                    f"{chars.decode(want[PROMPT:])!r}"),
            f"- Lava: {seconds:.0f} s for {NEW} runs "
            f"({seconds / NEW:.0f} s per character)"]


def record(lines):
    """Print ``lines`` and append them to the results file."""
    text = "\n".join(lines) + "\n"
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Character-level GPT-2 on tweets: ANN vs SNN\n\n"
                           + "\n\n".join(__doc__.split("\n\n")[1:4]) +
                           "\n")
    with RESULTS.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
