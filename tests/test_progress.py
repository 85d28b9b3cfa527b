"""Progress bars: on by default, off with progress=False or under CI."""
from lava_spiked.progress import bar


def test_bar_is_quiet_under_ci_or_when_asked(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert not bar([1, 2], "work").disable
    assert bar([1, 2], "work", progress=False).disable
    monkeypatch.setenv("CI", "true")
    assert bar([1, 2], "work").disable
    assert list(bar([1, 2], "work")) == [1, 2]
