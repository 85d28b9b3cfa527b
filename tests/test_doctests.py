"""The examples in the docstrings and the README run and do what they say."""
import doctest
import pathlib
import re

import pytest

from lava_spiked import fixed, phase

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("module", [phase, fixed],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_readme_example(tmp_path, monkeypatch):
    """README's first Python block, as written (its asserts included):
    convert, the engine, Lava and the export, on the bundled model."""
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    monkeypatch.chdir(tmp_path)          # the example writes its .h5 here
    monkeypatch.setenv("CI", "true")     # no progress bars
    exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "digits_vit.h5").exists()
