"""TFRecord datasets: what ingest writes is what training reads, in the same order."""

import json
import os

import numpy as np
import pytest

from dim_tf.config import Augmentation, ConfigError, TrainConfig
from dim_tf.data import loaders, streams
from dim_tf.data.tfrecords import read_tfrecord_schema, write_tfrecord_dataset
from dim_tf.errors import DataError
from tests.training.synthetic import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(str(root), {"train": 13, "test": 6})
    return str(root)


def _records(source):
    return [(r["image"], int(r["label"]), r["name"]) for r in source.records.as_numpy_iterator()]


def test_round_trip_keeps_bytes_labels_names_and_order(folder, tmp_path):
    sources = {s: loaders.load_source(f"folder:{folder}", s) for s in ("train", "test")}
    statistics = write_tfrecord_dataset(sources, str(tmp_path), examples_per_shard=5, progress=False)
    schema = read_tfrecord_schema(str(tmp_path))
    assert schema["splits"]["train"]["files"] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert schema["label_names"] == ["class_0", "class_1"]
    for split, source in sources.items():
        copy = loaders.load_source(f"tfrecord:{tmp_path}", split)
        assert copy.num_examples == source.num_examples
        assert copy.label_names == source.label_names
        assert _records(copy) == _records(source)
    assert statistics["train"]["examples_per_label"] == {"class_0": 7, "class_1": 6}
    assert statistics["train"]["height"]["max"] == statistics["train"]["width"]["min"] == 32
    assert statistics["train"]["file_channels"] == {"3": 13}
    assert json.load(open(tmp_path / "statistics.json")) == statistics


def test_training_stream_is_the_same_from_folder_and_from_records(folder, tmp_path):
    source = loaders.load_source(f"folder:{folder}", "train")
    write_tfrecord_dataset({"train": source}, str(tmp_path), progress=False)
    copy = loaders.load_source(f"tfrecord:{tmp_path}", "train")
    settings = dict(global_batch_size=4, steps_per_epoch=3, start_step=2, seed=3, image_size=32,
                    channels=3, views=2, augmentation=Augmentation(
                        random_crop=True, random_flip=True, color_jitter=0.5,
                        grayscale_probability=0.5))
    for (a, la), (b, lb) in zip(streams.training_dataset(source, **settings).take(4),
                                streams.training_dataset(copy, **settings).take(4)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())


def test_undecodable_files_stop_the_write_or_are_listed_with_skip_corrupt(folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    bad = broken / "train" / "class_0" / "zz_truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    source = {"train": loaders.load_source(f"folder:{broken}", "train")}
    with pytest.raises(DataError, match="zz_truncated.jpg: truncated or damaged JPEG"):
        write_tfrecord_dataset(source, str(tmp_path / "strict"), progress=False)
    assert not os.path.exists(tmp_path / "strict" / "schema.json")

    statistics = write_tfrecord_dataset(source, str(tmp_path / "lenient"), skip_corrupt=True,
                                        progress=False)
    assert statistics["train"]["num_examples"] == 13
    [corrupt] = statistics["train"]["corrupt_files"]
    assert os.path.basename(corrupt["path"]) == "zz_truncated.jpg"
    assert corrupt["reason"].startswith("truncated or damaged JPEG")


def test_unfinished_or_missing_datasets_are_refused_with_the_reason(folder, tmp_path):
    with pytest.raises(DataError, match="not a dataset written by the ingest stage"):
        loaders.load_source(f"tfrecord:{tmp_path}", "train")
    with pytest.raises(ConfigError, match="schema.json"):
        TrainConfig(model_dir=str(tmp_path / "run"), dataset=f"tfrecord:{tmp_path}").check_paths()
    write_tfrecord_dataset({"train": loaders.load_source(f"folder:{folder}", "train")},
                           str(tmp_path), progress=False)
    with pytest.raises(DataError, match="no split 'test'; it has: train"):
        loaders.load_source(f"tfrecord:{tmp_path}", "test")
    os.remove(tmp_path / "train-00000-of-00001.tfrecord")
    with pytest.raises(DataError, match="missing shard"):
        loaders.load_source(f"tfrecord:{tmp_path}", "train")
    with pytest.raises(DataError, match="does not exist"):
        loaders.load_source(f"tfrecord:{tmp_path}/nope", "train")
