"""The feature cache: keyed by the encoder's content, so retraining to the same
`ckpt-N` re-encodes, and an unchanged encoder is never encoded twice.

The end-to-end test trains real runs with `python -m dim_tf.train` and evaluates
them in-process, counting the calls of `encode_dataset` (the only place
features are computed) to tell a cache hit from a miss.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.config import EvalConfig
from dim_tf.evaluation import features
from dim_tf.evaluation import run as evaluation_run
from tests.training.synthetic import write_image_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
# 32 training images, batch 8, 1 epoch: every run ends at checkpoints/ckpt-4.
TRAIN = ["--epochs=1", "--mi_units=16", "--batch_size=8", "--verbose=0", "--learning_rate=1e-3"]


def _train(dataset, model_dir, *args):
    result = subprocess.run(
        [sys.executable, "-m", "dim_tf.train", f"--dataset={dataset}", f"--model_dir={model_dir}",
         *TRAIN, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture
def count_encodes(monkeypatch):
    """Counts the splits `evaluate` encodes (cache misses); no report is written (pictures and
    t-SNE take longer than the rest, and test_evaluate_cli checks them)."""
    calls = []
    monkeypatch.setattr(evaluation_run.report, "write_report", lambda *args, **kwargs: {})

    def counting(*args, **kwargs):
        calls.append(1)
        return features.encode_dataset(*args, **kwargs)

    monkeypatch.setattr(evaluation_run, "encode_dataset", counting)
    return calls


def _evaluate(report_dir, **overrides):
    config = EvalConfig(report_dir=str(report_dir), probes=("knn",), knn_k=5, diagnostics=False,
                        batch_size=16, **overrides)
    return evaluation_run.evaluate(config, progress=False)


def _cache(report_dir) -> dict:
    """{cache file name: modification time in ns}."""
    cache = Path(report_dir) / "cache"
    return {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} if cache.exists() else {}


def _cached_test_features(report_dir, names) -> list[np.ndarray]:
    """The cached y features of the test split (16 images) among the cache files `names`."""
    found = []
    for name in sorted(names):
        with np.load(Path(report_dir) / "cache" / name) as data:
            if len(data["labels"]) == 16:
                found.append(data["feature_y"])
    return found


@pytest.mark.e2e
def test_retraining_to_the_same_checkpoint_path_re_encodes(tmp_path, count_encodes):
    write_image_folder(tmp_path / "images", {"train": 32, "test": 16})
    dataset, run, report = f"folder:{tmp_path / 'images'}", tmp_path / "run", tmp_path / "report"
    _train(dataset, run, "--seed=0")
    first = _evaluate(report, model_dir=str(run))
    assert len(count_encodes) == 2  # train and test split
    cache = _cache(report)
    assert len(cache) == 2

    # The same checkpoint again: both splits come from the cache, whose files are not rewritten.
    again = _evaluate(report, model_dir=str(run))
    assert len(count_encodes) == 2, "an unchanged checkpoint was encoded again"
    assert _cache(report) == cache
    assert again.probes == first.probes

    # Retrained from scratch into the same directory, to the same ckpt-4, with other weights.
    _train(dataset, run, "--seed=1", "--start_over")
    retrained = _evaluate(report, model_dir=str(run))
    assert retrained.settings["checkpoint"] == first.settings["checkpoint"]
    assert first.settings["checkpoint"].endswith("ckpt-4")
    assert len(count_encodes) == 4, (
        "the retrained checkpoint's features came from the old checkpoint's cache")
    new_files = set(_cache(report)) - set(cache)
    assert len(new_files) == 2
    (old_y,), (new_y,) = _cached_test_features(report, cache), _cached_test_features(report, new_files)
    assert not np.allclose(old_y, new_y)

    # A random encoder is keyed by its seed and architecture: reused, and the same weights
    # (hence the same features) whichever report directory it is evaluated into.
    _evaluate(report, model_dir=str(run), random_init=True)
    _evaluate(report, model_dir=str(run), random_init=True)
    assert len(count_encodes) == 6
    _evaluate(tmp_path / "elsewhere", model_dir=str(run), random_init=True)
    random_files = set(_cache(report)) - set(cache) - new_files
    (here,), (there,) = (_cached_test_features(report, random_files),
                         _cached_test_features(tmp_path / "elsewhere", _cache(tmp_path / "elsewhere")))
    np.testing.assert_allclose(here, there, rtol=1e-5, atol=1e-6)


def test_checkpoint_digest_follows_the_weights_not_the_path(tmp_path):
    variable = tf.Variable(tf.zeros([3, 4]))
    checkpoint = tf.train.Checkpoint(v=variable)
    prefix = checkpoint.write(str(tmp_path / "ckpt-1"))
    digest = features.checkpoint_digest(prefix)
    assert features.checkpoint_digest(prefix) == digest
    variable.assign_add(tf.ones([3, 4]))
    assert features.checkpoint_digest(checkpoint.write(prefix)) != digest  # same path, new weights
    with pytest.raises(FileNotFoundError, match="no ckpt-9.index"):
        features.checkpoint_digest(str(tmp_path / "ckpt-9"))


def test_saved_model_digest_follows_the_weights(tmp_path):
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([2])])
    tf.saved_model.save(module, str(tmp_path / "1"))
    digest = features.saved_model_digest(str(tmp_path / "1"))
    assert features.saved_model_digest(str(tmp_path / "1")) == digest
    module.v.assign([3.0, 4.0])
    tf.saved_model.save(module, str(tmp_path / "1"))  # replaced in place
    assert features.saved_model_digest(str(tmp_path / "1")) != digest
    os.remove(tmp_path / "1" / "variables" / "variables.index")
    assert features.saved_model_digest(str(tmp_path / "1")) != digest


def test_the_cache_keeps_the_encoders_cached_last_and_forgets_older_ones(tmp_path):
    cache = tmp_path / "cache"
    computed = []

    def lookup(encoder: str, split: str) -> features.SplitFeatures:
        def compute():
            computed.append((encoder, split))
            value = float(len(computed))
            return features.SplitFeatures({"y": np.full([2, 3], value, np.float32)},
                                          np.zeros([2], np.int64), np.zeros([2, 4, 4, 3], np.uint8))
        return features.cached_features(str(cache), {"checkpoint_sha256": encoder}, {"split": split},
                                        compute)

    def files_of(encoder: str) -> set[str]:
        key = features._key({"checkpoint_sha256": encoder})
        return {p.name for p in cache.iterdir() if p.name.startswith(f"features-{key}-")}

    def age_all_files(seconds: int):
        """Sets every cache file back in time: files written next are newer, whatever the
        file system's timestamp resolution."""
        for path in cache.iterdir():
            stamp = path.stat().st_mtime_ns - seconds * 10**9
            os.utime(path, ns=(stamp, stamp))

    for encoder in ("trained", "random"):
        for split in ("train", "test"):
            lookup(encoder, split)
        age_all_files(10)
    assert len(computed) == 4 and len(files_of("trained")) == len(files_of("random")) == 2
    first_value = lookup("trained", "test").features["y"][0, 0]
    assert len(computed) == 4, "a cached split was computed again"

    (cache / "features-0123456789abcdef.npz").write_bytes(b"old single-key name")
    (cache / "notes.txt").write_text("not the cache's")
    age_all_files(10)
    lookup("retrained", "train")  # a third encoder: the one cached first is forgotten
    assert files_of("trained") == set()
    assert len(files_of("random")) == 2 and len(files_of("retrained")) == 1
    assert not (cache / "features-0123456789abcdef.npz").exists()
    assert (cache / "notes.txt").read_text() == "not the cache's"

    recomputed = lookup("trained", "test")
    assert computed[-1] == ("trained", "test")
    assert recomputed.features["y"][0, 0] != first_value
    assert files_of("random") == set(), "the encoder cached longest ago was kept"
