"""Image-folder listing: tfds.ImageFolder's classes and order, system files left out."""

import os

import pytest

from dim_tf.data import image_files, loaders
from tests.training.synthetic import write_image_folder


def test_listing_matches_tfds_image_folder_on_a_tree_it_reads_completely(tmp_path):
    import tensorflow_datasets as tfds

    write_image_folder(tmp_path / "clean", {"train": 12, "test": 5}, classes=3)
    builder = tfds.ImageFolder(str(tmp_path / "clean"))
    theirs = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    ours = loaders.load_source(f"folder:{tmp_path / 'clean'}", "train")
    assert ours.label_names == tuple(builder.info.features["label"].names)
    assert ([(r["image/filename"], r["label"]) for r in theirs.as_numpy_iterator()]
            == [(r["name"], r["label"]) for r in ours.records.as_numpy_iterator()])


@pytest.mark.parametrize("name, system", [
    (".DS_Store", True), ("._IMG_0001.JPG", True), (".ipynb_checkpoints", True), ("Thumbs.db", True),
    ("desktop.ini", True), ("__MACOSX", True), ("photo.jpg~", True), ("IMG_0001.JPG", False),
    ("café au lait", False), ("thumbs.png", False),
])
def test_system_files(name, system):
    assert image_files.is_system_file(name) is system


def test_class_list_is_the_union_of_the_splits_label_folders(tmp_path):
    for folder in ("train/b", "train/a", "test/c", "test/.ipynb_checkpoints", ".git/objects"):
        os.makedirs(tmp_path / folder)
    assert image_files.split_names(str(tmp_path)) == ["test", "train"]
    assert image_files.label_names(str(tmp_path)) == ("a", "b", "c")
