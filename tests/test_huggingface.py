"""Hugging Face BERT: converted unchanged, with the attention mask as a
per-sample runtime input (random small configs; the tokenizer is
MiniLM's, offline)."""
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked import Engine, UnsupportedModelError
from lava_spiked.bundled.text_data import load_minilm
from lava_spiked.capture import run_graph
from lava_spiked.huggingface import convert, convert_bert, embed

transformers = pytest.importorskip("transformers")

TEXTS = ["what a lovely day", "this is the worst service I have ever had",
         "ok", "can't wait to see you all tomorrow at the beach!!",
         "meh", "so tired of waiting in line", "love it", "no"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_minilm()[1]


def _config(layers=1):
    return transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=3)


def _classifier(layers=1):
    """A random small BERT; its LayerNorms get random gamma and beta (the
    default 1 and 0 would hide how they fold)."""
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(_config(layers))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    return model.double().eval()


def _assert_lava_is_the_engine(net, hidden, mask):
    """Lava fixed_pt, one sample after another with its own mask, equals
    the engine bit for bit."""
    from lava_spiked.lava_backend.imports import Loihi2SimCfg

    with net:
        got = net.infer(hidden, Loihi2SimCfg(select_tag="fixed_pt"),
                        attention_mask=mask, progress=False)
    want = Engine(net, "fixed")(hidden, attention_mask=mask,
                                warn=False).logits.numpy()
    np.testing.assert_array_equal(got, want)


def test_capture_equals_the_model_with_its_attention_mask(tokenizer):
    """The converted body, fed the embedding output and the token mask,
    computes what BertForSequenceClassification computes from the token
    ids and attention mask (pooler path) and what a BertModel with a
    mean-pooled head computes (mean over real tokens)."""
    model = _classifier(layers=2)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    net = convert(model, enc, length=16, progress=False)
    hidden, mask = embed(model, enc, 16)
    with torch.no_grad():
        want = model(**enc).logits.numpy()
    got = run_graph(net.graph, torch.from_numpy(hidden),
                    attention_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)

    head = nn.Linear(16, 2).double()
    bare = model.bert
    net = convert(bare, enc, length=16, head=head, progress=False)
    with torch.no_grad():
        h = bare(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].double()
        want = head((h * m).sum(1) / m.sum(1)).numpy()
    got = run_graph(net.graph, torch.from_numpy(hidden),
                    attention_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)
    assert net.plan.mean_pool and net.plan.tokens == 16


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_padding_never_changes_the_logits(tokenizer, pooling):
    """A text padded to 16 or to 24 tokens by the tokenizer, or with
    garbage in its padded positions, gives the same SNN logits bit for bit
    (padded keys never fire; padded tokens are not pooled); the engine
    equals the integer golden model."""
    model = _classifier()
    kw = dict(head=nn.Linear(16, 2).double(), pooling="mean") \
        if pooling == "mean" else {}
    target = model.bert if pooling == "mean" else model
    net = convert(target, tokenizer(TEXTS, padding=True), length=24,
                  progress=False, **kw)
    engine = Engine(net, "fixed")
    runs = []
    for width in (16, 24):
        enc = tokenizer(TEXTS[:4], padding="max_length", max_length=width)
        hidden, mask = embed(target, enc, 24)
        runs.append(engine(hidden, attention_mask=mask, warn=False).logits)
    garbage = hidden.copy()
    garbage[mask == 0] = np.random.default_rng(0).normal(
        0, 5, garbage[mask == 0].shape)
    runs.append(engine(garbage, attention_mask=mask, warn=False).logits)
    for other in runs[1:]:
        np.testing.assert_array_equal(other.numpy(), runs[0].numpy())
    for i in range(2):
        np.testing.assert_array_equal(
            net.golden_fixed(garbage[i], mask[i]), runs[0][i].numpy())


def test_bert_layer_in_lava_matches_the_engine_with_per_sample_masks(
        tokenizer):
    """Two samples of different lengths one after another in one running
    Lava network: the masks are set per sample, nothing is rebuilt, and
    fixed_pt equals the engine bit for bit."""
    model = _classifier()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=8)
    net = convert(model, enc, length=8, T=12, B=1.4, progress=False)
    hidden, mask = embed(model, tokenizer(TEXTS[:2], padding=True,
                                          truncation=True, max_length=8), 8)
    assert mask.sum(1).tolist() == [6, 8]
    _assert_lava_is_the_engine(net, hidden, mask)


def test_verify_takes_the_attention_mask(tokenizer):
    """lava_spiked.verify on a mean-pooled BERT: Lava, engine and exact
    model agree layer by layer with per-sample masks."""
    from lava_spiked import verify

    model = _classifier()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=8)
    net = convert(model.bert, enc, length=8,
                  head=nn.Linear(16, 2).double(),
                  T=12, B=1.4, progress=False)
    hidden, mask = embed(model, enc, 8)
    report = verify(net, hidden, k=2, attention_mask=mask, progress=False)
    assert report.lava_vs_engine == 0.0
    assert all(c.lava_equal == 1.0 for c in report.layers)
    assert report.layers and report.snn_vs_ann < 0.5


