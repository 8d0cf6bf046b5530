"""Multi-worker training as a Kubeflow Training Operator `TFJob`.

A `TrainConfig` becomes a TFJob of one chief and N workers, each running
`python -m dim_tf.train` with the config's flags and `--strategy=multi_worker`;
the operator sets each pod's `TF_CONFIG`. The job is built from the operator
SDK's own models (`kubeflow-training`), so a misspelt field is an error here,
not a manifest the cluster rejects later.

How the pieces of dim-tf's fault handling map onto the operator:
- restart policy `ExitCode`: the operator restarts a pod whose exit status is
  retryable (128 and above: SIGTERM's 143 after a preemption, SIGKILL's 137)
  and not one that failed for good (1 a failed run, 2 bad settings);
- a SIGTERM to any pod stops every worker after one agreed step, which is
  checkpointed (`dim_tf.training.callbacks.StopClusterOnSigterm`); the restarted
  pods resume from it;
- only the chief writes: the run directory must be on the shared volume (or an
  object-store URI), or it vanishes with the chief's pod.

`launch` creates the job (or attaches to the one of the same run already
running, after a launcher pod restart) and waits for it.
"""

from __future__ import annotations

import dataclasses
import hashlib

from dim_tf import ConfigError, TrainConfig, TrainingError, config_flags
from pipelines.volume import check_shared

API_VERSION = "kubeflow.org/v1"
KIND = "TFJob"
# The operator finds TensorFlow's container of a replica by this name.
CONTAINER = "tensorflow"
VOLUME = "pipeline"


@dataclasses.dataclass(frozen=True)
class TFJobSettings:
    """Where and how a TFJob runs (not what it trains: that is the TrainConfig)."""

    image: str
    workers: int = 1  # besides the chief
    namespace: str = "kubeflow"
    pvc: str | None = None  # the claim mounted at mount_path in every pod
    mount_path: str = "/pipeline"
    memory: str = "16G"
    cpu: str | None = None
    accelerator: str | None = None  # e.g. nvidia.com/gpu, per pod
    accelerator_count: int = 1
    backoff_limit: int = 5  # restarts of the whole job before it is Failed

    def __post_init__(self):
        if not self.image:
            raise ConfigError("The TFJob needs an image (--tfjob_image): the step image of "
                              "docs/scale-out.md, with dim-tf installed.")
        if self.workers < 0:
            raise ConfigError(f"--tfjob_workers must be >= 0 (workers besides the chief); "
                              f"got {self.workers}.")
        if self.accelerator_count < 1:
            raise ConfigError(f"--tfjob_accelerator_count must be >= 1; got "
                              f"{self.accelerator_count}.")


def job_name(model_dir: str) -> str:
    """A DNS-1123 name fixed by the run directory: a relaunch finds the same job."""
    return "dim-train-" + hashlib.sha256(model_dir.encode()).hexdigest()[:12]


def train_command(config: TrainConfig) -> list[str]:
    """What every pod runs: dim_tf.train with the config's flags, multi-worker."""
    config = dataclasses.replace(config, strategy="multi_worker")
    return ["python", "-m", "dim_tf.train", *config_flags(config)]


def build_tfjob(config: TrainConfig, settings: TFJobSettings):
    """The TFJob (a `KubeflowOrgV1TFJob`) training `config` on 1 + `settings.workers` pods.

    Raises:
        ConfigError: the run directory or the dataset is not on the shared volume or
            an object-store URI; invalid settings.
        ImportError: kubeflow-training is not installed.
    """
    from kubeflow.training import models
    from kubernetes import client

    volume = settings.mount_path if settings.pvc else None
    check_shared(config.model_dir, "model_dir", volume)
    if config.data.path is not None:
        check_shared(config.data.path, "dataset", volume)

    limits = {"memory": settings.memory}
    if settings.cpu:
        limits["cpu"] = settings.cpu
    if settings.accelerator:
        limits[settings.accelerator] = str(settings.accelerator_count)
    command = train_command(config)
    container = client.V1Container(
        name=CONTAINER, image=settings.image, command=command[:3], args=command[3:],
        resources=client.V1ResourceRequirements(limits=limits, requests={"memory": settings.memory}),
        volume_mounts=[client.V1VolumeMount(name=VOLUME, mount_path=settings.mount_path)]
        if settings.pvc else None)
    volumes = ([client.V1Volume(name=VOLUME, persistent_volume_claim=(
        client.V1PersistentVolumeClaimVolumeSource(claim_name=settings.pvc)))]
        if settings.pvc else None)
    template = client.V1PodTemplateSpec(spec=client.V1PodSpec(containers=[container],
                                                              volumes=volumes))

    def replicas(count: int):
        return models.KubeflowOrgV1ReplicaSpec(replicas=count, restart_policy="ExitCode",
                                               template=template)

    specs = {"Chief": replicas(1)}
    if settings.workers:
        specs["Worker"] = replicas(settings.workers)
    return models.KubeflowOrgV1TFJob(
        api_version=API_VERSION, kind=KIND,
        metadata=client.V1ObjectMeta(name=job_name(config.model_dir), namespace=settings.namespace,
                                     labels={"app.kubernetes.io/name": "dim-tf",
                                             "app.kubernetes.io/component": "train"}),
        spec=models.KubeflowOrgV1TFJobSpec(
            tf_replica_specs=specs,
            run_policy=models.KubeflowOrgV1RunPolicy(backoff_limit=settings.backoff_limit,
                                                     clean_pod_policy="None")))


def manifest(job) -> dict:
    """The job as the Kubernetes API takes it (camelCase keys), e.g. for `kubectl apply`."""
    from kubernetes import client

    return client.ApiClient().sanitize_for_serialization(job)


def _training_client(namespace: str):
    from kubeflow.training import TrainingClient

    return TrainingClient(namespace=namespace, job_kind=KIND)


def launch(job, client=None, wait_timeout_seconds: int = 7 * 24 * 3600,
           polling_interval: int = 30) -> None:
    """Creates `job` and waits until it has Succeeded. A job of the same name that is
    still running (a relaunched launcher) is waited for; one that Failed is deleted
    and created again, so the rerun resumes from the run's last checkpoint.

    `client` is a `kubeflow.training.TrainingClient` (by default one for the job's
    namespace from the pod's service account or the local kubeconfig).

    Raises:
        TrainingError: the job Failed or did not finish within the timeout.
    """
    client = client or _training_client(job.metadata.namespace)
    name, namespace = job.metadata.name, job.metadata.namespace
    existing = {j.metadata.name for j in client.list_jobs(namespace=namespace, job_kind=KIND)}
    if name in existing and client.is_job_failed(name, namespace=namespace, job_kind=KIND):
        client.delete_job(name, namespace=namespace, job_kind=KIND)
        existing.discard(name)
    if name not in existing:
        client.create_job(job=job)
    try:
        client.wait_for_job_conditions(name, namespace=namespace, job_kind=KIND,
                                       expected_conditions={"Succeeded"},
                                       wait_timeout=wait_timeout_seconds,
                                       polling_interval=polling_interval)
    except (RuntimeError, TimeoutError) as error:
        raise TrainingError(f"TFJob {namespace}/{name}: {error} The run directory keeps its "
                            "checkpoints: run the stage again to resume.") from error
