"""Energy counts on a hand-checkable network, and the evaluation CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked import evaluate
from lava_spiked.__main__ import main as lava_main
from lava_spiked.energy import E_AC, E_MAC, energy, mean_report
from lava_spiked.engine import Engine
from lava_spiked.conversion import convert


def test_energy_counts_by_hand():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
        model.bias.zero_()
    net = convert(model, np.ones((4, 3)), T=6, B=1.5, progress=False)
    report = energy(net, Engine(net, "fixed")(np.ones((2, 3))))
    x, out = report.layers
    assert x.spikes == 3                   # every input fires (at step 0)
    # fan-outs of the three inputs: 1, 0 and 2 nonzero weights
    assert out.synaptic_ac == 3
    assert out.mac == 2                     # one input step per target
    assert out.neuron_ac == 0               # a readout never compares
    assert report.ann_macs == net.plan.ann_macs == 6
    assert report.snn_joules == pytest.approx(3 * E_AC + 2 * E_MAC)
    assert report.ann_joules == pytest.approx(6 * E_MAC)
    assert "**SNN total**" in report.to_markdown()


def test_mean_report_weights_by_samples():
    """Energy of 3 samples, then of 1 sample: the merged report is the
    mean over all 4 samples, equal to one report over the 4."""
    net = convert(nn.Linear(3, 2), np.random.default_rng(0).normal(
        size=(16, 3)), T=6, B=1.5, progress=False)
    x = np.random.default_rng(1).normal(size=(4, 3))
    engine = Engine(net, "fixed")
    merged = mean_report([energy(net, engine(x[:3])),
                          energy(net, engine(x[3:]))], [3, 1])
    whole = energy(net, engine(x))
    for a, b in zip(merged.layers, whole.layers):
        for f in ("spikes", "synaptic_ac", "neuron_ac", "mac"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-12)
    assert merged.ann_macs == whole.ann_macs


@pytest.mark.slow
def test_torchrun_shards_and_merges_like_one_process(tmp_path):
    """Two gloo processes on 101 samples (DistributedSampler pads one
    repeat, which must not count) write the table of one process."""
    args = ["--T", "16", "--B", "1.4", "--samples", "101"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                           "--standalone", "--nproc_per_node=2", "-m",
                           "lava_spiked.evaluate", *args, "--out",
                           str(tmp_path / "two")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    evaluate.main(args + ["--out", str(tmp_path / "one")])

    def table(d):  # the lines after the command and machine
        return (tmp_path / d / "accuracy_sweep.md").read_text() \
            .split("test images; ANN accuracy", 1)[1]
    assert "101 test images" in (tmp_path / "two" /
                                 "accuracy_sweep.md").read_text()
    assert table("two") == table("one")


def test_evaluate_cli_writes_table_and_figures(tmp_path, capsys):
    evaluate.main(["--T", "12", "--B", "1.3", "1.4", "--samples", "24",
                   "--out", str(tmp_path)])
    table = (tmp_path / "accuracy_sweep.md").read_text()
    assert "Command: `python -m lava_spiked.evaluate --T 12 --B 1.3 1.4" \
        in table
    assert table.count("| 12 | 1.") == 2
    for png in ("accuracy_vs_T.png", "accuracy_vs_energy.png",
                "correlation.png"):
        assert (tmp_path / png).stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--T", "0"], "T must be an integer in"),
    (["--B", "1.0"], "B must be in"),
    (["--samples", "0"], "samples must be an integer >= 1"),
])
def test_cli_rejects_bad_arguments_without_traceback(argv, match, capsys):
    for main in (evaluate.main, lava_main):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2  # argparse's usage error
        assert match in capsys.readouterr().err


def test_short_window_warns_with_the_usable_length():
    with pytest.warns(RuntimeWarning, match="keep only 27 of the T = 40"):
        convert(nn.Linear(3, 2), np.ones((4, 3)), T=40, B=1.4,
                progress=False)


def test_recode_lowers_the_same_calibration_anew():
    """recode(B, T) equals converting again with that code (calibration
    does not depend on it); a network loaded from a file cannot."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = np.random.default_rng(0).normal(size=(32, 4))
    net = convert(model, data, T=40, B=1.15, progress=False)
    again = convert(model, data, T=16, B=1.4, progress=False)
    recoded = net.recode(1.4, 16)
    assert (recoded.B, recoded.T) == (1.4, 16)
    np.testing.assert_array_equal(
        Engine(recoded, "fixed")(data[:8]).logits.numpy(),
        Engine(again, "fixed")(data[:8]).logits.numpy())
    from lava_spiked.network import SpikingNetwork
    with pytest.raises(ValueError, match="loaded from a file"):
        SpikingNetwork(net.plan).recode(1.2)