def test_convert_bert_is_the_old_name_of_convert():
    assert convert_bert is convert


def test_bad_inputs_name_the_problem(tokenizer):
    model = _classifier()
    enc = tokenizer(TEXTS, padding=True)
    with pytest.raises(ValueError, match=r"lack \['attention_mask'\]"):
        embed(model, {"input_ids": enc["input_ids"]}, 24)
    with pytest.raises(ValueError, match="padding=True"):
        embed(model, tokenizer(TEXTS), 24)
    with pytest.raises(ValueError, match="has 16 tokens, but the network "
                                         "was converted for 8"):
        embed(model, enc, 8)
    with pytest.raises(UnsupportedModelError, match="Linear is not a "
                                                    "Hugging Face"):
        embed(nn.Linear(2, 2), enc, 24)
    net = convert(model, enc, length=16, progress=False)
    hidden, mask = embed(model, enc, 16)
    with pytest.raises(ValueError, match="takes attention_mask="):
        Engine(net)(hidden)
    with pytest.raises(ValueError, match=r"shape \(8, 15\), expected "
                                         r"\(8, 16\)"):
        Engine(net)(hidden, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="has a head of its own; head= is "
                                         "for a bare model such as "
                                         "BertModel"):
        convert(model, enc, length=16, head=nn.Linear(16, 3))
    with pytest.raises(ValueError, match="pooling= says how head= pools"):
        convert(model.bert, enc, length=16, pooling="mean")


@pytest.mark.slow
def test_one_minilm_layer_in_lava_is_bit_exact_with_the_engine():
    """One full layer of the real all-MiniLM-L6-v2 (d = 384, 12 heads,
    16 tokens, LayerNorm and GELU, its pretrained weights) with mean
    pooling and the shipped sentiment head, in Lava under fixed_pt on one
    tweet: bit for bit the engine."""
    import copy

    from lava_spiked.bundled.text_data import sentiment_head, tweets

    model, tok = load_minilm()
    one = copy.deepcopy(model)
    one.encoder.layer = one.encoder.layer[:1]
    cfg = one.config
    assert (cfg.hidden_size, cfg.num_attention_heads) == (384, 12)
    cal, _ = tweets("calibration")
    kw = dict(padding=True, truncation=True, max_length=16)
    net = convert(one, tok(cal[:64], **kw), length=16,
                  head=sentiment_head(), progress=False)
    text, _ = tweets("test")
    hidden, mask = embed(one, tok(text[:1], **kw), 16)
    assert hidden.shape == (1, 16, 384)
    _assert_lava_is_the_engine(net, hidden, mask)


def test_export_cli_converts_a_checkpoint_directory(tokenizer, tmp_path,
                                                    capsys):
    """python -m lava_spiked.export CHECKPOINT OUT.h5 --calibration FILE:
    the saved file runs on the engine as the network converted in
    Python; a bare BertModel checkpoint and a missing calibration file
    are refused with what to do instead."""
    from lava_spiked import export
    from lava_spiked.export.__main__ import main as export_main

    model = _classifier().float()
    model.save_pretrained(tmp_path / "ckpt")
    cal = tokenizer(TEXTS * 4, padding="max_length", max_length=16,
                    truncation=True, return_tensors="np")
    np.savez(tmp_path / "cal.npz", **cal)
    out = tmp_path / "bert.h5"
    export_main([str(tmp_path / "ckpt"), str(out), "--calibration",
                 str(tmp_path / "cal.npz"), "--T", "16", "--B", "1.4"])
    assert "neurons" in capsys.readouterr().out
    want = convert(model, cal, length=16, T=16, B=1.4, progress=False)
    hidden, mask = embed(model, tokenizer(TEXTS[:3], padding=True),
                         length=16)
    np.testing.assert_array_equal(
        Engine(export.load(out), "fixed")(hidden, attention_mask=mask,
                                          warn=False).logits.numpy(),
        Engine(want, "fixed")(hidden, attention_mask=mask,
                              warn=False).logits.numpy())
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "ckpt"), str(out)])
    assert "needs --calibration" in capsys.readouterr().err
    transformers.BertModel(_config()).save_pretrained(tmp_path / "bare")
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "bare"), str(out), "--calibration",
                     str(tmp_path / "cal.npz")])
    assert "names ending in ForSequenceClassification" in \
        capsys.readouterr().err


