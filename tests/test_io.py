"""dim_tf.io: a replaced file is the old content or the new one, never a part."""

import json
import os

import numpy as np
import pytest

from dim_tf import io


def test_atomic_write_replaces_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("old", encoding="utf-8")
    io.atomic_write_json(str(path), {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2], "b": 1}
    assert path.read_text(encoding="utf-8").endswith("\n")
    assert os.listdir(tmp_path) == ["settings.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with io.atomic_path(str(path)) as temporary:
            with open(temporary, "w", encoding="utf-8") as f:
                f.write("half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["report.md"]


def test_temporary_names_are_unique_marked_and_keep_a_suffix(tmp_path):
    path = str(tmp_path / "features.npz")
    names = {io.temporary_path(path) for _ in range(100)}
    assert len(names) == 100 and all(io.is_temporary(os.path.basename(n)) for n in names)
    assert not io.is_temporary("features.npz")
    with io.atomic_path(path, suffix=".npz") as temporary:
        assert temporary.endswith(".npz")
        np.savez(temporary, x=np.arange(3))  # np.savez would append .npz to another name
    with np.load(path) as data:
        assert data["x"].tolist() == [0, 1, 2]
