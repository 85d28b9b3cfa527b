"""What works without Lava: in a fresh process where ``import lava`` fails
(``sys.modules['lava'] = None``), ``import lava_spiked`` works, the
bundled model converts, the engine runs it, and its Plan round-trips
through the HDF5 export; the first use of Lava (a network's ``infer``)
raises an ImportError that names ``make setup``. (conftest imports Lava,
so the check runs in a process of its own.)"""
import subprocess
import sys

SCRIPT = """
import sys
sys.modules["lava"] = None  # import lava fails, as where it is missing
import numpy as np
import lava_spiked
from lava_spiked import Engine, convert, export
from lava_spiked.bundled.digits_vit import digits_splits, load_default
s = digits_splits()
net = convert(load_default(), s["calibration"][0][:32], progress=False)
x = s["test"][0][:8]
logits = Engine(net, "fixed")(x, warn=False).logits.numpy()
assert logits.shape == (8, 10)
export.save(net, sys.argv[1])
again = export.load(sys.argv[1])
assert (Engine(again, "fixed")(x, warn=False).logits.numpy() == logits).all()
assert not any(m == "lava" or m.startswith("lava.") for m in sys.modules
               if sys.modules[m] is not None)
try:
    net.infer(x[:1], None)
except ImportError as err:
    assert "make setup" in str(err), err
    print("ok")
"""


def test_convert_engine_and_export_work_without_lava(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "digits.h5")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok"), done.stdout
