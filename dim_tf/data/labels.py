"""The class list of a run: label index -> class name, fixed when training starts.

An image folder's classes are its sorted label folders, so adding, removing or
renaming one silently shifts the meaning of label indices. Training writes the
list to MODEL_DIR/labels.json (the export copies it) and refuses to resume a run
whose data now has another list: the online monitor's classifier and everything
reading the exported labels depend on the indices.
"""

from __future__ import annotations

import json
import os

from dim_tf.errors import DataError

LABELS_FILE = "labels.json"


def read_labels(directory: str) -> tuple[str, ...] | None:
    """The class list stored in `directory`, or None if it has none."""
    path = os.path.join(directory, LABELS_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return tuple(json.load(f))


def check_labels(model_dir: str, label_names: tuple[str, ...], dataset: str) -> None:
    """Raises DataError if the run in `model_dir` was started with another class list."""
    saved = read_labels(model_dir)
    if saved is None or saved == tuple(label_names):
        return
    added = [n for n in label_names if n not in saved]
    removed = [n for n in saved if n not in label_names]
    change = "; ".join(part for part in (
        f"added {added}" if added else "", f"removed {removed}" if removed else "",
        "same classes in another order" if not (added or removed) else "") if part)
    raise DataError(
        f"--model_dir={model_dir} was trained with {len(saved)} classes ({LABELS_FILE}: "
        f"{list(saved)}); --dataset={dataset} now has {len(label_names)} ({change}). Label "
        "indices would change meaning. Restore the class folders, or train in a new --model_dir."
    )


def labels_json(label_names: tuple[str, ...]) -> str:
    """The text of LABELS_FILE for `label_names` (UTF-8, names as written)."""
    return json.dumps(list(label_names), ensure_ascii=False, indent=1) + "\n"
