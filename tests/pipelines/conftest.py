"""A tiny labelled image tree and the flags of a pipeline run that takes seconds."""

import os
import subprocess
import sys

import pytest

from tests.training.synthetic import write_image_folder

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Seconds per stage on a 2-core CPU: a few training steps, one probe epoch.
TINY_FLAGS = (
    "--encoder=basic32x32", "--mi_units=16", "--y_units=8", "--batch_size=8", "--epochs=1",
    "--steps_per_epoch=3", "--checkpoint_every=2", "--monitor=false", "--verbose=0",
    "--eval_probes=linear", "--eval_layers=conv,y", "--eval_probe_epochs=1",
    "--eval_diagnostics=false", "--eval_batch_size=16",
)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_image_folder(str(root), {"train": 24, "test": 12})
    return str(root)


def pipeline_flags(image_tree: str, root, *extra: str) -> list[str]:
    return [f"--dataset=folder:{image_tree}", f"--pipeline_root={root}",
            f"--push_destination={os.path.join(root, 'saved_models', 'tiny')}", *TINY_FLAGS, *extra]


def parameters(image_tree: str, root, *extra: str) -> dict:
    """{stage: parameters} as the pipeline's command line would give them."""
    from pipelines.flags import FLAGS, stage_parameters

    FLAGS.unparse_flags()
    FLAGS(["pipeline", *pipeline_flags(image_tree, root, *extra)])
    return stage_parameters(FLAGS)


def versions(export_dir) -> list[str]:
    """The numeric version directories of a model base path (what TF Serving loads)."""
    return sorted((d for d in os.listdir(export_dir) if d.isdigit()), key=int)


def run_cli(module: str, *args: str, env: dict | None = None, check: bool = True):
    """Runs `python -m module args` from the repository root; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{module} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result
