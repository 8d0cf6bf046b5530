"""The evaluation report: JSON and Markdown agree, pictures are real PNGs, the
projector files point at the checkpointed codes, and the paper's numbers are looked
up right. Small inputs (40 test / 60 train images) keep t-SNE fast."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dim_tf.evaluation.markdown import PAPER_ROW
from dim_tf.evaluation.paper import paper_reference
from dim_tf.evaluation.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
CODE_WIDTH = 16


def _results(probes) -> dict:
    rng = np.random.default_rng(7)

    def accuracy(top5):
        # Values with many decimals, so the 2-decimal formatting is really checked.
        return {"top1": float(rng.uniform(10, 90)), "top5": float(rng.uniform(50, 99)) if top5 else None}

    if probes is None:
        probes = {kind: {layer: accuracy(kind != "knn") for layer in ("conv", "fc", "y")}
                  for kind in ("classifier", "linear", "knn")}
    return {
        "settings": {"model_dir": "runs/quick", "dataset": "sample:cifar10", "splits": ["train", "test"],
                     "layers": ["conv", "fc", "y"], "probe_epochs": 3, "seed": 0},
        "probes": probes,
        "diagnostics": {"ndm": 0.1834, "mine_nats": 1.2, "ms_ssim": None},
        "paper": paper_reference("sample:cifar10", "jsd", 0.0, 1.0),
        "timing_seconds": {"features": 12.3, "probes": 40.1, "diagnostics": 30.0, "total": 90.0},
    }


def _images_and_codes(count, channels, rng):
    images = rng.integers(0, 256, size=(count, 32, 32, channels), dtype=np.uint8)
    return images, rng.normal(size=(count, CODE_WIDTH)).astype(np.float32)


def _write_fake_logs(model_dir):
    writer = tf.summary.create_file_writer(str(model_dir / "logs" / "train"))
    with writer.as_default():
        for step in (10, 20, 30, 40):
            tf.summary.scalar("loss/local", 1.0 / step, step=step)
            tf.summary.scalar("mi/local", 0.1 * step, step=step)
    writer.close()


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    test_images, test_codes = _images_and_codes(40, 3, rng)
    train_images, train_codes = _images_and_codes(60, 3, rng)
    test_labels = np.arange(40) % 10
    test_labels[::7] = -1  # some unlabelled test images
    _write_fake_logs(root / "run")
    results = _results(None)
    artifacts = write_report(
        str(root / "report"), results, model_dir=str(root / "run"), label_names=LABEL_NAMES,
        test_images=test_images, test_labels=test_labels, test_codes=test_codes,
        train_images=train_images, train_codes=train_codes, embedding_points=30, seed=0)
    return root / "report", results, artifacts


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert 300 <= width <= 4000 and 300 <= height <= 4000, (path, image.size)


def _markdown_table(markdown, first_header):
    """The rows (lists of cell texts) of the table whose first header cell is `first_header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    assert set(rows[1][0]) <= set("-|"), "the second line must be the header separator"
    return rows[0], rows[2:]


def test_every_artifact_exists_and_pictures_are_pngs(full_report):
    report_dir, _, artifacts = full_report
    assert set(artifacts) == {"report_json", "report_md", "loss_curves", "nearest_neighbours",
                              "embedding_tsne", "projector", "projector_config",
                              "projector_metadata"}
    for name, path in artifacts.items():
        assert os.path.exists(path), name
        if path.endswith(".png"):
            _check_png(path)
    # Atomic writes leave no temporary files behind.
    assert sorted(os.listdir(report_dir)) == sorted(
        ["report.json", "report.md", "loss_curves.png", "nearest_neighbours.png",
         "embedding_tsne.png", "projector"])


def test_json_is_results_plus_relative_artifacts(full_report):
    report_dir, results, artifacts = full_report
    stored = json.loads((report_dir / "report.json").read_text())
    assert stored.pop("artifacts") == {name: os.path.relpath(path, report_dir)
                                       for name, path in artifacts.items()}
    assert stored == results


def test_markdown_accuracy_table_matches_json(full_report):
    report_dir, _, _ = full_report
    stored = json.loads((report_dir / "report.json").read_text())
    header, rows = _markdown_table((report_dir / "report.md").read_text(), "probe")
    assert header == ["probe", "conv", "fc", "y"]
    assert [row[0] for row in rows] == ["classifier", "linear", "knn", PAPER_ROW]
    cell = re.compile(r"^(\d+\.\d{2})(?: \((\d+\.\d{2})\))?$")
    for row in rows[:-1]:
        for layer, text in zip(header[1:], row[1:]):
            expected = stored["probes"][row[0]][layer]
            top1, top5 = cell.match(text).groups()
            assert float(top1) == round(expected["top1"], 2)
            if expected["top5"] is None:
                assert top5 is None
            else:
                assert float(top5) == round(expected["top5"], 2)
    paper = rows[-1]
    assert [float(x) for x in paper[1:]] == [round(stored["paper"][k], 2) for k in header[1:]]
    assert [float(x) for x in paper[1:]] == [73.25, 73.62, 66.96]


def test_markdown_has_diagnostics_timing_and_relative_images(full_report):
    report_dir, _, _ = full_report
    markdown = (report_dir / "report.md").read_text()
    _, diagnostics = _markdown_table(markdown, "measure")
    assert [row[:2] for row in diagnostics] == [["ndm", "0.1834"], ["mine_nats", "1.2000"],
                                                ["ms_ssim", "—"]]
    assert all(row[2] for row in diagnostics[:3])  # every known measure is explained
    _, timing = _markdown_table(markdown, "stage")
    assert ["total", "90.0"] in timing
    _, settings = _markdown_table(markdown, "setting")
    assert ["dataset", "sample:cifar10"] in settings
    for name in ("loss_curves.png", "nearest_neighbours.png", "embedding_tsne.png"):
        assert re.search(rf"!\[[^\]]+\]\({re.escape(name)}\)", markdown), name


def test_projector_files_name_the_checkpointed_tensor(full_report):
    report_dir, _, artifacts = full_report
    projector = report_dir / "projector"
    config = (projector / "projector_config.pbtxt").read_text()
    tensor_name = re.search(r'tensor_name: "([^"]+)"', config).group(1)
    assert tensor_name == "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    assert 'metadata_path: "metadata.tsv"' in config
    checkpoint = tf.train.latest_checkpoint(str(projector))
    codes = tf.train.load_checkpoint(checkpoint).get_tensor(tensor_name)
    assert codes.shape == (30, CODE_WIDTH)  # embedding_points caps the 40 test codes
    rows = (projector / "metadata.tsv").read_text().splitlines()
    assert len(rows) == 30 and "label" not in rows  # one column: no header row
    assert set(rows) <= set(LABEL_NAMES) | {"unlabelled"}
    assert os.path.samefile(artifacts["projector_metadata"], projector / "metadata.tsv")


def test_skipped_probes_unlabelled_greyscale_and_no_logs(tmp_path):
    rng = np.random.default_rng(1)
    test_images, test_codes = _images_and_codes(40, 1, rng)
    train_images, train_codes = _images_and_codes(60, 1, rng)
    (tmp_path / "run").mkdir()  # a run without logs/train
    results = _results({"skipped": "the dataset has no labels"})
    artifacts = write_report(str(tmp_path / "report"), results, model_dir=str(tmp_path / "run"),
                             test_images=test_images, test_codes=test_codes,
                             train_images=train_images, train_codes=train_codes)
    assert "loss_curves" not in artifacts
    assert not (tmp_path / "report" / "loss_curves.png").exists()
    _check_png(artifacts["nearest_neighbours"])
    _check_png(artifacts["embedding_tsne"])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Probes skipped**: the dataset has no labels" in markdown
    assert "| probe |" not in markdown and PAPER_ROW not in markdown
    assert set((tmp_path / "report" / "projector" / "metadata.tsv").read_text().split()) == {
        "unlabelled"}
    stored = json.loads((tmp_path / "report" / "report.json").read_text())
    assert stored["probes"] == {"skipped": "the dataset has no labels"}
    assert "loss_curves" not in stored["artifacts"]


def test_numbers_only_report_writes_just_json_and_markdown(tmp_path):
    artifacts = write_report(str(tmp_path / "new" / "report"), _results(None))
    assert set(artifacts) == {"report_json", "report_md"}
    assert sorted(os.listdir(tmp_path / "new" / "report")) == ["report.json", "report.md"]


def test_rewriting_a_report_replaces_its_files(tmp_path):
    codes = np.random.default_rng(3).normal(size=(40, CODE_WIDTH)).astype(np.float32)
    for points in (40, 12):
        artifacts = write_report(str(tmp_path), _results(None), test_codes=codes,
                                 embedding_points=points)
    checkpoint = tf.train.latest_checkpoint(os.path.dirname(artifacts["projector_config"]))
    assert tf.train.load_checkpoint(checkpoint).get_tensor(
        "embedding/.ATTRIBUTES/VARIABLE_VALUE").shape == (12, CODE_WIDTH)
    assert sorted(os.listdir(tmp_path)) == ["embedding_tsne.png", "projector", "report.json",
                                           "report.md"]


def test_mismatched_inputs_are_named(tmp_path):
    rng = np.random.default_rng(2)
    images, codes = _images_and_codes(5, 3, rng)
    with pytest.raises(ValueError, match="test_images 5, test_codes 4"):
        write_report(str(tmp_path), _results(None), test_images=images, test_codes=codes[:4])
    with pytest.raises(ValueError, match="train_images must be uint8"):
        write_report(str(tmp_path), _results(None), train_images=images.astype(np.float32))
    with pytest.raises(ValueError, match="embedding_points must be >= 1; got 0"):
        write_report(str(tmp_path), _results(None), embedding_points=0)


@pytest.mark.parametrize("dataset, estimator, alpha, beta, expected", [
    ("cifar10", "jsd", 0.0, 1.0, ("DIM(L) JSD, CIFAR-10", 73.25, 73.62, 66.96)),
    ("sample:cifar10", "NCE", 0.0, 1.0, ("DIM(L) NCE, CIFAR-10", 75.21, 75.57, 69.13)),
    ("folder:/data/CIFAR10_jpeg", "jsd", 1.0, 0.0, ("DIM(G), CIFAR-10", 52.2, 52.84, 43.17)),
    ("cifar100", "jsd", 0.0, 1.0, ("DIM(L) JSD, CIFAR-100", 48.13, 45.92, 39.60)),
    ("cifar100", "nce", 0.5, 1.0, ("DIM(L) NCE, CIFAR-100", 49.74, 47.72, 41.61)),
    ("folder:/data/cifar100", "dv", 1.0, 0.0, ("DIM(G), CIFAR-100", 27.68, 24.35, 19.98)),
])
def test_paper_reference_numbers(dataset, estimator, alpha, beta, expected):
    setting, conv, fc, y = expected
    assert paper_reference(dataset, estimator, alpha, beta) == {
        "setting": setting, "conv": conv, "fc": fc, "y": y}


@pytest.mark.parametrize("dataset, estimator, alpha, beta", [
    ("stl10", "jsd", 0.0, 1.0),
    ("cifar10", "dv", 0.0, 1.0),
    ("cifar10", "jsd", 0.0, 0.0),
])
def test_paper_reference_is_none_without_a_paper_row(dataset, estimator, alpha, beta):
    assert paper_reference(dataset, estimator, alpha, beta) is None
