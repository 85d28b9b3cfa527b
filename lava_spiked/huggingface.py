"""Hugging Face ``transformers`` models as phase-coded networks: encoders
(BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA, ALBERT, MiniLM, ...) and
causal decoders (GPT-2), bare or with their heads, under any attention
implementation (``eager``, ``sdpa``).

Boundary
--------
The input encoder is the model's embedding stage, a table lookup per token
and not a spiking computation: its ``embeddings`` module where it has one
(word, position and token-type lookups and their LayerNorm; ALBERT's and
ELECTRA's narrower embeddings), else its word-embedding lookup
(``model.get_input_embeddings()``: GPT-2's position embeddings then are a
constant the network adds). :func:`embed` computes it in torch, as the
model does, positions and token types included.

Everything after it is converted: the model itself, called with
``inputs_embeds=`` and its embedding stage passing them through
(:func:`body`), so that each model's own layers and head are what converts
(BERT's pooler, RoBERTa's dense + tanh head on the first token,
DistilBERT's pre-classifier + ReLU, a tied language-model head), never a
copy of them written here.

Padding contract
----------------
A network is converted for a fixed number of tokens ``length``. Shorter
inputs are padded, and ``attention_mask`` (one value per token and
sample, 1 = a real token) is a **runtime input** of the Plan, set per sample
(in Lava, the WOSS softmax's mask Vars are set before each sample; nothing
is rebuilt):

- in every attention a padded key never fires in the softmax (in a causal
  decoder they come after every real query, which never sees them anyway);
- with ``pooling="mean"`` the pooled population's padded tokens never fire
  and the readout is divided by the number of real tokens instead of
  ``length`` (a per-sample non-spike division, on the decoded logits);
- the real tokens come first whichever side the tokenizer padded, and a
  padded position carries a copy of a real token's embedding (position
  ``p`` of a text of ``count`` tokens holds token ``p mod count``), so its
  activations, which no real token reads, look like real ones: the
  calibration's statistics are those of real tokens, and a padded position
  never clips.

So the logits of a text do not depend on how it was padded (tested); a
per-token output (hidden states, a language model's logits) is the real
tokens' in its first ``count`` positions.
"""
import copy
import inspect
import typing as ty

import numpy as np
import torch
from torch import nn

from lava_spiked.capture import UnsupportedModelError
from lava_spiked.capture.frontend import WRAPPED, eval_mode

POOLINGS = ("mean", "first", "pooler")


def _check_model(model: ty.Any) -> nn.Module:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a Hugging Face transformers "
            "model; convert other PyTorch models with lava_spiked.convert")
    return model


def _embedding_stage(model: nn.Module) -> ty.Tuple[nn.Module, bool]:
    """The module whose output is the network's input, and whether it is
    the model's ``embeddings`` module (else the word-embedding lookup)."""
    base = model.base_model
    stage = getattr(base, "embeddings", None)
    if isinstance(stage, nn.Module):
        return stage, True
    return base.get_input_embeddings(), False


class _Given(nn.Module):
    """An embedding stage that passes on the embeddings it is given (the
    one float tensor among its arguments)."""

    def forward(self, *args: ty.Any, **kwargs: ty.Any) -> torch.Tensor:
        given = [a for a in list(args) + list(kwargs.values())
                 if torch.is_tensor(a) and a.is_floating_point()]
        if len(given) != 1:
            raise UnsupportedModelError(
                f"the model calls its embeddings module with "
                f"{len(given)} float tensors; expected the inputs_embeds "
                "alone")
        return given[0]


