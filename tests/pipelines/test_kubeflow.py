"""The pipeline compiled for Kubeflow Pipelines (pipelines/kubeflow.py), checked offline.

The compiled YAML is read back with kfp's own loader. `launch_step` renders a
compiled step the way Kubeflow's launcher does (each `{{$.inputs.parameters[...]}}`
formatted as the launcher's PbValueToText formats it, IfPresent for optional
parameters, `{{$}}` the executor input JSON), so the end-to-end test runs the
five steps exactly as their pods would, against a directory standing in for
the volume.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dim_tf import ConfigError
from pipelines.volume import place_on_volume
from tests.pipelines.conftest import REPO_ROOT, TINY_FLAGS, versions
from tests.training.synthetic import write_image_folder

IMAGE = "example.com/dim-tf:2.21"
KUBEFLOW_FLAGFILE = os.path.join(REPO_ROOT, "configs", "pipeline_cifar10_kubeflow.flags")
STAGES = ("ingest", "train", "evaluate", "push", "embed")


def _parse(*argv: str):
    from pipelines.flags import FLAGS

    FLAGS.unparse_flags()
    FLAGS(["pipelines.kubeflow", *argv])
    return FLAGS


def _compile(tmp_path, *argv: str, **settings) -> tuple[str, dict, dict]:
    from pipelines.kubeflow import compile_pipeline

    old_cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # nested flagfiles are relative to the working directory
    try:
        values = _parse(*argv)
    finally:
        os.chdir(old_cwd)
    path = compile_pipeline(str(tmp_path / "dim.yaml"), IMAGE, settings.pop("pvc", "dim-data"),
                            values=values, **settings)
    spec, platform = yaml.safe_load_all(open(path))
    return path, spec, platform


def test_the_compiled_pipeline_loads_back_with_kfp_and_takes_every_flag(tmp_path):
    from kfp import components

    from pipelines.flags import pipeline_flag_names

    path, spec, platform = _compile(tmp_path, f"--flagfile={KUBEFLOW_FLAGFILE}")
    pipeline = components.load_component_from_file(path)  # kfp's own reader
    assert pipeline.name == "dim-tf"
    inputs = pipeline.component_spec.inputs
    assert set(inputs) == set(pipeline_flag_names()) and "only" not in inputs
    assert len(inputs) > 80
    # The flagfile's values are the defaults, typed like their flags.
    assert inputs["mi_units"].default == 512 and inputs["mi_units"].type == "Integer"
    assert inputs["learning_rate"].default == pytest.approx(2e-4)
    assert inputs["baseline"].default is True and inputs["eval_probes"].default == "linear,knn"
    assert inputs["steps_per_epoch"].default == 400
    assert inputs["eval_max_train_examples"].optional and inputs["eval_max_train_examples"].default is None

    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {f"dim-{stage}" for stage in STAGES}
    consumed = {task: {name: (a["taskOutputArtifact"]["producerTask"],
                              a["taskOutputArtifact"]["outputArtifactKey"])
                       for name, a in tasks[task]["inputs"].get("artifacts", {}).items()}
                for task in tasks}
    assert consumed == {
        "dim-ingest": {},
        "dim-train": {"examples": ("dim-ingest", "examples")},
        "dim-evaluate": {"examples": ("dim-ingest", "examples"), "model": ("dim-train", "model")},
        "dim-push": {"model": ("dim-train", "model"), "metrics": ("dim-evaluate", "metrics")},
        "dim-embed": {"examples": ("dim-ingest", "examples"),
                      "pushed_model": ("dim-push", "pushed_model")}}
    produced = {name: {output: a["artifactType"]["schemaTitle"]
                       for output, a in c["outputDefinitions"]["artifacts"].items()}
                for name, c in spec["components"].items()}
    assert produced == {"comp-dim-ingest": {"examples": "system.Dataset"},
                        "comp-dim-train": {"model": "system.Model"},
                        "comp-dim-evaluate": {"metrics": "system.Metrics",
                                              "report": "system.Markdown"},
                        "comp-dim-push": {"pushed_model": "system.Model"},
                        "comp-dim-embed": {"embeddings": "system.Dataset"}}
    executors = spec["deploymentSpec"]["executors"]
    for stage in STAGES:
        container = executors[f"exec-dim-{stage}"]["container"]
        assert container["image"] == IMAGE
        assert container["command"][:4] == ["python", "-m", "pipelines.kubeflow_step",
                                            f"--only={stage}"]
        assert len(container["args"]) == len(inputs)  # every parameter reaches every step
        assert not tasks[f"dim-{stage}"]["cachingOptions"].get("enableCache")
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name: (m["pvcMount"][0]["constant"], m["pvcMount"][0]["mountPath"])
            for name, m in mounts.items()} == {
        f"exec-dim-{stage}": ("dim-data", "/pipeline") for stage in STAGES}


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_every_path_in_the_compiled_pipeline_is_on_the_volume(tmp_path):
    _, spec, platform = _compile(tmp_path, f"--flagfile={KUBEFLOW_FLAGFILE}")
    paths = [token for text in _strings([spec, platform])
             for token in re.split(r"[=\s:,]", text) if token.startswith(("/", "~"))]
    assert paths, "the scan found no paths at all"
    assert not [p for p in paths if not (p == "/pipeline" or p.startswith("/pipeline/"))]
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["pipeline_root"]["defaultValue"] == "/pipeline/root"
    assert defaults["push_destination"]["defaultValue"] == "/pipeline/saved_models/dim_cifar10"
    assert defaults["data_dir"]["defaultValue"] == "/pipeline/tensorflow_datasets"

    # The local CIFAR-10 flagfile reads the dataset from the home folder: refused, by name.
    with pytest.raises(ConfigError, match=r"--dataset=/root/|--dataset=.*\.cache/dim_tf"):
        _compile(tmp_path, "--flagfile=configs/pipeline_cifar10.flags")
    with pytest.raises(ConfigError, match="--pvc is required"):
        _compile(tmp_path, f"--flagfile={KUBEFLOW_FLAGFILE}", pvc=None)


def test_paths_are_placed_on_the_volume_or_refused_by_name():
    values = {"pipeline_root": "runs/x", "push_destination": None, "pipeline_name": "dim",
              "data_dir": None, "manual_dir": None, "dataset": "folder:data/images"}
    placed = place_on_volume(values, "/mnt/vol")
    assert placed == {"pipeline_root": "/mnt/vol/runs/x",
                      "push_destination": "/mnt/vol/saved_models/dim", "pipeline_name": "dim",
                      "data_dir": "/mnt/vol/tensorflow_datasets", "manual_dir": None,
                      "dataset": "folder:/mnt/vol/data/images"}
    kept = dict(values, dataset="tfrecord:gs://bucket/examples", data_dir="gs://bucket/tfds",
                pipeline_root="/mnt/vol/root")
    assert place_on_volume(kept, "/mnt/vol")["dataset"] == "tfrecord:gs://bucket/examples"
    assert place_on_volume(dict(values, dataset="cifar10"), "/mnt/vol")["dataset"] == "cifar10"
    for flag, value in (("pipeline_root", "/tmp/root"), ("dataset", "folder:~/images"),
                        ("manual_dir", "/home/me/downloads"), ("push_destination", "../escape"),
                        ("dataset", "folder:/mnt/volume2/images")):
        with pytest.raises(ConfigError, match=f"--{flag}=.*not on the pipeline's volume"):
            place_on_volume(dict(values, **{flag: value}), "/mnt/vol")


def launcher_text(value) -> str:
    """A parameter value as Kubeflow's launcher substitutes it (its PbValueToText)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):  # Go's FormatFloat(v, 'f', -1, 64)
        return np.format_float_positional(float(value), trim="-")
    return str(value)


