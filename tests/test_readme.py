"""The README stays true: a short guide whose set-up commands are CI's, whose commands
name real modules, flags and files, and whose train -> evaluate -> export -> embed
sequence runs, verbatim plus toy-size overrides, from a directory without the
repository's configs/ (the shipped flagfiles are found by name)."""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from dim_tf import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_LINES = 200


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _commands() -> list[list[str]]:
    """Every `python -m MODULE ...` line of the README's bash blocks, as argv, without
    its trailing comment."""
    commands = []
    for block in _bash_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python -m ") and "pytest" not in line:
                commands.append(shlex.split(line))
    return commands


def _flag_names(argv: list[str]) -> list[str]:
    names = []
    for argument in argv[3:]:
        name = argument.lstrip("-").split("=")[0]
        names.append(name)
    return names


@functools.lru_cache(maxsize=None)
def _defined_flags(module: str) -> frozenset[str]:
    """The flags `python -m module` defines, from its --helpfull."""
    shown = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert "--helpfull" in shown.stdout, shown.stderr[-2000:]  # absl's help exits 1
    return frozenset(re.findall(r"^\s+--(?:\[no\])?([a-z_0-9]+)", shown.stdout, flags=re.M))


def test_readme_is_a_short_guide_starting_with_ci_s_commands():
    lines = README.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; docs/ holds the rest"
    first = _bash_blocks()[0].strip().splitlines()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert first[0] == 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert first[1] == "python -m pytest -n 2 tests" and ci.strip().endswith(first[1])
    assert 'pip install -e ".[dev]"' in ci
    assert "../" not in README, "the README points outside the repository"
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), f"README links to missing {link}"


def test_readme_commands_name_real_modules_flags_and_flagfiles():
    commands = _commands()
    modules = {argv[2] for argv in commands}
    assert {"dim_tf.train", "dim_tf.evaluate", "dim_tf.export", "pipelines.run"} <= modules
    for argv in commands:
        defined = _defined_flags(argv[2])
        for argument, name in zip(argv[3:], _flag_names(argv)):
            if name == "flagfile":
                path = argument.split("=", 1)[1]
                assert (ROOT / path).exists() and cli.shipped_flagfile(path), argument
            else:
                assert name in defined or name.removeprefix("no") in defined, (
                    f"README: `{shlex.join(argv)}` uses --{name}, which {argv[2]} does not define")


# Appended to the README's commands: the same code paths at toy size.
_TOY = {
    "dim_tf.train": ["--epochs=1", "--steps_per_epoch=2", "--batch_size=8", "--mi_units=16",
                     "--verbose=0"],
    "dim_tf.evaluate": ["--max_train_examples=64", "--max_test_examples=32", "--probe_epochs=1",
                        "--probes=linear,knn", "--diagnostic_steps=4", "--batch_size=32"],
    "dim_tf.export": [],
}


def _run(argv: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, *argv[1:], *_TOY.get(argv[2], [])], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.e2e
def test_readme_quick_run_trains_evaluates_exports_and_embeds_at_toy_size(tmp_path):
    commands = {(argv[2], tuple(argv[3:])): argv for argv in _commands()}
    quick = commands[("dim_tf.train", ("--flagfile=configs/quick.flags",))]
    evaluate = commands[("dim_tf.evaluate", ("--model_dir=runs/quick",))]
    export = next(argv for (module, _), argv in commands.items() if module == "dim_tf.export")

    trained = _run(quick, tmp_path)  # tmp_path has no configs/: the shipped flagfile is used
    assert "runs/quick: step 2/2" in trained.stdout
    _run(evaluate, tmp_path)
    assert (tmp_path / "runs" / "quick" / "evaluation" / "report.md").exists()
    exported = _run(export, tmp_path)
    version = tmp_path / "saved_models" / "quick" / "1"
    assert (version / "saved_model.pb").exists() and str(version.name) in exported.stdout

    images = tmp_path / "photos"
    images.mkdir()
    sample = ROOT / "dim_tf" / "data" / "samples" / "cifar10" / "test"
    for path in sorted(sample.rglob("*.jpg"))[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    _run([sys.executable, "-m", "dim_tf.embed", "--images=photos", "--output=photos_y.npy",
          f"--saved_model={version}"], tmp_path)
    import numpy as np

    assert np.load(tmp_path / "photos_y.npy").shape == (3, 64)

    # The fine-tuning snippet, verbatim, on the sample images.
    snippet, = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    setup = (f"import numpy as np, tensorflow as tf\n"
             f"files = sorted(__import__('pathlib').Path({str(sample)!r}).rglob('*.jpg'))[:16]\n"
             "images = np.stack([tf.io.decode_jpeg(f.read_bytes()).numpy() for f in files])"
             ".astype('float32')\n"
             "labels = np.arange(16) % 10\n")
    _run([sys.executable, "-c", setup + snippet + "\nprint('fine-tuned', classifier.count_params())"],
         tmp_path)
