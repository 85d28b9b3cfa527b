"""The examples in the docstrings, the README and the guide run and do
what they say."""
import doctest
import pathlib
import re

import pytest

from lava_spiked.numerics import fixed, phase

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [phase, fixed],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
@pytest.mark.parametrize("page, block", [
    ("README.md", 0),                   # convert, engine, Lava, export
    ("docs/guide/converting.md", 1),    # "Your own model"
])
def test_markdown_example(page, block, tmp_path, monkeypatch):
    """A Python block of a page, as written (its asserts included)."""
    text = (ROOT / page).read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[block]
    monkeypatch.chdir(tmp_path)          # where an example writes files
    monkeypatch.setenv("CI", "true")     # no progress bars
    exec(compile(code, page, "exec"), {"__name__": "__example__"})