def _render(text: str, values: dict, executor_input: str) -> str:
    """A placeholder string as Kubeflow's launcher resolves it."""
    return re.sub(r"\{\{\$\.inputs\.parameters\['([a-z_]+)'\]\}\}",
                  lambda match: launcher_text(values[match.group(1)]),
                  text.replace("{{$}}", executor_input))


def launch_step(spec: dict, stage: str, overrides: dict, artifacts_root: str,
                inputs: dict) -> tuple[dict, dict]:
    """Runs one compiled step as its pod would; returns (its output artifacts, the
    executor output). `inputs`: {input name: output artifact of an upstream step}."""
    defaults = {name: p.get("defaultValue")
                for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    values = {name: v for name, v in {**defaults, **overrides}.items() if v is not None}
    component = spec["components"][f"comp-dim-{stage}"]
    outputs = {name: {"artifacts": [{"name": name, "type": a["artifactType"], "metadata": {},
                                     "uri": os.path.join(artifacts_root, stage, name)}]}
               for name, a in component["outputDefinitions"]["artifacts"].items()}
    executor_input = json.dumps({
        "inputs": {"parameterValues": values,
                   "artifacts": {name: {"artifacts": [artifact]} for name, artifact in inputs.items()}},
        "outputs": {"artifacts": outputs,
                    "outputFile": os.path.join(artifacts_root, stage, "executor_output.json")}})
    container = spec["deploymentSpec"]["executors"][f"exec-dim-{stage}"]["container"]
    argv = []
    for arg in container["command"] + container["args"]:
        if arg.startswith('{"IfPresent"'):
            present = json.loads(arg)["IfPresent"]
            if present["InputName"] not in values:
                continue
            argv += [_render(a, values, executor_input) for a in present["Then"]]
        else:
            argv.append(_render(arg, values, executor_input))
    assert argv[:3] == ["python", "-m", "pipelines.kubeflow_step"]
    result = subprocess.run([sys.executable, *argv[1:]], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr[-4000:]}"
    with open(os.path.join(artifacts_root, stage, "executor_output.json")) as f:
        executor_output = json.load(f)
    published = {name: dict(outputs[name]["artifacts"][0],
                            metadata=a["artifacts"][0]["metadata"])
                 for name, a in executor_output["artifacts"].items()}
    return published, executor_output


@pytest.mark.e2e
def test_the_steps_run_as_the_kubeflow_launcher_runs_them(tmp_path):
    volume = tmp_path / "volume"
    write_image_folder(str(volume / "data" / "images"), {"train": 24, "test": 12})
    # Tiny settings, relative paths (on the volume), a random encoder to beat by any margin.
    _, spec, _ = _compile(tmp_path, "--dataset=folder:data/images", "--pipeline_root=root",
                          "--pipeline_name=tiny", "--embed_splits=test", *TINY_FLAGS,
                          mount_path=str(volume))
    # A run-time parameter set in the run, as the Kubeflow UI would.
    overrides = {"eval_probe_epochs": 2}
    artifacts_root = str(tmp_path / "kubeflow_artifacts")  # Kubeflow's object store, mounted
    produced: dict[str, dict] = {}
    outputs = {}
    for stage in STAGES:
        from pipelines.kubeflow_artifacts import STEP_ARTIFACTS

        inputs = {name: produced[name] for name in STEP_ARTIFACTS[stage].inputs}
        published, outputs[stage] = launch_step(spec, stage, overrides, artifacts_root, inputs)
        produced.update(published)

    examples = produced["examples"]
    assert examples["metadata"]["volume_uri"].startswith(str(volume / "root" / "ingest"))
    assert examples["metadata"]["splits"]["train"]["num_examples"] == 24
    assert json.load(open(os.path.join(examples["uri"], "schema.json")))["splits"]["test"][
        "num_examples"] == 12
    model = produced["model"]
    assert model["metadata"]["steps"] == 3
    assert json.load(open(os.path.join(model["uri"], "config.json")))["mi_units"] == 16

    metrics = produced["metrics"]["metadata"]
    assert set(metrics) >= {"linear/conv", "linear/y", "random_init/linear/y", "volume_uri"}
    assert 0 <= metrics["linear/y"] <= 100
    report = open(produced["report"]["uri"], encoding="utf-8").read()
    assert "linear" in report and "](data:image/png;base64," in report
    evaluation = json.load(open(os.path.join(metrics["volume_uri"], "report.json")))
    assert evaluation["settings"]["probe_epochs"] == 2  # the run's parameter reached the stage

    pushed = produced["pushed_model"]
    assert pushed["metadata"]["blessed"] is True
    assert pushed["metadata"]["volume_uri"] == str(volume / "saved_models" / "tiny" / "1")
    assert versions(volume / "saved_models" / "tiny") == ["1"]  # the push survives the pod
    assert os.path.exists(os.path.join(pushed["uri"], "saved_model.pb"))
    embeddings = produced["embeddings"]["metadata"]
    assert embeddings["splits"]["test"]["images_embedded"] == 12

    # A step run again is a cache hit of its stage on the volume.
    shutil.rmtree(os.path.join(artifacts_root, "train"))
    again, _ = launch_step(spec, "train", overrides, artifacts_root,
                           {"examples": produced["examples"]})
    assert again["model"]["metadata"]["volume_uri"] == model["metadata"]["volume_uri"]
    assert again["model"]["metadata"]["fingerprint"] == model["metadata"]["fingerprint"]


def test_a_run_time_path_off_the_volume_fails_in_the_step_by_name(tmp_path):
    _, spec, _ = _compile(tmp_path, f"--flagfile={KUBEFLOW_FLAGFILE}", mount_path=str(tmp_path))
    container = spec["deploymentSpec"]["executors"]["exec-dim-ingest"]["container"]
    argv = [a for a in container["command"] if a != "{{$}}"] + ["{}"]
    result = subprocess.run([sys.executable, *argv[1:], "--pipeline_root=root",
                             "--dataset=folder:/etc/images"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--dataset=/etc/images is not on the pipeline's volume" in result.stderr


def test_the_dockerfile_pins_the_tensorflow_setup_py_asks_for():
    dockerfile = open(os.path.join(REPO_ROOT, "Dockerfile")).read()
    setup = open(os.path.join(REPO_ROOT, "setup.py")).read()
    pinned = re.search(r"^ARG TENSORFLOW=tensorflow==(\d+)\.(\d+)\.(\d+)$", dockerfile, re.M)
    wanted = re.search(r'"tensorflow>=(\d+)\.(\d+),<(\d+)\.(\d+)"', setup)
    assert pinned and wanted
    assert pinned.group(1, 2) == wanted.group(1, 2)
    gpu = re.search(r'tensorflow\[and-cuda\]==([\d.]+)', dockerfile)
    assert gpu and gpu.group(1) == ".".join(pinned.group(1, 2, 3))
    assert re.search(r'pip install "\$\{TENSORFLOW\}" -e "\.\[beam,kubeflow,serving\]"', dockerfile)
    assert "WORKDIR /opt/dim-tf" in dockerfile and "COPY . ." in dockerfile
