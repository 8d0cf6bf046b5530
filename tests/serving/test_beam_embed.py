"""Batch embedding on Apache Beam (dim_tf.serving.beam_embed, dim_tf.embed --engine=beam):
the same vectors as the in-process client, by id, from a folder or an ingested TFRecord
dataset; bad files; argument and flag checks. Pipelines run on the in-memory DirectRunner."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("apache_beam")

from dim_tf.data.loaders import load_source  # noqa: E402
from dim_tf.data.tfrecords import write_tfrecord_dataset  # noqa: E402
from dim_tf.errors import ConfigError, DataError, ServingError  # noqa: E402
from dim_tf.models.encoders import build_encoder  # noqa: E402
from dim_tf.serving import beam_embed, client  # noqa: E402
from dim_tf.serving.export import export_encoder  # noqa: E402
from tests.training.synthetic import write_image_folder  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
# One worker in this process: spawning worker processes costs seconds per pipeline.
IN_MEMORY = "--direct_running_mode=in_memory --direct_num_workers=1"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_embed")
    return export_encoder(build_encoder("basic32x32", sync_batch_norm=False), str(root / "model"))


def _save(path: Path, shape, seed: int, fmt: str = "PNG") -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Images of two sizes (a batch mixes them), a gray one, a BMP (decoded by Pillow)
    and clutter that is no image and must be skipped."""
    root = tmp_path_factory.mktemp("mixed")
    for i in range(3):
        _save(root / f"big_{i}.png", (40, 40, 3), seed=i)
        _save(root / "small" / f"small_{i}.jpg", (24, 32, 3), seed=10 + i, fmt="JPEG")
    _save(root / "gray.png", (40, 40), seed=20)
    _save(root / "small" / "pillow.bmp", (24, 32, 3), seed=21, fmt="BMP")
    (root / ".DS_Store").write_bytes(b"\x00 clutter")
    return root


def _in_process(saved_model, folder, feature):
    """{path: vector} from dim_tf.embed's local engine, one image per call."""
    vectors, paths, _ = client.embed_folder(client.InProcessBackend(saved_model), str(folder),
                                         batch_size=1, output=feature, progress=False)
    return dict(zip(paths, vectors))


def _assert_distinct(vectors):
    """Every image has its own vector: rows matched to the wrong ids could not pass."""
    stacked = np.stack(list(vectors))
    distances = np.linalg.norm(stacked[:, None] - stacked[None], axis=-1)
    assert distances[~np.eye(len(stacked), dtype=bool)].min() > 1e-3


@pytest.mark.parametrize("output_format", ["tfrecord", "parquet"])
def test_beam_embeddings_equal_the_in_process_ones(saved_model, mixed_folder, tmp_path,
                                                   output_format):
    output = tmp_path / "out" / "emb"
    output.parent.mkdir()
    stale = tmp_path / "out" / f"emb-00000-of-00003.{output_format}"  # an earlier run's shard
    stale.write_bytes(b"")
    counters = beam_embed.embed_with_beam(
        saved_model, str(output), images=str(mixed_folder), features=("y", "fc"),
        output_format=output_format, batch_size=16, pipeline_args=IN_MEMORY)
    assert counters == {"images_read": 8, "bad_files": 0, "images_embedded": 8}
    assert not stale.exists()
    ids, features = beam_embed.read_embeddings(str(output), output_format)
    assert set(features) == {"y", "fc"}
    for name, size in (("y", 64), ("fc", 1024)):
        expected = _in_process(saved_model, mixed_folder, name)
        assert ids == sorted(expected)
        _assert_distinct(expected.values())
        assert features[name].shape == (8, size) and features[name].dtype == np.float32
        np.testing.assert_allclose(features[name], np.stack([expected[i] for i in ids]), atol=1e-5)


def test_a_batch_of_mixed_sizes_comes_back_in_input_order(saved_model):
    """RunInference's batches hold several sizes; the signature takes one per call."""
    signature = client.load_signature(saved_model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in [(40, 40, 3), (24, 32, 3), (40, 40, 3), (8, 8, 3), (24, 32, 3)]]
    rows = beam_embed.embed_mixed_sizes(signature, images, ("y", "conv"))
    for image, row in zip(images, rows):
        alone = signature(images=image[None])
        np.testing.assert_allclose(row["y"], alone["y"].numpy()[0], atol=1e-5)
        np.testing.assert_allclose(row["conv"], alone["conv"].numpy().reshape(-1), atol=1e-5)
    _assert_distinct(row["y"] for row in rows)


