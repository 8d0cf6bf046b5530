"""The run directory: one owner at a time, writability probes, starting over."""

import json
import os

import pytest

from dim_tf.errors import ConfigError, ModelDirBusy
from dim_tf.training import model_dir as model_dir_lib


def test_second_lock_is_refused_naming_the_holder_then_released(tmp_path):
    first = model_dir_lib.ModelDirLock(str(tmp_path))
    first.acquire()
    holder = json.loads((tmp_path / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == os.uname().nodename
    with pytest.raises(ModelDirBusy, match=f"is in use by another training run: pid {os.getpid()} "
                                           f"on host {holder['host']}, started 20.*command: "):
        model_dir_lib.ModelDirLock(str(tmp_path)).acquire()
    first.release()
    with model_dir_lib.ModelDirLock(str(tmp_path)):
        pass


def test_start_over_moves_the_run_aside_and_keeps_the_lock(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-2.index").write_text("x")
    (run / "config.json").write_text("{}")
    with model_dir_lib.ModelDirLock(str(run)):
        moved = model_dir_lib.start_over(str(run))
        assert os.path.dirname(moved) == str(tmp_path) and moved.startswith(f"{run}.old-")
        assert sorted(os.listdir(moved)) == ["checkpoints", "config.json"]
        assert os.listdir(run) == [".lock"]
        assert model_dir_lib.start_over(str(run)) is None


def test_unwritable_model_dir_is_named_with_its_cause(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"--model_dir={blocker}/run cannot be written: "
                                          "Not a directory"):
        model_dir_lib.check_writable(str(blocker / "run"))
    model_dir_lib.check_writable(str(tmp_path / "new" / "run"))
    assert os.listdir(tmp_path / "new" / "run") == []  # the probe is gone


def test_too_little_space_for_one_checkpoint_is_refused(tmp_path):
    model_dir_lib.check_free_space(str(tmp_path), 1)
    with pytest.raises(ConfigError, match="MiB free, but one checkpoint of this model needs"):
        model_dir_lib.check_free_space(str(tmp_path), 2**62)


def test_leftover_temporary_files_are_removed(tmp_path):
    (tmp_path / "config.json.tmp-123-0123abcd").write_text("partial")  # dim_tf.io's temporary name
    (tmp_path / "config.json").write_text("{}")
    assert model_dir_lib.remove_leftovers(str(tmp_path)) == [
        str(tmp_path / "config.json.tmp-123-0123abcd")]
    assert os.listdir(tmp_path) == ["config.json"]
