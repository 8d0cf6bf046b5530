"""The class list stored with a run: written once, a changed list refuses to resume."""

import os

import pytest

from dim_tf.data import labels
from dim_tf.errors import DataError


def _write(directory, names):
    with open(os.path.join(directory, labels.LABELS_FILE), "w", encoding="utf-8") as f:
        f.write(labels.labels_json(names))


def test_class_list_round_trips_and_a_run_without_one_accepts_any(tmp_path):
    assert labels.read_labels(str(tmp_path)) is None
    labels.check_labels(str(tmp_path), ("a", "b"), "folder:x")  # nothing stored yet
    _write(str(tmp_path), ("café au lait", "Ωmega 2"))
    assert "café au lait" in (tmp_path / labels.LABELS_FILE).read_text(encoding="utf-8")
    assert labels.read_labels(str(tmp_path)) == ("café au lait", "Ωmega 2")
    labels.check_labels(str(tmp_path), ("café au lait", "Ωmega 2"), "folder:x")


@pytest.mark.parametrize("now, change", [
    (("cats", "dogs", "owls"), r"added \['owls'\]"),
    (("cats",), r"removed \['dogs'\]"),
    (("dogs", "cats"), "same classes in another order"),
    (("cats", "wolves"), r"added \['wolves'\]; removed \['dogs'\]"),
])
def test_changed_class_list_is_refused_naming_the_change(tmp_path, now, change):
    _write(str(tmp_path), ("cats", "dogs"))
    with pytest.raises(DataError, match=change + r"\)\. Label indices would change meaning"):
        labels.check_labels(str(tmp_path), now, "folder:x")
