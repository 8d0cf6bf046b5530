"""The ingest on Apache Beam (DirectRunner) writes the single-process ingest's dataset,
byte for byte, and names or counts the files it cannot use."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dim_tf.data import loaders
from dim_tf.data.beam import pipeline_options
from dim_tf.data.beam_ingest import write_tfrecord_dataset_beam
from dim_tf.data.tfrecords import write_tfrecord_dataset
from dim_tf.errors import ConfigError, DataError
from tests.training.synthetic import write_image_folder

IN_MEMORY = "--direct_running_mode=in_memory --direct_num_workers=1"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """13 train images in two classes (JPEG, PNG), a grayscale one, a BMP (read through
    Pillow) and a 24x20 one; 4 test images."""
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(str(root), {"train": 13, "test": 4})
    rng = np.random.default_rng(0)
    class_1 = root / "train" / "class_1"
    Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8), "L").save(class_1 / "gray.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(class_1 / "bitmap.bmp")
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), np.uint8)).save(class_1 / "small.jpg")
    return str(root)


def _sources(root):
    return {split: loaders.load_source(f"folder:{root}", split) for split in ("train", "test")}


def _files(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_beam_writes_the_single_process_dataset_byte_for_byte(folder, tmp_path):
    local = write_tfrecord_dataset(_sources(folder), str(tmp_path / "local"), examples_per_shard=5,
                                   progress=False)
    statistics, counters = write_tfrecord_dataset_beam(
        _sources(folder), str(tmp_path / "beam"), examples_per_shard=5, pipeline_args=IN_MEMORY)
    assert statistics == local
    written = _files(tmp_path / "beam")
    assert written == _files(tmp_path / "local")  # shards, schema.json, statistics.json
    assert [n for n in written if n.startswith("train")] == [
        f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert statistics["train"]["file_channels"] == {"1": 1, "3": 15}
    assert statistics["train"]["height"]["min"] == 24
    assert counters == {"images_read": 20, "examples_written": 20, "shards_written": 5}


def test_shard_bytes_do_not_depend_on_the_workers_or_their_processes(folder, tmp_path):
    # Worker processes hash strings with their own seeds: map fields (the features of a
    # tf.train.Example) must still serialize in one order.
    write_tfrecord_dataset_beam(_sources(folder), str(tmp_path / "one"), examples_per_shard=3,
                                pipeline_args=IN_MEMORY)
    write_tfrecord_dataset_beam(
        _sources(folder), str(tmp_path / "threads"), examples_per_shard=3,
        pipeline_args="--direct_running_mode=multi_processing --direct_num_workers=2")
    assert _files(tmp_path / "one") == _files(tmp_path / "threads")


def test_unusable_files_stop_the_ingest_by_name_or_are_skipped_and_counted(folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    # Its header is whole, so it passes the listing's check; its data is cut, so a worker
    # finds it.
    whole = (broken / "train" / "class_0" / "000.jpg").read_bytes()
    (broken / "train" / "class_0" / "zz_truncated.jpg").write_bytes(whole[:-64])
    (broken / "train" / "class_0" / "notes.txt").write_text("not an image")  # refused by the listing
    strict = tmp_path / "strict"
    with pytest.raises(DataError, match=r"(?s)2 of 18 file\(s\).*notes.txt: not an image.*"
                                        r"zz_truncated.jpg: "):
        write_tfrecord_dataset_beam(_sources(broken), str(strict), pipeline_args=IN_MEMORY)
    assert os.listdir(strict) == []  # no shard, no schema, no leftovers

    statistics, counters = write_tfrecord_dataset_beam(
        _sources(broken), str(tmp_path / "beam"), examples_per_shard=5, skip_corrupt=True,
        pipeline_args=IN_MEMORY)
    assert counters["corrupt_files"] == 1 and counters["listing_rejects"] == 1
    assert counters["examples_written"] == 20
    assert [os.path.basename(c["path"]) for c in statistics["train"]["corrupt_files"]] == [
        "notes.txt", "zz_truncated.jpg"]
    local = write_tfrecord_dataset(_sources(broken), str(tmp_path / "local"), examples_per_shard=5,
                                   skip_corrupt=True, progress=False)
    assert statistics == local
    assert _files(tmp_path / "beam") == _files(tmp_path / "local")


def test_catalogue_and_tfrecord_sources_and_unknown_beam_options_are_refused(folder, tmp_path):
    write_tfrecord_dataset(_sources(folder), str(tmp_path / "records"), progress=False)
    records = {"train": loaders.load_source(f"tfrecord:{tmp_path / 'records'}", "train")}
    with pytest.raises(DataError, match="reads image folders"):
        write_tfrecord_dataset_beam(records, str(tmp_path / "out"), pipeline_args=IN_MEMORY)
    with pytest.raises(ConfigError, match="--direct_num_wrokers"):
        pipeline_options("--direct_num_wrokers=2")
    assert pipeline_options("").get_all_options()["direct_running_mode"] == "multi_processing"
    assert pipeline_options("--runner=FlinkRunner").get_all_options()["direct_num_workers"] == 1
