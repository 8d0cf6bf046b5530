"""The evaluation report: numbers, pictures and projector files for one encoder.

`write_report(report_dir, results, ...)` turns the evaluation's results dict
(`EvaluationResult.to_dict()`) into files a person can read and a program can
parse:

    report_dir/report.json            `results` plus {"artifacts": {name: relative path}}
    report_dir/report.md              settings, accuracy table (next to the paper's Table 1),
                                      diagnostics, timing, the pictures below (`markdown`)
    report_dir/loss_curves.png        TensorBoard scalars of the training run (loss/*, mi/*, prior/*)
    report_dir/nearest_neighbours.png test queries and their nearest training images (cosine of y)
    report_dir/embedding_tsne.png     t-SNE of the test codes, coloured by label
    report_dir/projector/             TensorBoard projector: checkpointed codes + metadata.tsv

Every number in report.md is formatted from the same dict that is stored in
report.json, so the two cannot disagree. Every file is written atomically
(`dim_tf.io`; the projector directory as a whole), so a reader never sees half
a file; report.json is written last, so its presence means the report is
complete. Pictures whose inputs are missing (no training logs, no images, no
codes) are skipped without an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from dim_tf.config import REPORT_JSON, TRAIN_LOG_DIR
from dim_tf.evaluation import figures
from dim_tf.evaluation.markdown import render_markdown
from dim_tf.evaluation.projector import PROJECTOR_CONFIG, PROJECTOR_METADATA, write_projector
from dim_tf.evaluation.scalars import read_scalars
from dim_tf.io import atomic_write_json, atomic_write_text

REPORT_MD = "report.md"
LOSS_CURVES_PNG = "loss_curves.png"
NEAREST_NEIGHBOURS_PNG = "nearest_neighbours.png"
EMBEDDING_TSNE_PNG = "embedding_tsne.png"
PROJECTOR_DIR = "projector"
# Where a training run writes its TensorBoard scalars, inside its model_dir.


def write_report(
    report_dir: str,
    results: dict,
    *,
    model_dir: str | None = None,
    label_names: Sequence[str] = (),
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    test_codes: np.ndarray | None = None,
    train_images: np.ndarray | None = None,
    train_codes: np.ndarray | None = None,
    embedding_points: int = 1000,
    seed: int = 0,
) -> dict[str, str]:
    """Writes report.json, report.md, the pictures and the projector files.

    One call produces everything a person needs to judge a trained encoder,
    and a JSON file with the same numbers for programs. Pictures are drawn only
    when their inputs are given: loss curves need TensorBoard event files in
    `model_dir/logs/train/`, nearest neighbours need test and train images and
    codes, the t-SNE picture and the projector need test codes.

    Args:
        report_dir: directory to write into (created if needed; existing report
            files are replaced).
        results: the evaluation results (JSON-able; numpy scalars are stored
            as plain numbers): "settings", "probes" (probe kind -> layer ->
            {"top1", "top5"} in percent, or {"skipped": reason}), "diagnostics",
            "paper" (see `paper.paper_reference`) and "timing_seconds". Not
            modified.
        model_dir: the training run whose `logs/train/` scalars are plotted.
        label_names: class names indexed by label; labels beyond it are shown
            as numbers.
        test_images: uint8 [N, H, W, C], C in {1, 3}.
        test_labels: int [N]; -1 = unlabelled.
        test_codes: float [N, D], the global code y of each test image.
        train_images: uint8 [M, H, W, C], searched for nearest neighbours.
        train_codes: float [M, D], the global codes of `train_images`.
        embedding_points: at most this many test codes (a random subset drawn
            with `seed`) go into the t-SNE picture and the projector.
        seed: seed of every random choice (subset, queries, t-SNE).

    Returns:
        Artifact name -> path written: "report_json", "report_md" and, when
        drawn, "loss_curves", "nearest_neighbours", "embedding_tsne",
        "projector" (a directory), "projector_config", "projector_metadata".
        report.json holds the same mapping with paths relative to report_dir.

    Raises:
        ValueError: an array with the wrong rank, dtype or length (the message
            names the argument), or embedding_points < 1.
    """
    if embedding_points < 1:
        raise ValueError(f"embedding_points must be >= 1; got {embedding_points}.")
    test_images = _check_images("test_images", test_images)
    train_images = _check_images("train_images", train_images)
    test_codes = _check_codes("test_codes", test_codes)
    train_codes = _check_codes("train_codes", train_codes)
    _check_same_length(("test_images", test_images), ("test_codes", test_codes),
                       ("test_labels", test_labels))
    _check_same_length(("train_images", train_images), ("train_codes", train_codes))
    if test_labels is not None:
        test_labels = np.asarray(test_labels)
        if test_labels.ndim != 1 or not np.issubdtype(test_labels.dtype, np.integer):
            raise ValueError(f"test_labels must be int [N]; got dtype {test_labels.dtype}, "
                             f"shape {test_labels.shape}.")
    label_names = [str(name) for name in label_names]
    os.makedirs(report_dir, exist_ok=True)
    relative: dict[str, str] = {}

    if model_dir is not None:
        figure = figures.loss_curves_figure(read_scalars(os.path.join(model_dir, TRAIN_LOG_DIR)))
        if figure is not None:
            figures.save_figure(figure, os.path.join(report_dir, LOSS_CURVES_PNG))
            relative["loss_curves"] = LOSS_CURVES_PNG

    if all(a is not None for a in (test_images, test_codes, train_images, train_codes)):
        figure = figures.nearest_neighbours_figure(test_images, test_labels, test_codes,
                                                   train_images, train_codes, label_names, seed)
        figures.save_figure(figure, os.path.join(report_dir, NEAREST_NEIGHBOURS_PNG))
        relative["nearest_neighbours"] = NEAREST_NEIGHBOURS_PNG

    if test_codes is not None and len(test_codes):
        # The same subset feeds the t-SNE picture and the projector, so a point
        # seen in one can be found in the other.
        rng = np.random.default_rng(seed)
        count = min(embedding_points, len(test_codes))
        subset = np.sort(rng.choice(len(test_codes), size=count, replace=False))
        codes = test_codes[subset]
        labels = (np.full(count, figures.UNLABELLED) if test_labels is None
                  else test_labels[subset])
        figure = figures.tsne_figure(codes, labels, label_names, seed)
        if figure is not None:
            figures.save_figure(figure, os.path.join(report_dir, EMBEDDING_TSNE_PNG))
            relative["embedding_tsne"] = EMBEDDING_TSNE_PNG
        write_projector(os.path.join(report_dir, PROJECTOR_DIR), codes,
                        [figures.label_name(int(label), label_names) for label in labels])
        relative["projector"] = PROJECTOR_DIR
        relative["projector_config"] = f"{PROJECTOR_DIR}/{PROJECTOR_CONFIG}"
        relative["projector_metadata"] = f"{PROJECTOR_DIR}/{PROJECTOR_METADATA}"

    relative["report_md"] = REPORT_MD
    relative["report_json"] = REPORT_JSON
    # Round-trip through JSON first so report.md is formatted from exactly the
    # values report.json stores (numpy scalars become plain numbers).
    stored = json.loads(json.dumps({**results, "artifacts": relative}, default=_json_default))
    atomic_write_text(os.path.join(report_dir, REPORT_MD), render_markdown(stored, relative))
    # Last, so a report.json on disk means every file it lists is complete.
    atomic_write_json(os.path.join(report_dir, REPORT_JSON), stored)
    return {name: os.path.join(report_dir, path) for name, path in relative.items()}


def _check_images(name: str, images) -> np.ndarray | None:
    if images is None:
        return None
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [N, height, width, C] with C 1 or 3; got dtype "
                         f"{images.dtype}, shape {images.shape}.")
    return images


def _check_codes(name: str, codes) -> np.ndarray | None:
    if codes is None:
        return None
    codes = np.asarray(codes, dtype=np.float32)
    if codes.ndim != 2:
        raise ValueError(f"{name} must be float [N, D]; got shape {codes.shape}.")
    return codes


def _check_same_length(*named) -> None:
    given = [(name, len(value)) for name, value in named if value is not None]
    if len({length for _, length in given}) > 1:
        raise ValueError("These arrays must have one row per image, but their lengths differ: "
                         + ", ".join(f"{name} {length}" for name, length in given) + ".")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"results holds a {type(value).__name__}, which JSON cannot store: {value!r}")
