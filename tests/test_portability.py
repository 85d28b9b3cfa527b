"""The tests whose float results depend on how a CPU's kernels sum, run
again with AVX2 kernels: CI machines are Intel CPUs with AVX-512 or AMD
EPYC CPUs with AVX2 only, and what these tests assert must hold on both.

On an AVX-512 CPU the variables below make torch's eager kernels, MKL,
numpy and OpenBLAS take their AVX2 code paths, as they do on such an AMD
CPU (TorchInductor's C++ follows torch's capability); on an AVX2 CPU they
change nothing. MKL's AVX2 kernels round some float64 products differently
from its AVX-512 ones (a bias added inside the product, the number of
rows), which broke exact comparisons of float results before.
"""
import os
import subprocess
import sys

import pytest

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX "
                                    "AVX512_CLX AVX512_CNL AVX512_ICL "
                                    "AVX512_SPR"}

# float results of two computations that sum in different orders
SUMMING = ["tests/test_engine.py::test_compiled_engine_equals_eager",
           "tests/test_engine.py::test_products_stop_at_their_column_cap",
           "tests/test_engine.py::test_engine_equals_lava_layer_by_layer",
           "tests/test_engine.py::"
           "test_engine_equals_golden_models_on_the_default_model",
           "tests/test_calibration.py::test_calibration_statistics"]


@pytest.mark.slow
def test_float_promises_hold_with_avx2_kernels():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {**os.environ, **AVX2}
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() in ("AVX2", "DEFAULT"), done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *SUMMING], env=env, cwd=root, capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
