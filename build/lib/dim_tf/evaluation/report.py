"""The evaluation report: numbers, pictures and projector files for one encoder.

`write_report(report_dir, results, ...)` turns the evaluation command's
`results` dict into files a person can read and a program can parse:

    report_dir/report.json            `results` plus {"artifacts": {name: relative path}}
    report_dir/report.md              settings, accuracy table (next to the paper's Table 1),
                                      diagnostics, timing, the pictures below
    report_dir/loss_curves.png        TensorBoard scalars of the training run (loss/*, mi/*, prior/*)
    report_dir/nearest_neighbours.png test queries and their nearest training images (cosine of y)
    report_dir/embedding_tsne.png     t-SNE of the test codes, coloured by label
    report_dir/projector/             TensorBoard projector: checkpointed codes + metadata.tsv

Every number in report.md is formatted from the same dict that is stored in
report.json, so the two cannot disagree. Files are written under a temporary
name in the same directory and renamed into place (the projector directory as a
whole), so a reader never sees half a file; report.json is written last, so its
presence means the report is complete. Pictures whose inputs are missing (no
training logs, no images, no codes) are skipped without an error.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly,
not through pyplot, so no global backend or figure registry is touched.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LOSS_CURVES_PNG = "loss_curves.png"
NEAREST_NEIGHBOURS_PNG = "nearest_neighbours.png"
EMBEDDING_TSNE_PNG = "embedding_tsne.png"
PROJECTOR_DIR = "projector"
PROJECTOR_METADATA = "metadata.tsv"
PROJECTOR_CONFIG = "projector_config.pbtxt"  # the name TensorBoard's projector plugin looks for

LAYERS = ("conv", "fc", "y")
PROBE_ORDER = ("classifier", "linear", "knn")
PAPER_ROW = "paper (Hjelm et al. 2019), frozen MLP"
LOSS_GROUPS = ("loss", "mi", "prior")
UNLABELLED = -1
QUERIES = 8
NEIGHBOURS = 5

_PROBE_NOTES = {
    "classifier": "the paper's probe: flatten -> linear 200 -> dropout 0.1 -> BN -> ReLU -> "
                  "linear(classes), trained on frozen features",
    "linear": "a linear classifier on frozen features (the paper's Table 3 uses a linear SVM)",
    "knn": "k-nearest-neighbour vote among training features",
}
_DIAGNOSTIC_NOTES = {
    "ndm": "Neural dependency measure: DV estimate of the KL divergence between y and y with each "
           "dimension shuffled across the batch; lower = more independent factors.",
    "mine_nats": "MINE (Donsker-Varadhan) lower bound on I(X; Y) between an image and its "
                 "global code, in nats, from a bounded critic (at most 20 nats) trained for "
                 "--diagnostic_steps; higher = the code keeps more about the image; compare "
                 "runs with the same settings.",
    "ms_ssim": "Multi-scale SSIM (0 to 1) between test images and their reconstructions by a "
               "decoder trained on the frozen y; higher = more of the image is recoverable.",
}

# Hjelm et al. 2019 (OpenReview revision), Table 1: accuracy (%) of the frozen-feature
# MLP classifier on conv / fc / y. See docs/dim-spec.md section 7.
_PAPER_TABLE_1 = {
    ("CIFAR-10", "DIM(G)"): (52.2, 52.84, 43.17),
    ("CIFAR-10", "DIM(L) JSD"): (73.25, 73.62, 66.96),
    ("CIFAR-10", "DIM(L) NCE"): (75.21, 75.57, 69.13),
    ("CIFAR-100", "DIM(G)"): (27.68, 24.35, 19.98),
    ("CIFAR-100", "DIM(L) JSD"): (48.13, 45.92, 39.60),
    ("CIFAR-100", "DIM(L) NCE"): (49.74, 47.72, 41.61),
}


def paper_reference(dataset: str, estimator: str, alpha: float, beta: float) -> dict | None:
    """The paper's Table 1 accuracies for a training setting, if the paper reports it.

    Lets a report put the published numbers next to the measured ones without
    the caller knowing the table. Only CIFAR-10 and CIFAR-100 are covered; the
    paper's other datasets use different encoders and protocols.

    Args:
        dataset: the training `--dataset` value. Any name containing "cifar100"
            (case-insensitive) is CIFAR-100; otherwise any containing "cifar10"
            ("cifar10", "sample:cifar10", "folder:/data/cifar10_jpeg") is CIFAR-10.
        estimator: the MI estimator, "jsd" or "nce" ("infonce" is accepted).
        alpha: weight of the global MI term.
        beta: weight of the local MI term.

    Returns:
        {"setting": "DIM(L) JSD, CIFAR-10", "conv": 73.25, "fc": 73.62, "y": 66.96}
        (accuracies in percent), or None when the paper has no such row: another
        dataset, DIM(L) with another estimator, or alpha == beta == 0.
    """
    name = str(dataset).lower()
    if "cifar100" in name:
        data = "CIFAR-100"
    elif "cifar10" in name:
        data = "CIFAR-10"
    else:
        return None
    estimator = str(estimator).lower()
    if beta > 0:
        model = {"jsd": "DIM(L) JSD", "nce": "DIM(L) NCE", "infonce": "DIM(L) NCE"}.get(estimator)
    elif beta == 0 and alpha > 0:
        # The paper's Table 1 has a single DIM(G) row, whatever the estimator.
        model = "DIM(G)"
    else:
        model = None
    if model is None:
        return None
    conv, fc, y = _PAPER_TABLE_1[(data, model)]
    return {"setting": f"{model}, {data}", "conv": conv, "fc": fc, "y": y}


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
            "paper" (see `paper_reference`) and "timing_seconds". Not modified.
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
        scalars = _read_scalars(os.path.join(model_dir, "logs", "train"))
        figure = _loss_curves_figure(scalars)
        if figure is not None:
            _save_figure(figure, os.path.join(report_dir, LOSS_CURVES_PNG))
            relative["loss_curves"] = LOSS_CURVES_PNG

    if all(a is not None for a in (test_images, test_codes, train_images, train_codes)):
        figure = _nearest_neighbours_figure(test_images, test_labels, test_codes, train_images,
                                            train_codes, label_names, seed)
        _save_figure(figure, os.path.join(report_dir, NEAREST_NEIGHBOURS_PNG))
        relative["nearest_neighbours"] = NEAREST_NEIGHBOURS_PNG

    if test_codes is not None and len(test_codes):
        # The same subset feeds the t-SNE picture and the projector, so a point
        # seen in one can be found in the other.
        rng = np.random.default_rng(seed)
        count = min(embedding_points, len(test_codes))
        subset = np.sort(rng.choice(len(test_codes), size=count, replace=False))
        codes = test_codes[subset]
        labels = (np.full(count, UNLABELLED) if test_labels is None else test_labels[subset])
        figure = _tsne_figure(codes, labels, label_names, seed)
        if figure is not None:
            _save_figure(figure, os.path.join(report_dir, EMBEDDING_TSNE_PNG))
            relative["embedding_tsne"] = EMBEDDING_TSNE_PNG
        _write_projector(os.path.join(report_dir, PROJECTOR_DIR), codes,
                         [_label_name(int(label), label_names) for label in labels])
        relative["projector"] = PROJECTOR_DIR
        relative["projector_config"] = f"{PROJECTOR_DIR}/{PROJECTOR_CONFIG}"
        relative["projector_metadata"] = f"{PROJECTOR_DIR}/{PROJECTOR_METADATA}"

    relative["report_md"] = REPORT_MD
    relative["report_json"] = REPORT_JSON
    # Round-trip through JSON first so report.md is formatted from exactly the
    # values report.json stores (numpy scalars become plain numbers).
    stored = json.loads(json.dumps({**results, "artifacts": relative}, default=_json_default))
    _atomic_write_text(os.path.join(report_dir, REPORT_MD), _markdown(stored, relative))
    # Last, so a report.json on disk means every file it lists is complete.
    _atomic_write_text(os.path.join(report_dir, REPORT_JSON), json.dumps(stored, indent=2) + "\n")
    return {name: os.path.join(report_dir, path) for name, path in relative.items()}


# ---------------------------------------------------------------------------- input checks


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


def _label_name(label: int, label_names: Sequence[str]) -> str:
    if label < 0:
        return "unlabelled"
    return label_names[label] if label < len(label_names) else str(label)


# ---------------------------------------------------------------------------- files


def _temp_name(path: str) -> str:
    """A hidden name beside `path`: same directory, so os.replace is a rename."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.tmp-{os.getpid()}")


