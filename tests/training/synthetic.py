"""Small generated image sets for the training tests (no files, no network)."""

import numpy as np


def disc_images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Images in [-1, 1] of one coloured disc of random centre, radius and colours
    on a plain background, plus a little noise: each image is identifiable from
    its local patches, so DIM(L) has mutual information to find."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, channels), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(size / 4, 3 * size / 4, 2)
        radius = rng.uniform(size / 8, size / 3)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)[..., None]
        out[i] = np.where(disc, rng.uniform(-1, 1, channels), rng.uniform(-1, 1, channels))
        out[i] += rng.normal(0, 0.05, (size, size, channels))
    return np.clip(out, -1, 1)
