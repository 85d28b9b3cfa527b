"""Energy counts on a hand-checkable network, and the evaluation CLI."""
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked import evaluate
from lava_spiked.__main__ import main as lava_main
from lava_spiked.energy import E_AC, E_MAC, energy
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
