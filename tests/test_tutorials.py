"""The tutorial notebooks run from top to bottom without errors.

Every ``tutorials/*.ipynb`` is executed afresh with nbconvert's
ExecutePreprocessor in the ``python3`` kernel (for a virtual environment's
interpreter, that environment's own ipykernel), with ``tutorials/`` as the
working directory. The executed copy goes to the test's temporary
directory, so the committed notebook is never rewritten. A test fails if any
cell of the fresh run, or any output stored in the committed notebook, is
an error.
"""
import pathlib

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def error_outputs(nb):
    """(cell index, ename, evalue) of every error output of ``nb``."""
    return [(i, out.get("ename", ""), out.get("evalue", ""))
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.get("outputs", [])
            if out.get("output_type") == "error"]


def describe(errors):
    return "; ".join(f"cell {i}: {ename}: {evalue}"
                     for i, ename, evalue in errors)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, tmp_path):
    stored = nbformat.read(path, as_version=4)
    errors = error_outputs(stored)
    assert not errors, (f"{path.name} is committed with error outputs: "
                        f"{describe(errors)}")

    nb = nbformat.read(path, as_version=4)
    # allow_errors keeps executing after a failing cell so that the
    # assertion below can report every error with its cell index.
    ep = ExecutePreprocessor(timeout=900, kernel_name="python3",
                             allow_errors=True)
    ep.preprocess(nb, resources={"metadata": {"path": str(TUTORIALS)}})
    out = tmp_path / path.name
    nbformat.write(nb, out)

    executed = nbformat.read(out, as_version=4)
    assert any(cell.get("outputs") for cell in executed.cells
               if cell.cell_type == "code"), f"{path.name} produced no output"
    errors = error_outputs(executed)
    assert not errors, f"{path.name} raised: {describe(errors)}"
