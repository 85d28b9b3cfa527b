"""The offline MiniLM model, the tweet splits and the shipped head."""
import numpy as np
import pytest
import torch

from lava_spiked.bundled import text_data


@pytest.fixture(scope="module")
def minilm():
    return text_data.load_minilm()


def test_splits_are_disjoint_with_stated_sizes():
    parts = {s: text_data.tweets(s)
             for s in ("train", "val", "calibration", "test")}
    sizes = {s: len(texts) for s, (texts, _) in parts.items()}
    assert sizes == {"train": 19254, "val": 1000, "calibration": 512,
                     "test": 2000}
    for texts, labels in parts.values():
        assert labels.dtype == np.int64 and len(labels) == len(texts)
        assert set(labels.tolist()) == {0, 1}
    seen = set()
    for texts, _ in parts.values():
        assert len(set(texts)) == len(texts)
        assert seen.isdisjoint(texts)
        seen.update(texts)
    # the split is a pure function of the file and the seed
    assert text_data.tweets("test")[0] == parts["test"][0]


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        text_data.tweets("dev")


def test_minilm_matches_upstream_sanity_value(minilm):
    assert not minilm[0].training
    a, b = text_data.sentence_embeddings(
        ["A man is eating food.", "A man is eating a piece of bread."],
        *minilm)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    # the value documented on the upstream model card
    assert float(cosine) == pytest.approx(0.7553, abs=5e-4)


def test_embedding_ignores_padding(minilm):
    # a sentence alone and next to a much longer one gets the same embedding
    short = "good morning"
    alone = text_data.sentence_embeddings([short], *minilm)
    padded = text_data.sentence_embeddings(
        [short, "a much longer tweet " * 5], *minilm, batch_size=2)
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)


def test_shipped_head(minilm):
    head = np.load(text_data.HEAD)
    assert head["weight"].shape == (2, 384)
    assert head["weight"].dtype == np.float32
    assert head["bias"].shape == (2,) and head["bias"].dtype == np.float32
    assert int(head["n_train"]) <= len(text_data.tweets("train")[0])
    assert 0.8 < float(head["val_accuracy"]) <= 1
    assert 0.8 < float(head["test_accuracy"]) <= 1
    # the head fits the features of sentence_embeddings: the first 100 val
    # tweets (about 3 s to encode) beat their majority class clearly
    texts, labels = text_data.tweets("val")
    x = torch.from_numpy(text_data.sentence_embeddings(texts[:100], *minilm))
    logits = x @ torch.from_numpy(head["weight"]).T \
        + torch.from_numpy(head["bias"])
    accuracy = (logits.argmax(1).numpy() == labels[:100]).mean()
    assert accuracy > max(labels[:100].mean(), 1 - labels[:100].mean()) + 0.1
