"""Probability maps for the postprocessing tests (application in tests/inference, search in
tests/tuning): probabilities from a label map, and cells divided by membranes."""

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries


def probs_from_labels(labels: np.ndarray, k: int, confidence: float = 0.9) -> np.ndarray:
    p = np.full((k, *labels.shape), (1 - confidence) / (k - 1), np.float32)
    for c in range(k):
        p[c][labels == c] = confidence
    return p


def cells_and_membranes(rng, size: int = 160, cells: int = 20):
    """Voronoi cells (class 1) divided by 2-px membranes (class 0), and a U-Net-like probability
    map of them: membranes predicted three times too thick with soft edges, spurs of membrane-like
    probability running from the membranes into the cells (organelle outlines joined to the
    membrane network), and a little noise."""
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (cells, 2))
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    region = d.argmin(-1) + 1
    truth = (~find_boundaries(region, mode="inner")).astype(np.uint8)
    depth = ndimage.distance_transform_edt(truth)
    p = 1 / (1 + np.exp(-(depth - 2.5) / 0.7))  # p < 0.5 within 2.5 px of a membrane: ~5 px thick
    for cy, cx in centres:  # a 6-px spur from the cell's nearest membrane towards its centre
        wall = np.unravel_index(np.argmin(np.where(region == region[int(cy) % size, int(cx) % size], depth, np.inf)
                                          + np.hypot(yy - cy, xx - cx) * 1e-3), depth.shape)
        for t in np.linspace(0, 1, 24):
            y, x = int(round(wall[0] + t * (cy - wall[0]) * 0.5)), int(round(wall[1] + t * (cx - wall[1]) * 0.5))
            p[max(y - 1, 0): y + 1, max(x - 1, 0): x + 1] = 0.1
    p = np.clip(p + ndimage.gaussian_filter(rng.normal(0, 0.1, p.shape), 2), 0.001, 0.999).astype(np.float32)
    return np.stack([1 - p, p]), truth
