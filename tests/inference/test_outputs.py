"""Label maps from probabilities (unetkit.inference.outputs)."""

import numpy as np
import pytest

from unetkit.inference.outputs import argmax_labels


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_argmax_labels_is_numpy_argmax_first_class_winning_ties(rng, classes):
    p = rng.random((classes, 13, 17), dtype=np.float32)
    p[:, :4] = 0.25  # all tied: class 0
    p[classes - 1, 5] = p[classes - 2, 5] = 2.0  # two tied at the top: the lower index
    for dtype in (np.uint8, np.uint16):
        labels = argmax_labels(p, dtype)
        assert labels.dtype == dtype
        np.testing.assert_array_equal(labels, p.argmax(axis=0))
