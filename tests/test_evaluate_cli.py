"""`python -m dim_tf.evaluate` end to end on a tiny generated tree."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.synthetic import write_image_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["--probe_epochs=2", "--diagnostic_steps=20", "--knn_k=5", "--batch_size=16"]


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_image_folder(root / "images", {"train": 32, "test": 16})
    result = _run("dim_tf.train", f"--dataset=folder:{root / 'images'}", f"--model_dir={root / 'run'}",
                  "--epochs=2", "--mi_units=16", "--batch_size=8", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_evaluate_a_run_and_its_random_baseline(trained_run):
    run = trained_run / "run"
    result = _run("dim_tf.evaluate", f"--model_dir={run}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "evaluation" / "report.json").read_text())
    for kind in ("classifier", "linear", "knn"):
        for layer in ("conv", "fc", "y"):
            top1 = report["probes"][kind][layer]["top1"]
            assert 0.0 <= top1 <= 100.0
            assert f"{top1:.2f}" in result.stdout  # the console table prints the report's numbers
    assert set(report["diagnostics"]) == {"ndm", "mine_nats", "ms_ssim"}
    assert report["settings"]["checkpoint"].endswith("ckpt-8")
    markdown = (run / "evaluation" / "report.md").read_text()
    assert "classifier" in markdown
    assert {"loss_curves", "nearest_neighbours", "embedding_tsne", "projector"} <= set(report["artifacts"])
    for name, relative in report["artifacts"].items():
        assert (run / "evaluation" / relative).exists(), name
    # Cached features are reused: a second run encodes nothing new.
    cache = sorted((run / "evaluation" / "cache").iterdir())
    again = _run("dim_tf.evaluate", f"--model_dir={run}", *FAST, "--probes=knn")
    assert again.returncode == 0 and sorted((run / "evaluation" / "cache").iterdir()) == cache

    baseline = _run("dim_tf.evaluate", f"--model_dir={run}", "--random_init", *FAST)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    random_report = json.loads((run / "evaluation_random_init" / "report.json").read_text())
    assert random_report["settings"]["checkpoint"] is None


def test_single_class_data_skips_probes_but_measures_mi(trained_run, tmp_path):
    write_image_folder(tmp_path / "one", {"train": 16, "test": 8}, classes=1)
    result = _run("dim_tf.evaluate", f"--model_dir={trained_run / 'run'}",
                  f"--dataset=folder:{tmp_path / 'one'}", f"--report_dir={tmp_path / 'report'}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "skipped" in report["probes"] and "probes skipped" in result.stdout
    assert report["diagnostics"]["ndm"] is not None


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of --model_dir"),
        (["--model_dir=/no/such/run"], "no config.json"),
        (["--saved_model=/no/such/model", "--dataset=sample:cifar10", "--report_dir=/tmp/x"],
         "no saved_model.pb"),
        (["--model_dir=/tmp", "--layers=conv,pool"], "--layers='pool' is not valid"),
    ],
)
def test_invalid_evaluation_flags(args, message):
    result = _run("dim_tf.evaluate", *args)
    assert result.returncode == 2 and message in result.stderr
