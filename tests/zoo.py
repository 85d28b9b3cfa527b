"""The model zoo: stock vision transformers from torchvision, timm and
Hugging Face, and stock Hugging Face text encoders and decoders, in small
random configurations, and what conversion does with each
(``tests/test_zoo.py`` checks every entry).

``python tests/zoo.py`` prints the README's tables of model families,
which the test compares with the README.
"""
import dataclasses
import typing as ty

import torch
from torch import nn

#: one sample: small RGB images
SHAPE = (3, 16, 16)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A model the matrix converts (``refused`` empty) or refuses, with
    the parts of the refusal that name what it lacks."""

    library: str
    model: str
    build: ty.Callable[[], nn.Module]
    refused: ty.Tuple[str, ...] = ()
    why: str = ""


class ChannelsLastBatchNorm(nn.Module):
    """BatchNorm over the last axis of a (batch, ..., channels) tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(16, 4, 2, 2, 32, 64, num_classes=10)


def _tv_swin(**kw) -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer([2, 2], 16, [2, 2], [2, 2], [4, 4],
                           num_classes=10, **kw)


def _tv_swin_bn_relu() -> nn.Module:
    """The authors' retrained Swin: BatchNorm for LayerNorm, ReLU for
    GELU."""
    model = _tv_swin(norm_layer=ChannelsLastBatchNorm)
    for block in model.modules():
        if hasattr(block, "mlp"):
            block.mlp[1] = nn.ReLU()
    return model


def _tv_swin_v2() -> nn.Module:
    from torchvision.models.swin_transformer import (PatchMergingV2,
                                                     SwinTransformerBlockV2)
    return _tv_swin(block=SwinTransformerBlockV2,
                    downsample_layer=PatchMergingV2)


def _timm(name: str, **kw) -> ty.Callable[[], nn.Module]:
    def build():
        import timm
        return timm.create_model(name, pretrained=False, img_size=16,
                                 num_classes=10, **kw)
    return build


_TIMM_VIT = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)
_TIMM_SWIN = dict(patch_size=2, embed_dim=16, depths=(2, 2),
                  num_heads=(2, 2), window_size=4)


def _hf(kind: str, attention: str) -> ty.Callable[[], nn.Module]:
    def build():
        import transformers
        config = getattr(transformers, f"{kind}Config")
        model = getattr(transformers, f"{kind}ForImageClassification")
        if kind == "Swin":
            args = dict(patch_size=2, embed_dim=16, depths=[2, 2],
                        num_heads=[2, 2], window_size=4)
        else:
            args = dict(patch_size=4, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
        return model(config(image_size=16, num_channels=3, num_labels=10,
                            attn_implementation=attention, **args))
    return build


ZOO = {
    "torchvision-vit": Entry("torchvision", "VisionTransformer", _tv_vit),
    "torchvision-swin": Entry("torchvision", "SwinTransformer", _tv_swin),
    "torchvision-swin-bn-relu": Entry(
        "torchvision", "SwinTransformer, BatchNorm and ReLU (the paper's)",
        _tv_swin_bn_relu),
    "timm-vit": Entry("timm", "vit_tiny_patch16_224",
                      _timm("vit_tiny_patch16_224", **_TIMM_VIT)),
    "timm-deit": Entry("timm", "deit_tiny_distilled_patch16_224",
                       _timm("deit_tiny_distilled_patch16_224",
                             **_TIMM_VIT)),
    "timm-deit3": Entry("timm", "deit3_small_patch16_224",
                        _timm("deit3_small_patch16_224", **_TIMM_VIT)),
    "timm-swin": Entry("timm", "swin_tiny_patch4_window7_224",
                       _timm("swin_tiny_patch4_window7_224", **_TIMM_SWIN)),
    "hf-vit-eager": Entry("Hugging Face", "ViTForImageClassification "
                          "(eager)", _hf("ViT", "eager")),
    "hf-vit-sdpa": Entry("Hugging Face", "ViTForImageClassification "
                         "(sdpa)", _hf("ViT", "sdpa")),
    "hf-deit-eager": Entry("Hugging Face", "DeiTForImageClassification "
                           "(eager)", _hf("DeiT", "eager")),
    "hf-deit-sdpa": Entry("Hugging Face", "DeiTForImageClassification "
                          "(sdpa)", _hf("DeiT", "sdpa")),
    "hf-swin": Entry("Hugging Face", "SwinForImageClassification",
                     _hf("Swin", "eager")),
    "timm-eva02": Entry(
        "timm", "eva02_tiny_patch14_224",
        _timm("eva02_tiny_patch14_224", **_TIMM_VIT),
        refused=("blocks.0.attn (EvaAttention: add)", "rotary"),
        why="rotary position embeddings scale each token's channels "
            "differently"),
    "torchvision-swin-v2": Entry(
        "torchvision", "SwinTransformer v2 (swin_v2_t's blocks)",
        _tv_swin_v2,
        refused=("ShiftedWindowAttentionV2: linalg_vector_norm",),
        why="cosine attention divides by the norms of q and k"),
}


@dataclasses.dataclass(frozen=True)
class TextEntry:
    """A Hugging Face text model, converted by
    :func:`lava_spiked.huggingface.convert`; ``causal``: a decoder."""

    model: str
    build: ty.Callable[[], nn.Module]
    causal: bool = False


#: text samples: up to TOKENS token ids below VOCAB
TOKENS, VOCAB = 12, 100

_BERTLIKE = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32, num_labels=3)
_FAMILIES = {
    "Bert": _BERTLIKE, "Roberta": _BERTLIKE, "XLMRoberta": _BERTLIKE,
    "Electra": dict(_BERTLIKE, embedding_size=8),
    "Albert": dict(_BERTLIKE, embedding_size=8),
    "DistilBert": dict(vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2,
                       hidden_dim=32, max_position_embeddings=32,
                       num_labels=3),
    "GPT2": dict(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2,
                 n_positions=32),
}


