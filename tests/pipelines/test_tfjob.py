"""The train stage as a Kubeflow TFJob (pipelines/tfjob.py), checked offline.

The job is built from the Training Operator SDK's models and must round-trip
through them unchanged; its pods' command must read back as the stage's
TrainConfig. `LocalOperator` stands in for the operator: it runs a job's
replicas as localhost processes with TF_CONFIG as the operator sets it (a
"chief" task and "worker" tasks), so the end-to-end test trains a real
two-process cluster from the generated manifest.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from dim_tf import ConfigError, TrainConfig, TrainingError, config_values, define_config_flags
from pipelines import tfjob
from tests.pipelines.conftest import REPO_ROOT, parameters
from tests.ports import free_ports

IMAGE = "example.com/dim-tf:test"


def _config(**overrides) -> TrainConfig:
    settings = dict(model_dir="/pipeline/root/train/run-1/model",
                    dataset="tfrecord:/pipeline/root/ingest/run-1/examples", epochs=3,
                    batch_size=64, random_crop=True, views=2, learning_rate=5e-4)
    settings.update(overrides)
    return TrainConfig(**settings)


def _settings(**overrides) -> tfjob.TFJobSettings:
    return tfjob.TFJobSettings(**dict(dict(image=IMAGE, workers=3, pvc="dim-data",
                                           accelerator="nvidia.com/gpu"), **overrides))


def _round_trip(manifest: dict) -> dict:
    """The manifest read into the SDK's KubeflowOrgV1TFJob and written out again: a
    key the operator's schema does not have is dropped, a wrong type refused."""
    from kubeflow.training.api_client import ApiClient

    class Response:
        data = json.dumps(manifest)

    job = ApiClient().deserialize(Response(), "KubeflowOrgV1TFJob")
    return tfjob.manifest(job)


def test_the_tfjob_is_a_chief_and_n_workers_running_the_stages_training():
    config = _config()
    manifest = tfjob.manifest(tfjob.build_tfjob(config, _settings()))
    assert _round_trip(manifest) == manifest
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "TFJob")
    assert manifest["metadata"]["name"] == tfjob.job_name(config.model_dir)
    replicas = manifest["spec"]["tfReplicaSpecs"]
    assert {kind: spec["replicas"] for kind, spec in replicas.items()} == {"Chief": 1, "Worker": 3}
    for spec in replicas.values():
        # 143 (SIGTERM, saved) and 137 are retried by the operator; 1 and 2 are not.
        assert spec["restartPolicy"] == "ExitCode"
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow" and container["image"] == IMAGE
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["volumeMounts"] == [{"name": "pipeline", "mountPath": "/pipeline"}]
        assert pod["volumes"] == [{"name": "pipeline",
                                   "persistentVolumeClaim": {"claimName": "dim-data"}}]
        assert container["command"] == ["python", "-m", "dim_tf.train"]
        values = flags.FlagValues()
        define_config_flags(TrainConfig, flag_values=values)
        values(["dim_tf.train", *container["args"]])
        trained = TrainConfig(**config_values(TrainConfig, flag_values=values))
        assert trained == _config(strategy="multi_worker")
    assert "Worker" not in tfjob.manifest(tfjob.build_tfjob(config, _settings(workers=0)))[
        "spec"]["tfReplicaSpecs"]


def test_a_misspelt_field_does_not_survive_the_operators_schema():
    manifest = tfjob.manifest(tfjob.build_tfjob(_config(), _settings()))
    manifest["spec"]["tfReplicaSpecs"]["Chief"]["restartPolicyy"] = "Never"
    assert _round_trip(manifest) != manifest


@pytest.mark.parametrize("overrides, named", [
    ({"model_dir": "/tmp/run"}, "--model_dir=/tmp/run"),
    ({"dataset": "folder:/home/me/images"}, "--dataset=/home/me/images"),
])
def test_a_run_or_dataset_off_the_shared_volume_is_refused(overrides, named):
    with pytest.raises(ConfigError, match=named) as error:
        tfjob.build_tfjob(_config(**overrides), _settings())
    assert "vanish with its pod" in str(error.value)
    tfjob.build_tfjob(_config(model_dir="gs://bucket/run"), _settings())  # an object store is shared


def test_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match="--tfjob_workers must be >= 0"):
        _settings(workers=-1)
    with pytest.raises(ConfigError, match="needs an image"):
        _settings(image="")


class RecordingClient:
    """A TrainingClient stand-in holding jobs by name with a fixed final condition."""

    def __init__(self, existing=None, outcome="Succeeded"):
        self.jobs = dict(existing or {})  # name -> condition
        self.outcome, self.calls = outcome, []

    def list_jobs(self, namespace, job_kind):
        return [type("Job", (), {"metadata": type("Meta", (), {"name": n})})() for n in self.jobs]

    def is_job_failed(self, name, namespace, job_kind):
        return self.jobs[name] == "Failed"

    def delete_job(self, name, namespace, job_kind):
        self.calls.append("delete")
        del self.jobs[name]

    def create_job(self, job):
        self.calls.append("create")
        self.jobs[job.metadata.name] = self.outcome

    def wait_for_job_conditions(self, name, namespace, job_kind, expected_conditions,
                                wait_timeout, polling_interval):
        self.calls.append("wait")
        if self.jobs[name] == "Failed":
            raise RuntimeError(f"TFJob {namespace}/{name} is Failed.")


