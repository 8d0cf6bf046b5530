"""Opening a dataset: image folders (and the shipped sample), TFDS catalogue datasets."""

import os

import pytest

from dim_tf.config import DatasetSpec
from dim_tf.data import loaders
from dim_tf.errors import DataError
from tests.training.synthetic import write_image_folder


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 20, "test": 6})
    return str(tmp_path / "images")


def test_folder_source_reads_splits_labels_and_names(folder):
    source = loaders.load_source(f"folder:{folder}", "train")
    assert source.num_examples == 20
    assert source.label_names == ("class_0", "class_1")
    records = list(source.records.as_numpy_iterator())
    assert len(records) == 20
    assert all(os.path.exists(r["name"].decode()) for r in records)
    assert {int(r["label"]) for r in records} == {0, 1}


def test_a_parsed_spec_opens_the_same_source_under_the_same_name(folder):
    by_text = loaders.load_source(f"folder:{folder}", "test")
    by_spec = loaders.load_source(DatasetSpec.parse(f"folder:{folder}"), "test")
    assert by_spec.name == by_text.name == f"folder:{folder}"
    assert list(by_spec.records.as_numpy_iterator()) == list(by_text.records.as_numpy_iterator())


def test_missing_split_names_the_splits(folder):
    with pytest.raises(DataError, match="has no split 'unlabelled'.*test, train"):
        loaders.load_source(f"folder:{folder}", "unlabelled")


def test_sample_dataset_ships_with_the_package():
    source = loaders.load_source("sample:cifar10", "train")
    assert source.num_examples == 1000 and len(source.label_names) == 10
    assert source.name == f"folder:{DatasetSpec.parse('sample:cifar10').image_folder}"


def test_catalogue_dataset_without_files_explains_offline_options(tmp_path):
    with pytest.raises(DataError) as error:
        loaders.load_source("cifar10", "train", data_dir=str(tmp_path / "tfds"))
    message = str(error.value)
    assert "--manual_dir" in message and "folder:" in message and "--download" in message