def _with_child(module: nn.Module, name: str, child: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with submodule ``name`` replaced; the
    parameters and every other submodule are shared, the original is
    untouched."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    twin._modules[name] = child
    return twin


class Body(nn.Module):
    """The converted part of a Hugging Face model, fed with the embedding
    stage's output (batch, length, width).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Shared, not changed: the body calls a shallow copy of it whose
        embeddings module passes its input through.
    head : torch.nn.Module, optional
        For a bare model (``model.base_model is model``): pooled features
        (batch, hidden) -> logits. Without it the body returns the last
        hidden states; a model with a head of its own returns its logits.
    pooling : {'mean', 'first', 'pooler'}, optional
        How ``head`` pools: the mean over real tokens, the first token, or
        the model's own pooler output (BERT's Linear and tanh on the first
        token).
    """

    def __init__(self, model: nn.Module, head: ty.Optional[nn.Module] = None,
                 pooling: ty.Optional[str] = None):
        super().__init__()
        stage, own = _embedding_stage(model)
        inner = model
        if own:
            base = _with_child(model.base_model, "embeddings", _Given())
            inner = base if model.base_model is model else _with_child(
                model, model.base_model_prefix, base)
        # held under capture's wrapper name, so that populations are named
        # by the model's own module paths
        self.add_module(WRAPPED, inner)
        self.head, self.pooling = head, pooling

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # no attention mask: padded keys are masked at run time (module
        # docstring)
        out = getattr(self, WRAPPED)(inputs_embeds=hidden)
        if self.head is None:
            return out[0]
        if self.pooling == "pooler":
            pooled = out.pooler_output
        else:
            h = out.last_hidden_state
            pooled = h.mean(1) if self.pooling == "mean" else h[:, 0]
        return self.head(pooled)


def embed(model: nn.Module, encodings: ty.Mapping[str, ty.Any],
          length: int) -> ty.Tuple[np.ndarray, np.ndarray]:
    """The input encoder: tokenizer output -> the network's inputs.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    encodings : mapping
        A tokenizer's output for a batch: ``input_ids`` and
        ``attention_mask`` (``token_type_ids`` where the model takes them),
        (batch, tokens) with at most ``length`` real tokens each.
    length : int
        Tokens of the converted network.

    Returns
    -------
    hidden : numpy.ndarray
        (batch, length, width) embedding-stage outputs, float64, padded as
        the module docstring says.
    attention_mask : numpy.ndarray of int64
        (batch, length), 1 for real tokens (which come first).

    Raises
    ------
    ValueError
        On missing keys, a text longer than ``length`` or a text without
        tokens.
    """
    _check_model(model)
    missing = {"input_ids", "attention_mask"} - set(encodings)
    if missing:
        raise ValueError(
            f"the encodings lack {sorted(missing)} (they have "
            f"{sorted(encodings)}); pass a tokenizer's output, e.g. "
            "tokenizer(texts, padding=True, return_tensors='pt')")
    try:
        ids = torch.as_tensor(np.asarray(encodings["input_ids"]))
        mask = torch.as_tensor(np.asarray(encodings["attention_mask"]))
    except ValueError:
        raise ValueError("the encodings have texts of different lengths: "
                         "tokenize with padding=True") from None
    if ids.shape != mask.shape or ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(ids.shape)} and attention_mask "
                         f"{tuple(mask.shape)} must both be (batch, tokens)")
    count = mask.sum(1)
    if int(count.max()) > length:
        raise ValueError(
            f"a text has {int(count.max())} tokens, but the network was "
            f"converted for {length}: truncate (tokenizer(..., "
            f"truncation=True, max_length={length})) or convert for more")
    if int(count.min()) < 1:
        raise ValueError("a text has no tokens (its attention_mask is all "
                         "0)")
    # real tokens first, padding after them (a tokenizer may pad left)
    order = torch.argsort(1 - mask, dim=1, stable=True)
    width = min(ids.shape[1], length)
    inputs = {"input_ids": ids.gather(1, order)[:, :width],
              "attention_mask": mask.gather(1, order)[:, :width]}
    if encodings.get("token_type_ids") is not None:
        types = torch.as_tensor(np.asarray(encodings["token_type_ids"]))
        inputs["token_type_ids"] = types.gather(1, order)[:, :width]
    h = _stage_output(model, inputs).double()
    # position p holds real token p mod count
    src = torch.arange(length)[None, :] % count[:, None]
    hidden = h.gather(1, src[..., None].expand(-1, -1, h.shape[-1]))
    valid = (torch.arange(length)[None, :] < count[:, None]).long()
    return hidden.numpy(), valid.numpy()