def test_an_ingested_dataset_gives_the_same_vectors_by_image_name(saved_model, tmp_path):
    tree = tmp_path / "tree"
    write_image_folder(tree, {"train": 5, "test": 3})
    sources = {split: load_source(f"folder:{tree}", split) for split in ("train", "test")}
    write_tfrecord_dataset(sources, str(tmp_path / "tfrecords"), progress=False)
    expected = _in_process(saved_model, tree, "y")

    counters = beam_embed.embed_with_beam(saved_model, str(tmp_path / "all"),
                                          examples=str(tmp_path / "tfrecords"), batch_size=4,
                                          pipeline_args=IN_MEMORY)
    assert counters["images_embedded"] == 8
    ids, features = beam_embed.read_embeddings(str(tmp_path / "all"))
    assert ids == sorted(expected)
    np.testing.assert_allclose(features["y"], np.stack([expected[i] for i in ids]), atol=1e-5)

    beam_embed.embed_with_beam(saved_model, str(tmp_path / "test"), split="test",
                               examples=str(tmp_path / "tfrecords"), output_format="parquet",
                               pipeline_args=IN_MEMORY)
    ids, features = beam_embed.read_embeddings(str(tmp_path / "test"), "parquet")
    assert len(ids) == 3 and all(f"{tree}/test/" in i for i in ids)
    np.testing.assert_allclose(features["y"], np.stack([expected[i] for i in ids]), atol=1e-5)


