"""Progress bars: on by default, off with progress=False or under CI."""
import os
import subprocess
import sys

from lava_spiked.progress import bar


def test_bar_is_quiet_under_ci_or_when_asked(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert not bar([1, 2], "work").disable
    assert bar([1, 2], "work", progress=False).disable
    monkeypatch.setenv("CI", "true")
    assert bar([1, 2], "work").disable
    assert list(bar([1, 2], "work")) == [1, 2]


def test_bars_start_no_thread():
    """A bar, shown or not, leaves the process with its main thread only
    (tqdm's monitor thread is off): no thread of lava-spiked's is alive
    when Lava forks. In a fresh interpreter, where no other tqdm ran."""
    script = ("import threading\n"
              "from lava_spiked.progress import bar\n"
              "for shown in (True, False):\n"
              "    list(bar(range(3), 'work', progress=shown))\n"
              "print(threading.active_count())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120, env={
                              **os.environ, "CI": "false"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
