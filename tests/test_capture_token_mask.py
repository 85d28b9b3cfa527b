"""Models that take their token mask
(:mod:`lava_spiked.capture.token_mask`): the mask is found, fed at run
time, and inputs that are no padding mask are refused by name."""
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked.capture import UnsupportedModelError
from lava_spiked.conversion import convert
from lava_spiked.engine import Engine


class TakesMask(nn.Module):
    """Attention over 6 tokens that takes its token mask, written as users
    write it: 'additive' (Hugging Face's 1 = real, -1e4 on padded keys,
    first token pooled), 'fill' (masked_fill with -inf, every token out),
    'torch' (nn.TransformerEncoder with PyTorch's key_padding_mask,
    True = padding, then a mean over real tokens)."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.qkv, self.o = nn.Linear(8, 24), nn.Linear(8, 8)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, batch_first=True), 1,
            enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x, mask):
        if self.style == "torch":
            h = self.encoder(x, src_key_padding_mask=mask)
            keep = (~mask).float()[..., None]
            return self.head((h * keep).sum(1) / keep.sum(1))
        q, k, v = self.qkv(x).chunk(3, -1)
        z = q @ k.transpose(1, 2) / 8 ** 0.5
        if self.style == "additive":
            z = z + (1.0 - mask[:, None, :].float()) * -1e4
            return self.head(self.o(z.softmax(-1) @ v)[:, 0])
        z = z.masked_fill(mask[:, None, :] == 0, float("-inf"))
        return self.o(z.softmax(-1) @ v)


@pytest.mark.parametrize("style", ["additive", "fill", "torch"])
def test_a_model_that_takes_its_mask_gets_it_at_run_time(style):
    """forward(x, mask): the mask, in the model's own convention, becomes
    the network's runtime mask (1 = real token): the network without
    quantisation equals the model fed the masks, at every real token."""
    torch.manual_seed(0)
    model = TakesMask(style).eval()
    x = torch.randn(48, 6, 8)
    real = torch.arange(6)[None, :] < torch.randint(1, 7, (48,))[:, None]
    net = convert(model, x[:32], attention_mask=real[:32].long().numpy(),
                  progress=False)
    assert net.plan.tokens == 6
    assert net.plan.mean_pool == (style == "torch")
    with torch.no_grad():
        want = model(x[32:], ~real[32:] if style == "torch" else
                     real[32:].long()).double()
    got = torch.from_numpy(net.ann(x[32:].numpy(), real[32:].numpy())
                           ).reshape(want.shape)
    if style == "fill":  # padded tokens' outputs are free
        got, want = got[real[32:]], want[real[32:]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    Engine(net, "fixed")(x[32:].numpy(), attention_mask=real[32:].numpy(),
                         warn=False)


def test_a_stock_model_takes_its_own_attention_mask():
    """A Hugging Face BertModel through the generic convert, fed
    inputs_embeds and its own attention_mask."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, attn_implementation="eager")).eval()
    x = torch.randn(24, 8, 32)
    real = (torch.arange(8)[None, :] < torch.randint(1, 9, (24,))[:, None]
            ).long()
    net = convert(model, x[:16].numpy(), attention_mask=real[:16].numpy(),
                  input_name="inputs_embeds", output="last_hidden_state",
                  progress=False)
    with torch.no_grad():
        want = model(inputs_embeds=x[16:], attention_mask=real[16:]
                     ).last_hidden_state.double()
    got = torch.from_numpy(net.ann(x[16:].numpy(), real[16:].numpy())
                           ).reshape(want.shape)
    keep = real[16:].bool()
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-5)


class IgnoresMask(TakesMask):
    def forward(self, x, attention_mask=None):
        return super().forward(x, torch.ones(x.shape[:2]))


class TakesLengths(TakesMask):
    def forward(self, x, lengths):
        return super().forward(x, torch.ones(x.shape[:2])) * lengths.sum()


@pytest.mark.parametrize("model, name", [
    (IgnoresMask("additive"), "attention_mask"),
    (TakesLengths("additive"), "lengths")])
def test_an_input_that_is_no_padding_mask_is_refused_by_name(model, name):
    """A mask parameter the model does not use as a padding mask, or
    another input, is refused naming it and what was tried: never a
    network that computes something else."""
    x = torch.randn(16, 6, 8)
    real = torch.arange(6)[None, :] < torch.randint(1, 7, (16,))[:, None]
    with pytest.raises(UnsupportedModelError,
                       match=f"{name} was tried as the token mask.*"
                       "1 = real token: relative difference.*"
                       "True = padding"):
        convert(model.eval(), x, attention_mask=real.long().numpy(),
                progress=False)
    if name == "lengths":  # required: without masks it says what to give
        with pytest.raises(UnsupportedModelError,
                           match="requires lengths: if it is a token mask, "
                           "give convert .*attention_mask="):
            convert(model.eval(), x, progress=False)


def test_an_unsupported_op_is_named_whatever_the_mask():
    """A model that takes its mask and cannot be captured for another
    reason is refused for that reason alone."""
    class Cumulative(nn.Module):
        def forward(self, x, attention_mask):
            return torch.cumsum(x, 1) * attention_mask[..., None]

    real = np.ones((4, 6), np.int64)
    with pytest.raises(UnsupportedModelError, match="^cannot convert these "
                       "operations.*cumsum"):
        convert(Cumulative(), np.random.rand(4, 6, 8), attention_mask=real,
                progress=False)


class AdditiveCausal(nn.Module):
    """Attention with a causal mask added as the lowest float (as
    transformers 5 writes GPT-2's) and a bias of -3 on the last key."""

    def __init__(self, n=6):
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)
        low = torch.finfo(torch.float32).min
        bias = torch.zeros(n, n).masked_fill(
            torch.ones(n, n, dtype=torch.bool).triu(1), low)
        bias[:, -1] = torch.where(bias[:, -1] == 0, -3.0, bias[:, -1])
        self.register_buffer("bias", bias)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) + self.bias, -1)
        return self.out(a @ v)


def test_additive_masks_are_found_under_runtime_padding():
    """The calibration texts are all shorter than the network (the last
    key is always padded): padded keys say nothing about a mask, so every
    lowest-float entry is still found a mask, and the -3 on the last key,
    never seen, stays a bias."""
    torch.manual_seed(0)
    model = AdditiveCausal().double().eval()
    x = torch.randn(16, 6, 4, dtype=torch.float64)
    count = torch.randint(2, 6, (16,))
    mask = (torch.arange(6)[None, :] < count[:, None]).long()
    net = convert(model, x, attention_mask=mask.numpy(), T=12, B=1.4,
                  progress=False)
    op, = net.graph.attention
    upper = np.triu(np.ones((6, 6), bool), 1)
    assert (op.mask == upper).all()
    assert (op.bias[:, -1, -1] == -3.0).all()  # the diagonal's last entry
    Engine(net, "fixed")(x.numpy()[:2], attention_mask=mask.numpy()[:2],
                         warn=False)  # the scales stay small: it runs
