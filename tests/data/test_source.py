"""Checks on a source: unusable files found by name, the typical image size."""

import os

import pytest

from dim_tf.data import loaders, source as source_lib
from tests.training.synthetic import write_image_folder


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 20, "test": 6})
    return str(tmp_path / "images")


def test_sample_images_are_32x32():
    source = loaders.load_source("sample:cifar10", "train")
    assert source_lib.peek_image_shape(source, 3) == (32, 32)


def test_corrupt_files_are_found_by_name(folder):
    bad = os.path.join(folder, "train", "class_0", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    source = loaders.load_source(f"folder:{folder}", "train")
    corrupt = source_lib.find_corrupt_images(source, 3)
    assert corrupt == (bad,)
    cleaned = source_lib.without_corrupt(source, corrupt)
    assert cleaned.num_examples == 20
    assert len(list(cleaned.records.as_numpy_iterator())) == 20
