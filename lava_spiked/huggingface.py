"""Hugging Face BERT models (BERT, MiniLM, ...) as phase-coded networks.

Boundary
--------
The spiking network starts at the output of ``BertEmbeddings``: the word,
position and token-type embedding lookup and its LayerNorm are the input
encoder's job (a table lookup per token, not a spiking computation), done
here in torch by :func:`embed`. Everything after it, every encoder layer
(attention, LayerNorm, GELU), the pooling and the classifier, is converted.

Padding contract
----------------
A network is converted for a fixed number of tokens ``length``. Shorter
inputs are padded, and ``attention_mask`` (one value per token and
sample, 1 = a real token) is a **runtime input** of the Plan, set per sample
(in Lava, the WOSS softmax's mask Vars are set before each sample; nothing
is rebuilt):

- in every attention a padded key never fires in the softmax;
- with ``pooling="mean"`` the pooled population's padded tokens never fire
  and the readout is divided by the number of real tokens instead of
  ``length`` (a per-sample non-spike division, on the decoded logits);
- padded positions carry copies of the real tokens' embeddings (token ``i``
  of ``count`` real ones at position ``p`` holds token ``p mod count``), so
  their activations, which nothing reads, equal real ones: the calibration's
  statistics are those of the real tokens only, and a padded position never
  clips.

So the logits of a text do not depend on how it was padded (tested).
"""
import typing as ty

import numpy as np
import torch
from torch import nn

from lava_spiked.capture import UnsupportedModelError

POOLINGS = ("pooler", "mean")


def _parts(model: nn.Module) -> ty.Tuple[nn.Module, ty.Optional[nn.Module]]:
    """The BertModel of ``model`` and its classifier (None for a bare
    BertModel)."""
    from transformers import BertForSequenceClassification, BertModel

    if isinstance(model, BertForSequenceClassification):
        return model.bert, model.classifier
    if isinstance(model, BertModel):
        return model, None
    raise UnsupportedModelError(
        f"{type(model).__name__} is not supported: lava_spiked.huggingface "
        "converts BertModel and BertForSequenceClassification (BERT, "
        "MiniLM and every checkpoint of the BERT architecture)")


class Body(nn.Module):
    """The converted part of a BERT: encoder, pooling and classifier, fed
    with the embedding output (batch, length, hidden).

    Parameters
    ----------
    bert : transformers.BertModel
    head : torch.nn.Module
        Pooled features (batch, hidden) -> logits.
    pooling : {'pooler', 'mean'}
        BERT's pooler (the first token through a Linear and tanh) or the
        mean over real tokens.
    """

    def __init__(self, bert: nn.Module, head: nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.pooler, self.head = bert.encoder, bert.pooler, head
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # no mask here: padded keys are masked at run time (module
        # docstring)
        h = self.encoder(hidden)[0]
        pooled = h.mean(1) if self.pooling == "mean" else self.pooler(h)
        return self.head(pooled)


def embed(model: nn.Module, encodings: ty.Mapping[str, ty.Any],
          length: int) -> ty.Tuple[np.ndarray, np.ndarray]:
    """The input encoder: tokenizer output -> the network's inputs.

    Parameters
    ----------
    model : BertModel or BertForSequenceClassification
    encodings : mapping
        A tokenizer's output for a batch: ``input_ids`` and
        ``attention_mask`` (``token_type_ids`` optional), (batch, tokens)
        with tokens <= ``length``.
    length : int
        Tokens of the converted network.

    Returns
    -------
    hidden : numpy.ndarray
        (batch, length, hidden) embedding outputs, float64, padded as the
        module docstring says.
    attention_mask : numpy.ndarray of int64
        (batch, length), 1 for real tokens.

    Raises
    ------
    ValueError
        On missing keys, a text longer than ``length`` or a text without
        tokens.
    """
    bert, _ = _parts(model)
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
    types = encodings.get("token_type_ids")
    types = torch.zeros_like(ids) if types is None else \
        torch.as_tensor(np.asarray(types))
    # real tokens first, padding after them (a tokenizer may pad left)
    order = torch.argsort(1 - mask, dim=1, stable=True)
    ids, types = ids.gather(1, order), types.gather(1, order)
    width = min(ids.shape[1], length)
    with torch.no_grad():
        h = bert.embeddings(input_ids=ids[:, :width],
                            token_type_ids=types[:, :width]).double()
    # position p holds real token p mod count
    src = torch.arange(length)[None, :] % count[:, None]
    hidden = h.gather(1, src[..., None].expand(-1, -1, h.shape[-1]))
    valid = (torch.arange(length)[None, :] < count[:, None]).long()
    return hidden.numpy(), valid.numpy()


def convert_bert(model: nn.Module, encodings: ty.Mapping[str, ty.Any],
                 length: int, pooling: ty.Optional[str] = None,
                 head: ty.Optional[nn.Module] = None, **kwargs):
    """Convert a Hugging Face BERT into a spiking network.

    Parameters
    ----------
    model : BertModel or BertForSequenceClassification
        Unchanged; evaluated in eval mode.
    encodings : mapping
        Tokenizer output of the calibration texts (kept apart from the
        evaluation texts).
    length : int
        Tokens per input of the network (e.g. 64).
    pooling : {'pooler', 'mean'}, optional
        Default: ``'pooler'`` for a BertForSequenceClassification (as it
        computes), ``'mean'`` for a BertModel with ``head``.
    head : torch.nn.Module, optional
        Pooled features -> logits; required for a BertModel (e.g. a linear
        probe on mean-pooled features), not allowed otherwise.
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
    from lava_spiked.conversion import convert

    bert, classifier = _parts(model)
    if classifier is not None and head is not None:
        raise ValueError(f"{type(model).__name__} has its own classifier; "
                         "head= is for a bare BertModel")
    head = classifier if classifier is not None else head
    if head is None:
        raise ValueError("a BertModel has no classifier: pass head= (e.g. "
                         "an nn.Linear on mean-pooled features)")
    pooling = pooling or ("pooler" if classifier is not None else "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got "
                         f"{pooling!r}")
    hidden, mask = embed(model, encodings, length)
    return convert(Body(bert, head, pooling), hidden, attention_mask=mask,
                   mean_pool=pooling == "mean", **kwargs)