def _text(kind: str, head: str, attention: str = "eager"
          ) -> ty.Callable[[], nn.Module]:
    def build():
        import transformers
        config = getattr(transformers, f"{kind}Config")(
            attn_implementation=attention, **_FAMILIES[kind])
        return getattr(transformers, kind + head)(config)
    return build


TEXT_ZOO = {
    f"hf-{kind.lower()}{suffix}-{attention}": TextEntry(
        f"{kind}{head} ({attention})", _text(kind, head, attention),
        causal=kind == "GPT2")
    for kind, head, suffix, attentions in [
        ("Bert", "ForSequenceClassification", "", ("eager", "sdpa")),
        ("Bert", "Model", "-bare", ("sdpa",)),
        ("Roberta", "ForSequenceClassification", "", ("eager", "sdpa")),
        ("XLMRoberta", "ForSequenceClassification", "", ("sdpa",)),
        ("DistilBert", "ForSequenceClassification", "", ("eager", "sdpa")),
        # transformers 4.57 has no sdpa attention for ELECTRA
        ("Electra", "ForSequenceClassification", "", ("eager",)),
        ("Albert", "ForSequenceClassification", "", ("eager", "sdpa")),
        ("GPT2", "LMHeadModel", "", ("eager", "sdpa")),
        ("GPT2", "Model", "-bare", ("eager",)),
    ]
    for attention in attentions
}


def build(name: str) -> nn.Module:
    """The zoo's model ``name`` in eval mode, with random weights: also
    where libraries start from zeros (heads) or near zero (timm's
    LayerScale, 1e-6, which training moves to 0.1 to 1)."""
    torch.manual_seed(0)
    model = (ZOO[name] if name in ZOO else TEXT_ZOO[name]).build().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.2)
    for m in model.modules():
        if type(m).__name__ == "LayerScale":
            m.gamma.data.uniform_(0.1, 1.0)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, nn.LayerNorm):  # not the identity they start as
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.2)
    return model


def table() -> str:
    """The README's table of model families (Markdown)."""
    lines = ["| library | model | converts |", "|---|---|---|"]
    for entry in ZOO.values():
        result = "yes" if not entry.refused else f"no: {entry.why}"
        lines.append(f"| {entry.library} | {entry.model} | {result} |")
    return "\n".join(lines)


def text_table() -> str:
    """The README's table of text models (Markdown)."""
    lines = ["| model (Hugging Face) | attention | output |", "|---|---|---|"]
    for entry in TEXT_ZOO.values():
        model, attention = entry.model.rstrip(")").split(" (")
        output = "logits at every position" if "LMHead" in model else \
            "hidden states" if model.endswith("Model") else "logits"
        lines.append(f"| {model} | {attention} | {output} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
    print()
    print(text_table())