def test_launch_creates_attaches_to_a_running_job_and_recreates_a_failed_one():
    job = tfjob.build_tfjob(_config(), _settings())
    name = job.metadata.name
    fresh = RecordingClient()
    tfjob.launch(job, fresh)
    assert fresh.calls == ["create", "wait"]

    running = RecordingClient({name: "Running"})  # the launcher's pod was restarted
    tfjob.launch(job, running)
    assert running.calls == ["wait"]

    failed_before = RecordingClient({name: "Failed"})
    tfjob.launch(job, failed_before)
    assert failed_before.calls == ["delete", "create", "wait"]

    with pytest.raises(TrainingError, match=f"TFJob kubeflow/{name}: .* is Failed.*resume"):
        tfjob.launch(job, RecordingClient(outcome="Failed"))


class LocalOperator(RecordingClient):
    """Runs a created TFJob's replicas as localhost processes, each with the TF_CONFIG
    the operator would give its pod, and records how they exited."""

    def __init__(self):
        super().__init__()
        self.outputs = {}

    def create_job(self, job):
        self.calls.append("create")
        manifest = tfjob.manifest(job)
        tasks = [(kind.lower(), index) for kind, spec in manifest["spec"]["tfReplicaSpecs"].items()
                 for index in range(spec["replicas"])]
        ports = iter(free_ports(len(tasks)))
        cluster = {}
        for kind, _ in tasks:
            cluster.setdefault(kind, []).append(f"127.0.0.1:{next(ports)}")
        processes = {}
        for kind, index in tasks:
            (container,) = manifest["spec"]["tfReplicaSpecs"][kind.title()]["template"]["spec"][
                "containers"]
            command = [sys.executable if part == "python" else part
                       for part in container["command"]] + container["args"]
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": kind, "index": index}}))
            processes[f"{kind}-{index}"] = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
        try:
            for task, process in processes.items():
                self.outputs[task] = (process.communicate(timeout=300)[0], process.returncode)
        finally:
            for process in processes.values():
                process.kill()
        failed = any(status != 0 for _, status in self.outputs.values())
        self.jobs[job.metadata.name] = "Failed" if failed else "Succeeded"


@pytest.mark.e2e
def test_the_train_stage_runs_as_a_tfjob_of_a_chief_and_a_worker(image_tree, tmp_path,
                                                                monkeypatch):
    from pipelines.pipeline import run_pipeline

    volume = tmp_path / "volume"
    root = volume / "root"
    operator = LocalOperator()
    monkeypatch.setattr(tfjob, "_training_client", lambda namespace: operator)
    as_tfjob = ("--train_launcher=tfjob", f"--tfjob_image={IMAGE}", "--tfjob_workers=1",
                "--tfjob_pvc=dim-data", f"--tfjob_mount_path={volume}")
    run_pipeline(str(root), parameters(image_tree, root, *as_tfjob), only="ingest")
    results = run_pipeline(str(root), parameters(image_tree, root, *as_tfjob), only="train")

    for task, (output, status) in operator.outputs.items():
        assert status == 0, f"{task}:\n{output[-3000:]}"
    assert set(operator.outputs) == {"chief-0", "worker-0"}
    model = results["train"].outputs["model"]
    assert model.properties["steps"] == 3
    assert json.load(open(os.path.join(model.uri, "config.json")))["strategy"] == "multi_worker"
    # The launcher is how the stage runs, not what it makes: the in-process stage
    # finds the TFJob's model in the cache.
    again = run_pipeline(str(root), parameters(image_tree, root), only="train")
    assert again["train"].cached and again["train"].outputs["model"].uri == model.uri


def test_the_kubeflow_train_step_launches_the_tfjob(tmp_path, image_tree):
    from tests.pipelines.test_kubeflow import IMAGE as STEP_IMAGE
    from tests.pipelines.test_kubeflow import KUBEFLOW_FLAGFILE, _compile, launcher_text

    from pipelines.train import training_settings

    _, spec, _ = _compile(tmp_path, f"--flagfile={KUBEFLOW_FLAGFILE}", "--train_launcher=tfjob",
                          "--tfjob_workers=3", "--tfjob_accelerator=nvidia.com/gpu",
                          "--tfjob_accelerator_count=2")
    defaults = {name: p.get("defaultValue")
                for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert (defaults["train_launcher"], defaults["tfjob_workers"]) == ("tfjob", 3)
    # The job's pods run the step image and mount the steps' claim where the steps do.
    assert (defaults["tfjob_image"], defaults["tfjob_pvc"], defaults["tfjob_mount_path"]) == (
        STEP_IMAGE, "dim-data", "/pipeline")
    train = spec["deploymentSpec"]["executors"]["exec-dim-train"]["container"]
    assert "accelerator" not in train.get("resources", {})  # the accelerators are the pods'
    assert any(a.startswith("--tfjob_workers=") for a in train["args"])

    # The step's parameters give the TFJob the compiled settings.
    launcher = [f"--{name}={launcher_text(value)}" for name, value in defaults.items()
                if name.startswith("tfjob_") and value is not None] + ["--train_launcher=tfjob"]
    train_parameters = parameters(image_tree, "/pipeline/root", *launcher)["train"]
    _, settings = training_settings(train_parameters, "/pipeline/root/train/model",
                                    "tfrecord:/pipeline/root/ingest/examples")
    assert settings == tfjob.TFJobSettings(image=STEP_IMAGE, workers=3, pvc="dim-data",
                                           mount_path="/pipeline", accelerator="nvidia.com/gpu",
                                           accelerator_count=2)

    # A train step that only launches the job takes no accelerator of its own.
    with pytest.raises(ConfigError, match="--tfjob_accelerator"):
        _compile(tmp_path, f"--flagfile={KUBEFLOW_FLAGFILE}", "--train_launcher=tfjob",
                 train_accelerator="nvidia.com/gpu")