class _Stop(Exception):
    """Ends a forward pass once the embedding stage has run."""


def _stage_output(model: nn.Module, inputs: ty.Dict[str, torch.Tensor]
                  ) -> torch.Tensor:
    """The embedding stage's output as the model computes it from
    ``inputs`` (its own position ids, token types and padding rules), by
    running the model up to that stage."""
    stage, _ = _embedding_stage(model)
    accepted = inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in inputs.items() if k in accepted}
    got = []

    def grab(module, args, output):
        got.append(output)
        raise _Stop

    handle = stage.register_forward_hook(grab)
    try:
        with torch.no_grad(), eval_mode(model):
            model(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise UnsupportedModelError(
            f"{type(model).__name__} never called its embedding stage "
            f"{type(stage).__name__}")
    return got[0]


def convert(model: nn.Module, encodings: ty.Mapping[str, ty.Any],
            length: int, head: ty.Optional[nn.Module] = None,
            pooling: ty.Optional[str] = None, **kwargs):
    """Convert a Hugging Face transformer into a spiking network.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        An encoder or decoder, bare (``BertModel``, ``GPT2Model``) or with
        its head (``*ForSequenceClassification``, ``GPT2LMHeadModel``);
        unchanged, evaluated in eval mode.
    encodings : mapping
        Tokenizer output of the calibration texts (kept apart from the
        evaluation texts).
    length : int
        Tokens per input of the network (e.g. 64).
    head : torch.nn.Module, optional
        For a bare model only: pooled features -> logits (e.g. a linear
        probe). Without it a bare model's network outputs its last hidden
        states, token by token; a model with a head outputs its logits (a
        language model's at every position).
    pooling : {'mean', 'first', 'pooler'}, optional
        With ``head``: the mean over real tokens (default), the first
        token, or the model's pooler output.
    **kwargs
        Passed to :func:`lava_spiked.convert` (``B``, ``T``, ``statistic``,
        ``progress``, ...).

    Returns
    -------
    SpikingNetwork
        Its inputs are :func:`embed`'s: ``net.infer(hidden, cfg,
        attention_mask=mask)``, ``Engine(net)(hidden,
        attention_mask=mask)``.
    """
    from lava_spiked.conversion import convert as convert_module

    _check_model(model)
    if model.base_model is not model and head is not None:
        raise ValueError(f"{type(model).__name__} has a head of its own; "
                         f"head= is for a bare model such as "
                         f"{type(model.base_model).__name__}")
    if pooling is not None and head is None:
        raise ValueError("pooling= says how head= pools; pass a head")
    if head is not None:
        pooling = pooling or "mean"
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got "
                             f"{pooling!r}")
    hidden, mask = embed(model, encodings, length)
    return convert_module(Body(model, head, pooling), hidden,
                          attention_mask=mask, mean_pool=pooling == "mean",
                          **kwargs)


#: The name this module's converter had when it took BERT only.
convert_bert = convert


