"""SpikingBlock: a converted network's blocks run fused (one OS process
each) or at neuron level (one per Process), chosen by the run
configuration, with the same spikes, readout and event counts."""
import numpy as np
import pytest
import torch
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.io.sink import RingBuffer

from conftest import TAGS, lava_children
from lava_spiked import convert
from lava_spiked.bundled.digits_vit import DigitsViT
from toy_models import EncoderLayer, MHABlock, randomize_norms


def _digits_vit():
    torch.manual_seed(1)
    model = randomize_norms(DigitsViT(dim=8, heads=2, mlp=16), seed=1)
    data = np.random.default_rng(0).uniform(0, 1, (34, 1, 8, 8))
    return convert(model, data[:32].astype(np.float32), T=10, B=1.3,
                   progress=False), data[32:]


def _encoder():
    torch.manual_seed(2)
    model = randomize_norms(EncoderLayer(norm_first=True), seed=2).eval()
    data = np.random.default_rng(1).normal(0, 1, (34, 5, 8))
    return convert(model, data[:32].astype(np.float32), T=10, B=1.3,
                   progress=False), data[32:]


def _mha():
    torch.manual_seed(6)
    data = np.random.default_rng(4).normal(0, 1, (22, 5, 8))
    return convert(MHABlock().eval(), data[:20].astype(np.float32), T=10,
                   B=1.3, progress=False), data[20:]


def _run(net, x, cfg, mask=None):
    """Readout, event counts, each block's output spikes at every step and
    the number of Lava's OS processes."""
    lava = net.lava(cfg.select_tag)
    sinks = [RingBuffer(shape=b.s_out.shape, buffer=4 * net.num_steps)
             for b in lava.blocks]
    for block, sink in zip(lava.blocks, sinks):
        block.s_out.connect(sink.a_in)
    with net:
        out = net.infer(x, cfg, attention_mask=mask, progress=False)
        assert lava.steps <= 4 * net.num_steps
        ports = [sink.data.get()[..., :lava.steps] for sink in sinks]
        return out, net.events(), ports, len(lava_children()), lava


@pytest.mark.slow
@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("build", [_digits_vit, _encoder, _mha])
def test_fused_blocks_equal_the_neuron_level_network(build, tag):
    net, x = build()
    fused = _run(net, x, Loihi2SimCfg(select_tag=tag))
    neuron = _run(net, x, Loihi2SimCfg(select_tag=tag,
                                       select_sub_proc_model=True))
    if tag == "fixed_pt":
        np.testing.assert_array_equal(fused[0], neuron[0])
        for a, b in zip(fused[2], neuron[2]):
            np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(fused[0], neuron[0], rtol=1e-6,
                                   atol=1e-9)
        for a, b in zip(fused[2], neuron[2]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert fused[1] == neuron[1]
    assert sum(fused[1]["clip_count"].values()) > 0  # counters compared
    assert any(np.count_nonzero(p) for p in fused[2])  # spikes compared
    blocks = fused[4].blocks
    assert blocks and not any(b.expanded for b in blocks)
    assert all(b.expanded for b in neuron[4].blocks)
    # one OS process per block instead of one per member
    assert neuron[3] - fused[3] == sum(len(b.members) - 1 for b in blocks)
    assert fused[4].leaves() == len(blocks) + 2  # + encoder and sink
    assert neuron[4].leaves() == len(net.processes) + 1


def test_blocks_hold_one_attention_each_and_read_one_population():
    net, _ = _encoder()
    blocks = net.plan.blocks()
    names = [layer.name for layer in net.plan.layers[1:]]
    assert [n for _, group in blocks for n in group] == names
    assert len(blocks) == 2
    assert blocks[0][0] == net.plan.input
    assert all(n.startswith("encoder.layers.0.") for n in blocks[0][1])
    assert blocks[1][1][0].startswith("encoder.layers.1.")
    assert blocks[1][0] == blocks[0][1][-1]  # the residual stream
    for inp, group in blocks:
        assert sum(net.plan.attention_of(n) is not None for n in group) == 1
        inside = set(group) | {inp}
        assert all(set(net.plan.sources(n)) <= inside for n in group)


@pytest.mark.slow
def test_masked_bert_blocks_fused_equal_neuron_level():
    """A Hugging Face BERT with per-sample token masks: the fused blocks
    take the masks the host sets between samples."""
    from test_huggingface import TEXTS, _classifier

    from lava_spiked.huggingface import convert, embed
    from lava_spiked.bundled.text_data import load_minilm
    model = _classifier(layers=2)
    enc = load_minilm()[1](TEXTS, padding=True, return_tensors="pt")
    net = convert(model, enc, length=16, T=8, progress=False)
    hidden, mask = embed(model, enc, 16)
    order = [3, 2]  # the longest tweet, then the shortest: masks change
    fused = _run(net, hidden[order], Loihi2SimCfg(select_tag="fixed_pt"),
                 mask[order])
    neuron = _run(net, hidden[order], Loihi2SimCfg(
        select_tag="fixed_pt", select_sub_proc_model=True), mask[order])
    assert len(fused[4].blocks) == 2
    np.testing.assert_array_equal(fused[0], neuron[0])
    for a, b in zip(fused[2], neuron[2]):
        np.testing.assert_array_equal(a, b)
    assert fused[1] == neuron[1]


def test_long_delays_chain_links_of_at_most_62_steps():
    """The bundled model's 204-step residual delay is built as links of
    62, 62, 62 and 18 steps (Loihi's synaptic delays stop at 62); the
    Lava tests of the bundled model show the timing is unchanged."""
    from lava_spiked.lava_backend.runs import LavaNetwork
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    from lava_spiked.processes import SpikeDelay
    net = convert(load_default(), digits_splits()["calibration"][0][:32],
                  progress=False)
    assert net.plan.delay("input", "blocks.0.add") == 204
    lava = LavaNetwork(net.plan, "fixed_pt", record=False)
    delays = {name: p.proc_params["delay"]
              for name, p in lava.processes.items()
              if isinstance(p, SpikeDelay)}
    assert max(delays.values()) <= 62
    assert {k: v for k, v in delays.items() if k.startswith("input->")} == \
        {"input->delay62": 62, "input->delay124": 62,
         "input->delay186": 62, "input->delay204": 18}
