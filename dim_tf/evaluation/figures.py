"""The report's pictures: training curves, nearest neighbours, a t-SNE map.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly,
not through pyplot, so no global backend or figure registry is touched; each
function returns the figure (or None when there is nothing to draw) and
`save_figure` writes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dim_tf.evaluation.scalars import Scalars
from dim_tf.io import atomic_path

LOSS_GROUPS = ("loss", "mi", "prior")
UNLABELLED = -1
QUERIES = 8
NEIGHBOURS = 5


def save_figure(figure: Figure, path: str) -> None:
    """Writes `figure` as a PNG to `path`, atomically."""
    FigureCanvasAgg(figure)  # attaches the Agg canvas; no pyplot, no global backend
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def label_name(label: int, label_names: Sequence[str]) -> str:
    """The class name of `label`: "unlabelled" for -1, its index beyond `label_names`."""
    if label < 0:
        return "unlabelled"
    return label_names[label] if label < len(label_names) else str(label)


# ---------------------------------------------------------------------------- loss curves


def loss_curves_figure(scalars: Scalars) -> Figure | None:
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


def nearest_neighbours_figure(test_images: np.ndarray, test_labels: np.ndarray | None,
                              test_codes: np.ndarray, train_images: np.ndarray,
                              train_codes: np.ndarray, label_names: Sequence[str],
                              seed: int) -> Figure:
    """A grid: per row a test image (QUERIES of them, one per class first) and its
    NEIGHBOURS nearest training images by cosine similarity of the codes.

    Raises:
        ValueError: the test and train codes differ in width.
    """
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
        ax.set_title("query" if label < 0 else f"query: {label_name(label, label_names)}",
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


def tsne_figure(codes: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
                seed: int) -> Figure | None:
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
                       label=label_name(cls, label_names))
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