def _gpt2(layers=1):
    """A random small GPT2LMHeadModel (vocabulary 50, 8 positions) whose
    LayerNorms are not the identity."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_layer=layers, n_head=2, n_positions=8))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    return model.eval()


def _prompts(n, seed, length=8):
    rng = np.random.default_rng(seed)
    count = rng.integers(2, length + 1, n)
    mask = (np.arange(length)[None, :] < count[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(0, 50, (n, length)) * mask,
            "attention_mask": mask}


def test_greedy_generation_is_what_one_run_on_the_result_predicts():
    """Greedy tokens made one run per token equal the argmax of one run
    on the finished texts at each position before them: a decoder's logits
    at a position do not depend on what follows (the causal mask, with the
    padding after each text); texts of different lengths in one batch."""
    from lava_spiked.huggingface import generate

    model = _gpt2(layers=2)
    net = convert(model, _prompts(32, 0), length=8, progress=False)
    prompts = {k: v[:, :4] for k, v in _prompts(3, 1, 4).items()}
    texts = generate(net, model, prompts, max_new_tokens=4, progress=False)
    counts = prompts["attention_mask"].sum(1)
    assert [len(t) for t in texts] == list(counts + 4)
    full = {"input_ids": np.array([np.pad(t, (0, 8 - len(t)))
                                   for t in texts]),
            "attention_mask": np.array([[1] * len(t) + [0] * (8 - len(t))
                                        for t in texts])}
    hidden, mask = embed(model, full, 8)
    logits = Engine(net, "fixed")(hidden, attention_mask=mask,
                                  warn=False).logits.numpy()
    for i, text in enumerate(texts):
        c = counts[i]
        np.testing.assert_array_equal(
            text[c:], logits[i, c - 1:len(text) - 1].argmax(-1))
        np.testing.assert_array_equal(
            text[:c], prompts["input_ids"][i][:c])
    # sampling from the top 1 is greedy; a seed repeats a draw
    again = generate(net, model, prompts, 4, do_sample=True, top_k=1,
                     seed=3, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(again, texts))
    draws = [generate(net, model, prompts, 4, do_sample=True,
                      temperature=5.0, seed=7, progress=False)
             for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*draws))


def test_generate_names_what_does_not_fit():
    from lava_spiked.huggingface import generate

    model = _gpt2()
    net = convert(model, _prompts(16, 0), length=8, progress=False)
    with pytest.raises(ValueError, match="a text of 6 tokens and 3 new "
                                         "ones do not fit in the network's "
                                         "8 tokens"):
        generate(net, model, np.zeros((1, 6), dtype=np.int64), 3)
    classifier = _classifier()
    enc = {"input_ids": np.ones((4, 8), dtype=np.int64),
           "attention_mask": np.ones((4, 8), dtype=np.int64)}
    other = convert(classifier, enc, length=8, progress=False)
    with pytest.raises(ValueError, match=r"generate needs a language "
                                         r"model's network .* output is "
                                         r"\(3,\)"):
        generate(other, classifier, enc, 1)


@pytest.mark.slow
def test_tokens_generated_in_lava_are_the_engines():
    """Three greedy tokens from a one-layer GPT-2 in Lava (fixed_pt, one
    run per token in one running network) equal the engine's."""
    from lava_spiked.huggingface import generate
    from lava_spiked.lava_backend.imports import Loihi2SimCfg

    model = _gpt2()
    net = convert(model, _prompts(16, 0, 6), length=6, T=12, B=1.4,
                  progress=False)
    prompt = np.array([[5, 17, 3]])
    want = generate(net, model, prompt, 3, progress=False)
    with net:
        got = generate(net, model, prompt, 3, progress=False,
                       run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    np.testing.assert_array_equal(got[0], want[0])
    assert len(got[0]) == 6


def test_B_auto_through_the_hugging_face_entry_and_loihi2(tokenizer):
    """``huggingface.convert(B='auto', target='loihi2')`` chooses B on the
    embedded calibration tweets with their token masks, in Loihi 2's
    formats: each recorded error is the readout error of the network
    recoded at that B, measured with the masks."""
    from lava_spiked.code_error import readout_error

    model = _classifier(layers=1)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    net = convert(model, enc, length=16, B=(1.2, 1.3, 1.4), T=16,
                  target="loihi2", progress=False)
    choice = net.plan.code_choice
    assert net.plan.target == "loihi2" and choice.samples == len(TEXTS)
    assert net.B == choice.grid[int(np.argmin(choice.errors))]
    hidden, mask = embed(model, enc, 16)
    for b, err in zip(choice.grid, choice.errors):
        other = net.recode(b)
        assert other.plan.target == "loihi2"
        np.testing.assert_allclose(readout_error(other, hidden, mask), err,
                                   rtol=1e-9)
    # the masks matter: without them the padded keys would fire
    assert readout_error(net, hidden, np.ones_like(mask)) != \
        pytest.approx(min(choice.errors), rel=1e-6)
