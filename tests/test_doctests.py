"""The examples in the docstrings run and print what they say."""
import doctest

import pytest

from lava_spiked import fixed, phase


@pytest.mark.parametrize("module", [phase, fixed],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
