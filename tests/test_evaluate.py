"""The evaluation CLI (``python -m lava_spiked.evaluate``, and
``python -m lava_spiked``'s argument checks), one process and torchrun."""
import os
import subprocess
import sys

import pytest

from lava_spiked import evaluate
from lava_spiked.__main__ import main as lava_main


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


def test_evaluate_cli_chooses_B_per_T_with_auto(tmp_path):
    """``--B auto`` gives each T the base that choose_base picks on the
    calibration split, and the table says it was chosen."""
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    from lava_spiked.calibration import absorb_masks, calibrate
    from lava_spiked.capture import capture
    from lava_spiked.code_error import choose_base

    evaluate.main(["--T", "12", "16", "--B", "auto", "1.4", "--samples",
                   "24", "--out", str(tmp_path)])
    table = (tmp_path / "accuracy_sweep.md").read_text()
    x_cal = digits_splits()["calibration"][0]
    graph = absorb_masks(capture(load_default(), (1, 8, 8)), x_cal,
                         progress=False)
    sigmas = calibrate(graph, x_cal, progress=False)
    for T in (12, 16):
        chosen = choose_base(graph, sigmas, T, x_cal, progress=False).B
        assert f"| {T} | {chosen} (auto) |" in table
        assert f"| {T} | 1.4 |" in table


def test_main_cli_converts_with_B_auto_and_says_which(capsys):
    """``python -m lava_spiked --B auto`` converts at choose_base's B and
    prints it with the candidates."""
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    from lava_spiked.code_error import AUTO_B
    from lava_spiked.conversion import convert

    lava_main(["--samples", "2", "--T", "16", "--B", "auto"])
    out = capsys.readouterr().out
    chosen = convert(load_default(), digits_splits()["calibration"][0],
                     T=16, B=1.4, progress=False).recode(
        "auto", calibration_data=digits_splits()["calibration"][0],
        progress=False).B
    assert f"(B = {chosen} chosen of {', '.join(map(str, AUTO_B))})" in out
    assert "steps per sample" in out


@pytest.mark.parametrize("argv, match", [
    (["--T", "0"], "T must be an integer in"),
    (["--B", "1.0"], "B must be in"),
    (["--B", "automatic"], "B must be a number"),
    (["--samples", "0"], "samples must be an integer >= 1"),
])
def test_cli_rejects_bad_arguments_without_traceback(argv, match, capsys):
    for main in (evaluate.main, lava_main):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2  # argparse's usage error
        assert match in capsys.readouterr().err
