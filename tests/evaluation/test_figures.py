import io

import numpy as np
from PIL import Image

from unetkit.evaluation import figures


def _panel(ignore_index: int) -> np.ndarray:
    display = np.full((16, 16, 3), 128, np.uint8)
    truth = np.zeros((16, 16), np.int64)
    truth[:, 8:] = 11  # CamVid's void value
    pred = np.zeros((16, 16), np.int64)
    pred[:, 8:] = 1
    png = figures.panel_figure(display, truth, pred, [(0, 0, 0), (0, 255, 0)] + [(200, 0, 200)] * 10, ignore_index=ignore_index)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_panel_honours_a_non_default_ignore_value():
    # Pixels labelled 11 are ignored (dimmed, no false positives) only when 11 is the ignore value;
    # with the default (255) the same pixels are an ordinary class and the prediction of 1 is an error.
    ignored, counted = _panel(11), _panel(255)
    red = lambda img: int(((img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)).sum())  # noqa: E731
    assert red(counted) > 0
    assert red(ignored) == 0
