"""The published numbers a report puts next to the measured ones.

Hjelm et al. 2019 (OpenReview revision), Table 1: accuracy (%) of the
frozen-feature MLP classifier on the conv / fc / y layers.
"""

from __future__ import annotations

from dim_tf.config import DatasetSpec, canonical_estimator

# The paper's names of the datasets its Table 1 covers, by catalogue name.
_PAPER_DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
# (dataset, model) -> (conv, fc, y) accuracy in percent.
_PAPER_TABLE_1 = {
    ("CIFAR-10", "DIM(G)"): (52.2, 52.84, 43.17),
    ("CIFAR-10", "DIM(L) JSD"): (73.25, 73.62, 66.96),
    ("CIFAR-10", "DIM(L) NCE"): (75.21, 75.57, 69.13),
    ("CIFAR-100", "DIM(G)"): (27.68, 24.35, 19.98),
    ("CIFAR-100", "DIM(L) JSD"): (48.13, 45.92, 39.60),
    ("CIFAR-100", "DIM(L) NCE"): (49.74, 47.72, 41.61),
}
# The estimators of the paper's DIM(L) rows, by canonical estimator name.
_LOCAL_MODELS = {"jsd": "DIM(L) JSD", "nce": "DIM(L) NCE"}


def paper_reference(dataset: str, estimator: str, alpha: float, beta: float) -> dict | None:
    """The paper's Table 1 accuracies for a training setting, if the paper reports it.

    Lets a report put the published numbers next to the measured ones without
    the caller knowing the table. Only CIFAR-10 and CIFAR-100 are covered; the
    paper's other datasets use different encoders and protocols.

    Args:
        dataset: the training `--dataset` value; the table is chosen by the
            catalogue dataset it is a copy of (`DatasetSpec.copy_of`: "cifar10",
            "sample:cifar10" and "folder:/data/cifar10_jpeg" are CIFAR-10).
        estimator: the MI estimator, any name `canonical_estimator` accepts
            ("jsd", "nce", "infonce", ...).
        alpha: weight of the global MI term.
        beta: weight of the local MI term.

    Returns:
        {"setting": "DIM(L) JSD, CIFAR-10", "conv": 73.25, "fc": 73.62, "y": 66.96}
        (accuracies in percent), or None when the paper has no such row: another
        dataset, DIM(L) with another estimator, or alpha == beta == 0.

    Raises:
        ConfigError: `dataset` or `estimator` is not a valid setting.
    """
    data = _PAPER_DATASETS.get(DatasetSpec.parse(dataset).copy_of)
    estimator = canonical_estimator(estimator)
    if data is None:
        return None
    if beta > 0:
        model = _LOCAL_MODELS.get(estimator)
    elif beta == 0 and alpha > 0:
        # The paper's Table 1 has a single DIM(G) row, whatever the estimator.
        model = "DIM(G)"
    else:
        model = None
    if model is None:
        return None
    conv, fc, y = _PAPER_TABLE_1[(data, model)]
    return {"setting": f"{model}, {data}", "conv": conv, "fc": fc, "y": y}
