"""dim_tf.cli and dim_tf.errors: flags from the configs, shipped flagfiles, one exit mapping."""

import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags

from dim_tf import cli, config, errors


def test_every_error_has_one_root_and_a_documented_exit_status():
    def subclasses(cls):
        return [cls] + [s for c in cls.__subclasses__() for s in subclasses(c)]

    kinds = subclasses(errors.DimError)
    assert len(kinds) > 10
    assert {k.exit_status for k in kinds} == {1, 2, 143}
    assert errors.ConfigError.exit_status == errors.DataError.exit_status == 2
    assert errors.NonFiniteError.exit_status == errors.CheckpointError.exit_status == 1
    assert errors.Preempted.exit_status == 143
    assert config.ConfigError is errors.ConfigError


def test_config_flags_carry_defaults_types_help_and_choices():
    values = flags.FlagValues()
    cli.define_config_flags(config.TrainConfig, flag_values=values)
    assert {f.name for f in dataclasses.fields(config.TrainConfig)} <= set(values)
    assert values["mi_units"].default == config.DEFAULT_MI_UNITS
    assert "basic32x32" in values["encoder"].help and "Encoder" in values["encoder"].help
    values(["prog", "--model_dir=runs/x", "--batch_size=8", "--estimator=InfoNCE", "--norandom_flip"])
    built = config.TrainConfig(**cli.config_values(config.TrainConfig, flag_values=values))
    assert (built.batch_size, built.estimator, built.random_flip) == (8, "nce", False)

    evaluation = flags.FlagValues()
    cli.define_config_flags(config.EvalConfig, prefix="eval_", exclude=("model_dir",),
                            flag_values=evaluation)
    evaluation(["prog", "--eval_layers=conv,y"])
    assert cli.config_values(config.EvalConfig, prefix="eval_", exclude=("model_dir",),
                             flag_values=evaluation)["layers"] == ("conv", "y")


def test_config_flags_read_back_as_the_same_config(tmp_path):
    """What a cluster's workers are told to run (pipelines/tfjob.py) is the config itself:
    every field away from its default, booleans both ways, lists, floats, None left out."""
    original = config.TrainConfig(
        model_dir="/pipeline/run", dataset="tfrecord:/pipeline/examples", epochs=7,
        learning_rate=3e-4, random_flip=False, random_crop=True, mixed_precision=True,
        views=2, score_clip=20.0, estimator="nce", time_budget_minutes=None)
    values = flags.FlagValues()
    cli.define_config_flags(config.TrainConfig, flag_values=values)
    arguments = cli.config_flags(original)
    assert "--norandom_flip" in arguments and "--random_crop" in arguments
    assert not any(a.startswith("--time_budget_minutes") for a in arguments)
    values(["prog", *arguments])
    assert config.TrainConfig(**cli.config_values(config.TrainConfig, flag_values=values)) == original

    (tmp_path / config.RUN_CONFIG_FILE).write_text("{}")
    evaluation = config.EvalConfig(model_dir=str(tmp_path), layers=("conv", "y"), probes=("knn",),
                                   max_test_examples=100, diagnostics=False)
    values = flags.FlagValues()
    cli.define_config_flags(config.EvalConfig, prefix="eval_", flag_values=values)
    values(["prog", *cli.config_flags(evaluation, prefix="eval_")])
    assert config.EvalConfig(**cli.config_values(config.EvalConfig, prefix="eval_",
                                                 flag_values=values)) == evaluation


@pytest.mark.parametrize("given", ["local_nce", "local_nce.flags", "configs/local_nce.flags"])
def test_a_shipped_flagfile_is_found_by_name_from_any_directory(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    expanded = cli.expand_shipped_flagfiles(["prog", f"--flagfile={given}", "--seed=3"])
    # local_nce.flags nests local_jsd.flags: both are read, in order, the later flag winning.
    assert expanded[0] == "prog" and expanded[-1] == "--seed=3"
    assert "--estimator=jsd" in expanded and "--estimator=nce" in expanded
    assert expanded.index("--estimator=jsd") < expanded.index("--estimator=nce")
    assert not any(a.startswith("--flagfile") for a in expanded)


def test_existing_and_unknown_flagfiles_are_left_to_absl(tmp_path, monkeypatch):
    own = tmp_path / "mine.flags"
    own.write_text("--seed=5\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli.expand_shipped_flagfiles(["p", "--flagfile=mine.flags", "--flagfile", "nope"]) == [
        "p", "--flagfile=mine.flags", "--flagfile=nope"]


def test_every_shipped_flagfile_makes_a_valid_config():
    names = sorted(n for n in os.listdir(config.SHIPPED_CONFIGS_DIR) if n.endswith(".flags"))
    assert {"local_jsd.flags", "quick.flags", "pipeline_cifar10.flags"} <= set(names)
    for name in names:
        if name.startswith("pipeline"):
            continue  # the pipeline's flags: tests/pipelines
        values = flags.FlagValues()
        cli.define_config_flags(config.TrainConfig, flag_values=values)
        values(cli.expand_shipped_flagfiles(["prog", f"--flagfile={name}", "--model_dir=x"]))
        built = config.TrainConfig(**cli.config_values(config.TrainConfig, flag_values=values))
        assert built.dataset, name


def _run(tmp_path, body: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "command.py"
    script.write_text(
        "from absl import flags\nfrom dim_tf import cli, config, errors\n"
        "flags.DEFINE_string('what', 'ok', 'What main does.')\n"
        "def main():\n" + "".join(f"    {line}\n" for line in body.splitlines()) +
        "cli.run(main, 'demo')\n", encoding="utf-8")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.e2e
def test_run_maps_dim_errors_to_their_status_and_bad_flags_to_2(tmp_path):
    ok = _run(tmp_path, "print('done')")
    assert (ok.returncode, ok.stdout.strip()) == (0, "done")
    bad_setting = _run(tmp_path, "raise errors.ConfigError('--what is wrong')")
    assert bad_setting.returncode == 2 and "demo: error: --what is wrong" in bad_setting.stderr
    stopped = _run(tmp_path, "raise errors.CheckpointError('disk full')")
    assert stopped.returncode == 1 and "demo: error: disk full" in stopped.stderr
    assert _run(tmp_path, "raise errors.Preempted('SIGTERM')").returncode == 143
    misspelled = _run(tmp_path, "pass", "--waht=1")
    assert misspelled.returncode == 2 and "waht" in misspelled.stderr
    stray = _run(tmp_path, "pass", "extra")
    assert stray.returncode == 2 and "unexpected arguments ['extra']" in stray.stderr
    bug = _run(tmp_path, "raise KeyError('a bug')")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError" in bug.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("help_flag", ["--help", "-?", "--helpshort", "--helpfull"])
def test_asking_for_help_prints_the_flags_and_exits_0(tmp_path, help_flag):
    shown = _run(tmp_path, "print('main ran')", help_flag)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "--what" in shown.stdout and "main ran" not in shown.stdout


@pytest.mark.parametrize("module, flag", [("dim_tf.train", "--mi_units"),
                                          ("dim_tf.evaluate", "--probe_epochs"),
                                          ("dim_tf.export", "--export_dir")])
def test_help_lists_the_flags_made_from_the_config(module, flag):
    """Flags made by define_config_flags belong to the entry point, so its --help
    (absl's key flags of the main module) shows them."""
    shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                           text=True, timeout=120)
    assert flag in shown.stdout, shown.stdout[-2000:]
    assert shown.returncode == 0, shown.stderr[-2000:]  # asked for help: not a failure
