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


def write_image_folder(
    root, counts: dict, size: int = 32, seed: int = 0, classes: int = 2
) -> list[str]:
    """Writes disc images as a tfds.ImageFolder tree root/<split>/class_<k>/NNN.(jpg|png).

    Every third image is a PNG and the rest JPEGs. Returns the written paths.
    """
    import os

    import tensorflow as tf

    paths = []
    for split, n in counts.items():
        images = disc_images(n, size=size, seed=seed + hash(split) % 1000)
        for i, image in enumerate(images):
            label_dir = os.path.join(root, split, f"class_{i % classes}")
            os.makedirs(label_dir, exist_ok=True)
            pixels = tf.constant(((image + 1.0) * 127.5).round().astype(np.uint8))
            if i % 3 == 2:
                path, data = os.path.join(label_dir, f"{i:03d}.png"), tf.io.encode_png(pixels)
            else:
                path, data = os.path.join(label_dir, f"{i:03d}.jpg"), tf.io.encode_jpeg(pixels)
            tf.io.write_file(path, data)
            paths.append(path)
    return paths