def test_a_bad_file_fails_the_run_unless_skipped(saved_model, tmp_path):
    folder = tmp_path / "images"
    for i in range(3):
        _save(folder / f"good_{i}.png", (32, 32, 3), seed=i)
    _save(tmp_path / "whole.png", (32, 32, 3), seed=9)
    whole = (tmp_path / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[:len(whole) // 2])  # the header reads fine
    output = tmp_path / "out" / "emb"
    bad_list = Path(str(output) + client.BAD_FILES_SUFFIX)

    with pytest.raises(DataError, match=r"1 image\(s\) could not be decoded.*\n.*truncated\.png: "
                                        r"truncated PNG"):
        beam_embed.embed_with_beam(saved_model, str(output), images=str(folder),
                                   pipeline_args=IN_MEMORY)
    assert not list(output.parent.glob("emb-*"))  # no embeddings written
    assert [json.loads(line)["id"] for line in bad_list.read_text().splitlines()] == [
        str(folder / "truncated.png")]

    counters = beam_embed.embed_with_beam(saved_model, str(output), images=str(folder),
                                          skip_bad=True, pipeline_args=IN_MEMORY)
    assert counters == {"images_read": 4, "bad_files": 1, "images_embedded": 3}
    ids, _ = beam_embed.read_embeddings(str(output))
    assert [Path(i).name for i in ids] == ["good_0.png", "good_1.png", "good_2.png"]

    # A file the listing refuses (no image at all): refused before the pipeline, or with
    # skip_bad counted and listed with the others.
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        beam_embed.embed_with_beam(saved_model, str(output), images=str(folder),
                                   pipeline_args=IN_MEMORY)
    counters = beam_embed.embed_with_beam(saved_model, str(output), images=str(folder),
                                          skip_bad=True, pipeline_args=IN_MEMORY)
    assert (counters["bad_files"], counters["images_embedded"]) == (2, 3)
    listed = [json.loads(line) for line in bad_list.read_text().splitlines()]
    assert [Path(entry["id"]).name for entry in listed] == ["notes.txt", "truncated.png"]
    assert listed[0]["reason"].startswith("not an image")


def test_bad_arguments_are_refused_before_the_pipeline(saved_model, mixed_folder, tmp_path):
    def embed(**kwargs):
        arguments = {"saved_model_dir": saved_model, "output": str(tmp_path / "emb"),
                     "images": str(mixed_folder), "pipeline_args": IN_MEMORY, **kwargs}
        return beam_embed.embed_with_beam(**arguments)

    for bad, message in [({"output_format": "csv"}, "output_format must be one of"),
                         ({"features": ("y", "pool")}, "features must be distinct names"),
                         ({"examples": str(tmp_path)}, "exactly one of images"),
                         ({"split": "test"}, "split='test' selects a split of examples"),
                         ({"batch_size": 0}, "batch_size must be >= 1"),
                         ({"pipeline_args": "--no_such_option=1"}, "--no_such_option")]:
        with pytest.raises(ConfigError, match=message):
            embed(**bad)
    with pytest.raises(ServingError, match="No saved_model.pb"):
        embed(saved_model_dir=str(tmp_path))
    with pytest.raises(ServingError, match="no signature 'nope'; it has embed, embed_encoded, "
                                           "encode_normalized, probe_features"):
        embed(signature="nope")
    with pytest.raises(DataError, match="does not exist"):
        embed(images=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="has no schema.json"):
        embed(images=None, examples=str(tmp_path))
    assert not list(tmp_path.glob("emb*"))

    (tmp_path / "emb-00000-of-00002.tfrecord").write_bytes(b"")
    with pytest.raises(DataError, match="not one complete set"):
        beam_embed.read_embeddings(str(tmp_path / "emb"))
    with pytest.raises(DataError, match="No embeddings"):
        beam_embed.read_embeddings(str(tmp_path / "emb"), "parquet")


# Runs dim_tf.embed's command line once per argument list in one process; reports the
# exit status, stderr and whether TensorFlow had loaded by then.
_CLI_RUNNER = """
import contextlib, io, json, sys
from absl import flags
from dim_tf import cli, embed
results = []
for argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    sys.argv, stderr = ["dim_tf.embed", *argv], io.StringIO()
    status = 0
    with contextlib.redirect_stderr(stderr):
        try:
            cli.run(embed.main, embed.PROGRAM)
        except SystemExit as stop:
            status = stop.code or 0
    results.append([status, stderr.getvalue(), "tensorflow" in sys.modules])
print(json.dumps(results))
"""


@pytest.mark.e2e
def test_cli_refuses_wrong_flag_combinations_before_tensorflow_loads(saved_model, mixed_folder,
                                                                     tmp_path):
    model, images, out = f"--saved_model={saved_model}", f"--images={mixed_folder}", \
        f"--output={tmp_path / 'cli'}"
    beam = ["--engine=beam", model, images, out]
    refused = [
        (["--engine=beam", "--server=localhost:8500", images, out], "not --server"),
        (["--engine=beam", images, out], "give --saved_model"),
        ([*beam, f"--examples={tmp_path}"], "exactly one of --images"),
        ([*beam, "--split=test"], "--split selects a split of --examples"),
        ([*beam, "--output_format=npy"], "--output_format=npy is --engine=local's"),
        ([*beam, "--feature=fc"], "takes --features"),
        ([*beam, "--features=y,pool"], "--features=y,pool: give names among"),
        ([*beam, "--beam_pipeline_args=--no_such_option=1"], "--no_such_option"),
        ([model, images, out, "--output_format=parquet"], "--output_format=parquet: only with"),
        ([model, images, out, f"--examples={tmp_path}"],
         "--examples: only with --engine=beam"),
    ]
    ran = [*beam, "--output_format=parquet", "--features=y,fc", "--batch_size=4",
           f"--beam_pipeline_args={IN_MEMORY}"]
    result = subprocess.run(
        [sys.executable, "-c", _CLI_RUNNER, json.dumps([args for args, _ in refused] + [ran])],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    *refusals, (status, stderr, _) = json.loads(result.stdout.strip().splitlines()[-1])
    for (args, message), (code, text, tensorflow_loaded) in zip(refused, refusals):
        assert code == 2 and message in text, (args, code, text)
        assert not tensorflow_loaded, args
    assert status == 0, stderr[-3000:]
    ids, features = beam_embed.read_embeddings(str(tmp_path / "cli"), "parquet")
    assert len(ids) == 8 and set(features) == {"y", "fc"}
