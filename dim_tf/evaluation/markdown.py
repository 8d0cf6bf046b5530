"""report.md: the evaluation results as Markdown a person can read.

Formatted from the dict that report.json stores, so the two cannot disagree:
settings, the accuracy table (next to the paper's Table 1 where it has a row),
diagnostics, timing and the pictures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dim_tf.config import FEATURE_LAYERS, PROBES

PAPER_ROW = "paper (Hjelm et al. 2019), frozen MLP"

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
    kinds = _ordered(probes, PROBES)
    layers = _ordered({layer for kind in kinds for layer in (probes[kind] or {})}, FEATURE_LAYERS)
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
    numbers = " / ".join(_percent(paper.get(layer)) for layer in FEATURE_LAYERS)
    return f"{numbers} % (conv / fc / y) for {_cell(paper.get('setting', 'this setting'))}"


def render_markdown(stored: dict, relative: dict[str, str]) -> str:
    """report.md for the results `stored` (as report.json holds them) and the artifacts
    `relative` (name -> path relative to the report directory)."""
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