def generate(net, model: nn.Module, encodings: ty.Any,
             max_new_tokens: int = 20, do_sample: bool = False,
             temperature: float = 1.0, top_k: ty.Optional[int] = None,
             seed: ty.Optional[int] = None,
             eos_token_id: ty.Optional[int] = None, run_cfg: ty.Any = None,
             mode: str = "fixed", progress: bool = True
             ) -> ty.List[np.ndarray]:
    """Continue texts with a converted causal language model, one run of
    the spiking network per new token.

    Each step embeds every text so far (:func:`embed`; the network's
    ``length`` tokens hold the text and then padding, which the causal mask
    keeps from every real position), runs the network, reads the logits at
    the text's last position and appends the next token: the most likely
    one, or with ``do_sample`` one drawn from ``softmax(logits /
    temperature)`` over the ``top_k`` most likely (the draw is the only
    non-spike step, as decoding logits is).

    Parameters
    ----------
    net : SpikingNetwork
        From :func:`convert` of a model with a language-model head
        (``GPT2LMHeadModel``): logits at every position.
    model : transformers.PreTrainedModel
        The converted model, for its embedding stage.
    encodings : mapping or array_like
        A tokenizer's output (``input_ids`` and ``attention_mask``) or a
        (batch, tokens) array of token ids, every one real.
    max_new_tokens : int
        Tokens to add to each text (fewer where ``eos_token_id`` comes).
    do_sample, temperature, top_k, seed
        Sampling instead of greedy choice, as in ``transformers``'
        ``generate``; ``seed`` seeds numpy's generator.
    eos_token_id : int, optional
        A text ends after this token.
    run_cfg : lava RunConfig, optional
        Run in Lava with it (``Loihi2SimCfg(select_tag="fixed_pt")``; the
        network keeps running between tokens: use ``with net:``); default
        the engine in ``mode``.
    mode : {'fixed', 'float'}
        The engine's arithmetic, without ``run_cfg``.

    Returns
    -------
    list of numpy.ndarray
        Per text, its token ids followed by the new ones.

    Raises
    ------
    ValueError
        If the network has no logits at every position, or a text and its
        new tokens do not fit in its ``length`` tokens.
    """
    from lava_spiked.engine import Engine
    from lava_spiked.progress import bar

    length = net.plan.tokens
    out_shape = net.plan[net.plan.output].shape
    if not length or len(out_shape) != 2 or out_shape[0] != length:
        raise ValueError(
            f"generate needs a language model's network (logits at each of "
            f"its tokens), not one whose output is {tuple(out_shape)}; "
            "convert a model such as GPT2LMHeadModel")
    if isinstance(encodings, ty.Mapping):
        ids = np.asarray(encodings["input_ids"])
        mask = np.asarray(encodings.get("attention_mask", np.ones_like(ids)))
    else:
        ids = np.asarray(encodings)
        mask = np.ones_like(ids)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"token ids must be (batch, tokens), got shape "
                         f"{ids.shape}")
    texts = [list(row[m == 1]) for row, m in zip(ids, mask)]
    longest = max(len(t) for t in texts)
    if longest + max_new_tokens > length:
        raise ValueError(
            f"a text of {longest} tokens and {max_new_tokens} new ones do "
            f"not fit in the network's {length} tokens: convert for more "
            "or ask for fewer")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    engine = Engine(net, mode) if run_cfg is None else None
    done = [False] * len(texts)
    for _ in bar(range(max_new_tokens), "generating", progress):
        if all(done):
            break
        enc = {"input_ids": np.array([t + [0] * (length - len(t))
                                      for t in texts]),
               "attention_mask": np.array([[1] * len(t) + [0] * (
                   length - len(t)) for t in texts])}
        hidden, valid = embed(model, enc, length)
        logits = np.asarray(
            engine(hidden, attention_mask=valid, warn=False).logits
            if engine is not None else
            net.infer(hidden, run_cfg, progress=False, attention_mask=valid))
        for i, text in enumerate(texts):
            if done[i]:
                continue
            token = _next_token(logits[i, len(text) - 1], do_sample,
                                temperature, top_k, rng)
            text.append(token)
            done[i] = token == eos_token_id
    return [np.array(t, dtype=np.int64) for t in texts]


def _next_token(logits: np.ndarray, do_sample: bool, temperature: float,
                top_k: ty.Optional[int], rng: np.random.Generator) -> int:
    if not do_sample:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))
