"""The attention golden models (:mod:`lava_spiked.golden.attention`) by
hand."""
import numpy as np

from lava_spiked.golden.attention import woss


def test_woss_closed_form_hand_values():
    B, T = np.e ** 0.5, 8                    # ln B = 1/2
    z = np.array([[3.0, 2.76, 2.74, 1.0, -10.0]])
    p, step = woss(z, B, T)
    # z_max - z = 0, 0.24, 0.26, 2.0, 13 -> /ln B = 0, .48, .52, 4, 26
    assert step.tolist() == [[0, 0, 1, 4, -1]]
    np.testing.assert_allclose(p, [[1, 1, B ** -1, B ** -4, 0]])