def _atomic_write_text(path: str, text: str) -> None:
    tmp = _temp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _save_figure(figure: Figure, path: str) -> None:
    tmp = _temp_name(path)
    FigureCanvasAgg(figure)  # attaches the Agg canvas; no pyplot, no global backend
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"results holds a {type(value).__name__}, which JSON cannot store: {value!r}")


# ---------------------------------------------------------------------------- loss curves


def _read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] sorted by step, from every event file in `log_dir`.

    A resumed run logs some steps twice (the steps after its last checkpoint);
    the value written last wins, as it belongs to the run that continued.
    A truncated last record (a killed run) ends that file's reading quietly.
    """
    if not os.path.isdir(log_dir):
        return {}
    latest: dict[str, dict[int, tuple[float, float]]] = {}  # tag -> step -> (wall_time, value)
    for file_name in sorted(os.listdir(log_dir)):
        if "tfevents" not in file_name:
            continue
        try:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, file_name)):
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        array = tf.make_ndarray(value.tensor)
                    elif value.HasField("simple_value"):
                        array = np.asarray(value.simple_value)
                    else:
                        continue
                    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
                        continue  # not a scalar (an image or histogram under the same tag)
                    series = latest.setdefault(value.tag, {})
                    previous = series.get(event.step)
                    if previous is None or event.wall_time >= previous[0]:
                        series[event.step] = (event.wall_time, float(array.reshape(())))
        except tf.errors.DataLossError:
            pass
    return {tag: sorted((step, v) for step, (_, v) in series.items())
            for tag, series in latest.items()}


def _loss_curves_figure(scalars: dict[str, list[tuple[int, float]]]) -> Figure | None:
    """One panel per tag group (loss/*, mi/*, prior/*), or None with nothing to plot.

    The per-step tags are plotted; a group falls back to its epoch_* tags only
    when it has no per-step ones (e.g. --log_every longer than an epoch), since
    plotting both would draw every curve twice.
    """
    panels = []
    for group in LOSS_GROUPS:
        series = {tag: values for tag, values in scalars.items() if tag.startswith(f"{group}/")}
        title = f"{group}/*"
        if not series:
            series = {tag: values for tag, values in scalars.items()
                      if tag.startswith(f"epoch_{group}/")}
            title = f"epoch_{group}/* (end of each epoch)"
        if series:
            panels.append((title, dict(sorted(series.items()))))
    if not panels:
        return None
    figure = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    for ax, (title, series) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for tag, values in series.items():
            steps, ys = zip(*values)
            ax.plot(steps, ys, marker="." if len(steps) < 50 else None, label=tag.split("/", 1)[1])
        ax.set_title(title)
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Training curves (TensorBoard scalars)")
    return figure


# ---------------------------------------------------------------------------- nearest neighbours


def _pick_queries(labels: np.ndarray | None, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random test indices, one per class first so the picture shows many classes."""
    order = rng.permutation(count if labels is None else len(labels))
    if labels is None:
        return order
    picked, seen = [], set()
    for index in order:
        if labels[index] not in seen:
            picked.append(index)
            seen.add(labels[index])
    first = set(picked)
    return np.asarray(picked + [index for index in order if index not in first])


def _unit_rows(codes: np.ndarray) -> np.ndarray:
    # The floor keeps an all-zero code from turning into NaNs (it matches nothing).
    return codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)


def _show_image(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _nearest_neighbours_figure(test_images, test_labels, test_codes, train_images, train_codes,
                               label_names, seed) -> Figure:
    if test_codes.shape[1] != train_codes.shape[1]:
        raise ValueError(f"test_codes and train_codes must have the same width; got "
                         f"{test_codes.shape[1]} and {train_codes.shape[1]}.")
    rng = np.random.default_rng(seed)
    queries = _pick_queries(test_labels, len(test_codes), rng)[:QUERIES]
    neighbours = min(NEIGHBOURS, len(train_codes))
    similarity = _unit_rows(test_codes[queries]) @ _unit_rows(train_codes).T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours]

    height = 1.6 * len(queries) + 0.8
    figure = Figure(figsize=(1.5 * (neighbours + 1), height))
    # Fixed margins: constrained layout takes seconds on a grid of ~50 image axes.
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - 0.75 / height,
                           wspace=0.08, hspace=0.3)
    axes = figure.subplots(len(queries), neighbours + 1, squeeze=False)
    for row, query in enumerate(queries):
        ax = axes[row, 0]
        _show_image(ax, test_images[query])
        label = UNLABELLED if test_labels is None else int(test_labels[query])
        ax.set_title("query" if label < 0 else f"query: {_label_name(label, label_names)}",
                     fontsize=8, fontweight="bold")
        for spine in ax.spines.values():  # frames the query so rows read left to right
            spine.set_edgecolor("tab:red")
            spine.set_linewidth(2)
        for col, train_index in enumerate(nearest[row], start=1):
            _show_image(axes[row, col], train_images[train_index])
            axes[row, col].set_title(f"#{col}  cos {similarity[row, train_index]:.2f}", fontsize=7)
    figure.suptitle("Test queries (red frame) and their nearest training images\n"
                    "by cosine similarity of the global code y", fontsize=10)
    return figure


# ---------------------------------------------------------------------------- t-SNE


def _tsne_figure(codes: np.ndarray, labels: np.ndarray, label_names, seed) -> Figure | None:
    """Scatter of a 2-D t-SNE of `codes`; None when there are too few points or dimensions."""
    from sklearn.manifold import TSNE  # slow import, needed only here

    count = len(codes)
    if count < 3 or codes.shape[1] < 2:
        return None  # PCA initialisation needs >= 2 dimensions; 2 points show nothing
    # sklearn requires perplexity < n_samples; ~n/3 keeps small sets meaningful.
    perplexity = float(min(30.0, max(1.0, (count - 1) / 3)))
    # Exact gradients are faster than Barnes-Hut below a few hundred points (Barnes-Hut's
    # threads cost more than they save there) and O(n^2) above.
    method = "exact" if count <= 200 else "barnes_hut"
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  method=method, random_state=seed).fit_transform(codes.astype(np.float64))

    figure = Figure(figsize=(8.5, 6.5), layout="constrained")
    ax = figure.subplots()
    classes = sorted(int(c) for c in np.unique(labels) if c >= 0)
    unlabelled = labels < 0
    size = 12 if count > 300 else 24
    if unlabelled.any():
        ax.scatter(points[unlabelled, 0], points[unlabelled, 1], s=size, c="tab:blue" if not classes
                   else "lightgrey", label="unlabelled" if classes else None, alpha=0.8)
    if 0 < len(classes) <= 20:
        cmap = _colormap("tab10" if len(classes) <= 10 else "tab20")
        for i, cls in enumerate(classes):
            mask = labels == cls
            ax.scatter(points[mask, 0], points[mask, 1], s=size, color=cmap(i), alpha=0.8,
                       label=_label_name(cls, label_names))
        ax.legend(title="label", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                  markerscale=1.5, frameon=False)
    elif classes:
        # Too many classes (e.g. CIFAR-100) for a legend anyone could read: a colour bar instead.
        mask = ~unlabelled
        scatter = ax.scatter(points[mask, 0], points[mask, 1], s=size, c=labels[mask],
                             cmap="turbo", alpha=0.8)
        figure.colorbar(scatter, ax=ax, label="label index")
    labelled_note = "" if classes else ", unlabelled"
    ax.set_title(f"t-SNE of the global code y: {count} test images{labelled_note} "
                 f"(perplexity {perplexity:.0f})")
    ax.set_xticks([])
    ax.set_yticks([])
    return figure


def _colormap(name: str):
    from matplotlib import colormaps  # the registry, read-only here

    return colormaps[name]


# ---------------------------------------------------------------------------- projector


def _write_projector(projector_dir: str, codes: np.ndarray, names: list[str]) -> None:
    """TensorBoard projector files: the codes as a checkpointed variable, labels, config.

    Built in a hidden directory beside `projector_dir` and renamed into place,
    since a checkpoint is several files. View with `tensorboard --logdir projector_dir`.
    """
    from tensorboard.plugins import projector  # only this function needs TensorBoard's protos

    parent = os.path.dirname(os.path.abspath(projector_dir))
    tmp = _temp_name(os.path.join(parent, os.path.basename(projector_dir)))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(codes, dtype=tf.float32))
    # save() also writes the `checkpoint` state file (relative paths) by which
    # the projector finds the newest checkpoint in its log directory.
    prefix = checkpoint.save(os.path.join(tmp, "embedding.ckpt"))
    keys = [name for name, _ in tf.train.list_variables(prefix) if name.startswith("embedding/")]
    if len(keys) != 1:
        raise RuntimeError(f"Expected one embedding variable in {prefix}; found {keys}.")

    # One column: TensorBoard reads a header row only when there are several columns.
    # Tabs and newlines inside a name would break the TSV rows.
    rows = [" ".join(name.split()) or "?" for name in names]
    with open(os.path.join(tmp, PROJECTOR_METADATA), "w", encoding="utf-8") as f:
        f.write("".join(f"{row}\n" for row in rows))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = keys[0]
    embedding.metadata_path = PROJECTOR_METADATA  # relative to the config file's directory
    projector.visualize_embeddings(tmp, config)

    old = None
    if os.path.exists(projector_dir):
        old = f"{tmp}-old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(projector_dir, old)
    os.replace(tmp, projector_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- Markdown


def _cell(value) -> str:
    """Text safe inside a Markdown table cell."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = json.dumps(value)
    return " ".join(text.split()).replace("|", "\\|")


def _number(value, digits: int) -> str:
    """`value` with `digits` decimals; — for None; anything else as text."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return _cell(value)


def _percent(value) -> str:
    return _number(value, 2)


def _accuracy(entry) -> str:
    if not isinstance(entry, dict) or entry.get("top1") is None:
        return "—"
    text = _percent(entry["top1"])
    if entry.get("top5") is not None:
        text += f" ({_percent(entry['top5'])})"
    return text


def _ordered(keys, preferred: Sequence[str]) -> list[str]:
    keys = list(keys)
    return [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _accuracy_section(probes, paper) -> list[str]:
    lines = ["## Classification accuracy (%)", ""]
    if not probes:
        return lines + ["> **No probe results**: the evaluation ran no probes.", ""]
    if "skipped" in probes:
        lines += [f"> **Probes skipped**: {_cell(probes['skipped'])}", ""]
        if paper:
            lines += [f"For reference, the paper reports {_paper_sentence(paper)}.", ""]
        return lines
    kinds = _ordered(probes, PROBE_ORDER)
    layers = _ordered({layer for kind in kinds for layer in (probes[kind] or {})}, LAYERS)
    rows = [[kind] + [_accuracy((probes[kind] or {}).get(layer)) for layer in layers]
            for kind in kinds]
    if paper:
        rows.append([PAPER_ROW] + [_percent(paper.get(layer)) for layer in layers])
    lines += ["Top-1 accuracy on the test split of probes trained on frozen features; top-5 in "
              "parentheses where measured; — = not measured.", ""]
    lines += _table(["probe"] + layers, rows) + [""]
    if paper:
        lines += [f"Paper row: {_cell(paper.get('setting', 'setting not given'))}, Table 1 of "
                  "Hjelm et al. 2019 (mean over the last 100 probe epochs); compare it "
                  "with the `classifier` row.", ""]
    lines += [f"- `{kind}`: {_PROBE_NOTES[kind]}" for kind in kinds if kind in _PROBE_NOTES]
    return lines + [""]


def _paper_sentence(paper: dict) -> str:
    numbers = " / ".join(_percent(paper.get(layer)) for layer in LAYERS)
    return f"{numbers} % (conv / fc / y) for {_cell(paper.get('setting', 'this setting'))}"


def _markdown(stored: dict, relative: dict[str, str]) -> str:
    lines = ["# Deep InfoMax evaluation report", ""]
    settings = stored.get("settings") or {}
    lines += ["## Settings", ""]
    lines += _table(["setting", "value"], [[_cell(k), _cell(v)] for k, v in settings.items()]) \
        if settings else ["(none recorded)"]
    lines += [""]
    lines += _accuracy_section(stored.get("probes"), stored.get("paper"))

    diagnostics = stored.get("diagnostics") or {}
    lines += ["## Diagnostics", ""]
    if diagnostics:
        lines += _table(["measure", "value", "meaning"], [
            [_cell(name), _number(value, 4), _DIAGNOSTIC_NOTES.get(name, "")]
            for name, value in diagnostics.items()])
    else:
        lines += ["(none measured)"]
    lines += [""]

    timing = stored.get("timing_seconds") or {}
    lines += ["## Timing", ""]
    lines += _table(["stage", "seconds"], [
        [_cell(stage), _number(seconds, 1)]
        for stage, seconds in timing.items()]) if timing else ["(not recorded)"]
    lines += [""]

    figures = [
        ("loss_curves", "Training curves",
         "TensorBoard scalars of the training run, by tag group."),
        ("nearest_neighbours", "Nearest neighbours",
         "Each row: a test image, then the training images whose global codes are closest "
         "by cosine similarity."),
        ("embedding_tsne", "t-SNE of the test codes",
         "A 2-D t-SNE map of the global codes; classes that form separate clusters are "
         "easy for a probe to tell apart."),
    ]
    shown = [(key, title, text) for key, title, text in figures if key in relative]
    if shown or "projector" in relative:
        lines += ["## Figures", ""]
    for key, title, text in shown:
        lines += [f"### {title}", "", text, "", f"![{title}]({relative[key]})", ""]
    if "projector" in relative:
        lines += ["### Embedding projector", "",
                  f"`tensorboard --logdir {relative['projector']}` (run in this directory), "
                  "then open the Projector tab: the same test codes as the t-SNE map, labelled "
                  f"by `{relative['projector_metadata']}`.", ""]
    return "\n".join(lines)
