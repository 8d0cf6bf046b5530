r"""Compile the pipeline for Kubeflow Pipelines: one step per stage, every flag a run-time parameter.

    pip install -e ".[kubeflow]"
    python -m pipelines.kubeflow --flagfile=configs/pipeline_cifar10_kubeflow.flags \
        --image=REGISTRY/dim-tf:2.21 --pvc=dim-data --output=dim_pipeline.yaml

The flags (a flagfile, and any flag of `python -m pipelines.run`) give the
defaults of the compiled pipeline's run-time parameters, one per flag of the
local pipeline: a run in the Kubeflow UI can change any of them.

Each stage is one container step running `python -m pipelines.kubeflow_step
--only=STAGE` in the image (`Dockerfile`: dim-tf installed, this checkout as
its working directory). The steps share the persistent volume claim --pvc,
mounted at --mount_path: the pipeline root (artifacts and the SQLite metadata
store), the dataset, the pushed models. Every path is put on it
(`pipelines.volume`: relative paths go under the mount path, paths off it are
refused), at compile time for the defaults and in each step for what a run
sets. Use a ReadWriteOnce volume, or one whose file locking SQLite trusts
(SQLite's WAL journal is not safe on NFS).

The steps pass Kubeflow artifacts to each other (`pipelines.kubeflow_artifacts`:
Dataset, Model, Metrics, Markdown), so the UI shows lineage, the probes'
accuracies and the evaluation report. Kubeflow's own step cache is off: the
stages' cache keys include the upstream artifacts on the volume, which
Kubeflow cannot see, and a rerun of a step is a cache hit in the stage itself.

Training runs in the train step's pod (--train_memory, --train_accelerator), or
with `--train_launcher=tfjob` as a Training Operator TFJob of a chief and
--tfjob_workers workers that the step launches and waits for
(`pipelines/tfjob.py`: the job's pods mount the same claim and run the same
image); the pipeline's service account must then be allowed to create, get,
list and delete `tfjobs.kubeflow.org` in --tfjob_namespace.
"""

from __future__ import annotations

import inspect
import os
from typing import Optional

from absl import flags

from dim_tf import ConfigError, DimError, run_cli
from pipelines import flags as pipeline_flags
from pipelines.flags import FLAGS, STAGE_NAMES
from pipelines.kubeflow_artifacts import STEP_ARTIFACTS, artifact_parameters

STEP_MODULE = "pipelines.kubeflow_step"
_PARAMETER_TYPES = {"bool": bool, "int": int, "float": float}


def parameter_defaults(image: str, pvc: str, mount_path: str,
                       values: flags.FlagValues = FLAGS) -> dict:
    """{flag name: default of its run-time parameter}: the parsed flags, their paths
    on the volume, the TFJob's pods on the step image and the claim.

    Raises:
        ConfigError: a path off the volume, or a setting the pipeline would refuse.
    """
    pipeline_flags.place_flags_on_volume(mount_path, values)
    for name, value in (("tfjob_image", image), ("tfjob_pvc", pvc)):
        if values[name].value is None:
            values[name].value = value
    values["tfjob_mount_path"].value = mount_path
    pipeline_flags.validate_parameters(pipeline_flags.stage_parameters(values))
    pipeline_flags.forced_stages(values)
    defaults = {}
    for name in pipeline_flags.pipeline_flag_names(values):
        value = values[name].value
        defaults[name] = ",".join(value) if isinstance(value, list) else value
    return defaults


def _parameters(defaults: dict, values: flags.FlagValues) -> list[inspect.Parameter]:
    """The run-time parameters as a signature kfp reads: typed like their flags,
    optional (no default) where the flag's value is None."""
    parameters = []
    for name, default in defaults.items():
        kind = _PARAMETER_TYPES.get(values[name].flag_type(), str)
        parameters.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default,
            annotation=kind if default is not None else Optional[kind]))
    return parameters


def _with_signature(function, name: str, parameters: list[inspect.Parameter]):
    function.__name__ = name
    function.__signature__ = inspect.Signature(parameters)
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    return function


def _step_component(stage: str, image: str, mount_path: str,
                    parameters: list[inspect.Parameter]):
    """The container component of one stage: its artifacts, then every parameter."""
    from kfp import dsl

    signature = artifact_parameters(stage) + parameters

    def container(*placeholders):
        # kfp calls this with one placeholder per parameter of the signature.
        given = dict(zip((p.name for p in signature), placeholders))
        args = []
        for parameter in parameters:
            flag = f"--{parameter.name}={given[parameter.name]}"
            args.append(flag if parameter.default is not None else
                        dsl.IfPresentPlaceholder(input_name=parameter.name, then=[flag]))
        return dsl.ContainerSpec(
            image=image,
            command=["python", "-m", STEP_MODULE, f"--only={stage}", f"--volume={mount_path}",
                     "--executor_input", "{{$}}"],
            args=args)

    container.__doc__ = f"dim-tf pipeline stage `{stage}` (python -m {STEP_MODULE})."
    return dsl.container_component(_with_signature(container, f"dim_{stage}", signature))


def compile_pipeline(
    output: str,
    image: str,
    pvc: str,
    mount_path: str = "/pipeline",
    train_accelerator: str | None = None,
    train_accelerator_count: int = 1,
    train_memory: str = "16G",
    values: flags.FlagValues = FLAGS,
) -> str:
    """Writes the Kubeflow Pipelines (v2 IR YAML) spec of the DIM pipeline to `output`,
    with the parsed pipeline flags in `values` as its parameters' defaults.

    Raises:
        ConfigError: no claim, a path off the volume, an invalid setting, or
            accelerators for a train step that only launches a TFJob.
        ImportError: kfp or kfp-kubernetes is not installed.
    """
    if not pvc:
        raise ConfigError("--pvc is required: the steps share the pipeline root, the data and the "
                          "pushed models on a persistent volume claim.")
    defaults = parameter_defaults(image, pvc, mount_path, values)
    if train_accelerator and defaults["train_launcher"] == "tfjob":
        raise ConfigError("--train_accelerator with --train_launcher=tfjob: the train step only "
                          "launches the TFJob; give its pods accelerators with --tfjob_accelerator.")
    from kfp import compiler, dsl, kubernetes

    parameters = _parameters(defaults, values)
    components = {stage: _step_component(stage, image, mount_path, parameters)
                  for stage in STAGE_NAMES}

    def dim_pipeline(*placeholders):
        given = dict(zip((p.name for p in parameters), placeholders))
        tasks = {}
        for stage in STAGE_NAMES:
            upstream = {name: tasks[producer].outputs[name]
                        for name, producer in STEP_ARTIFACTS[stage].inputs.items()}
            task = components[stage](**upstream, **given)
            task.set_display_name(stage)
            task.set_caching_options(False)
            kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)
            if stage == "train":
                task.set_memory_limit(train_memory)
                if train_accelerator:
                    task.set_accelerator_type(train_accelerator)
                    task.set_accelerator_limit(train_accelerator_count)
            tasks[stage] = task

    pipeline = dsl.pipeline(name="dim-tf", description="Deep InfoMax: ingest, train, evaluate, "
                            "push, embed.")(_with_signature(dim_pipeline, "dim_tf", parameters))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(pipeline, package_path=output)
    return output


def _define_flags() -> None:
    """The command's own flags (besides the pipeline's), defined only when it runs, so
    importing this module never clashes with another entry point's flags."""
    flags.adopt_module_key_flags(pipeline_flags)
    flags.DEFINE_string("image", None, "The step image (`Dockerfile`): dim-tf installed, the "
                        "repository checkout (pipelines/, configs/) as its working directory.")
    flags.DEFINE_string("output", "dim_pipeline.yaml", "Where the compiled spec is written.")
    flags.DEFINE_string("mount_path", "/pipeline", "Where the volume is mounted in every step.")
    flags.DEFINE_string("pvc", None, "The persistent volume claim holding the pipeline root, "
                        "the data and the pushed models.")
    flags.DEFINE_string("train_accelerator", None, "Accelerator of the train step's pod, e.g. "
                        "nvidia.com/gpu (a TFJob's pods take --tfjob_accelerator).")
    flags.DEFINE_integer("train_accelerator_count", 1, "How many of --train_accelerator.")
    flags.DEFINE_string("train_memory", "16G", "Memory limit of the train step's pod.")
    flags.mark_flag_as_required("image")


def main() -> None:
    try:
        path = compile_pipeline(FLAGS.output, FLAGS.image, FLAGS.pvc, FLAGS.mount_path,
                                FLAGS.train_accelerator, FLAGS.train_accelerator_count,
                                FLAGS.train_memory)
    except ImportError as error:
        raise DimError(f"{error}. Compiling for Kubeflow needs the optional extra: "
                       "pip install -e \".[kubeflow]\"") from error
    print(f"Kubeflow pipeline spec written to {path}: "
          f"{len(pipeline_flags.pipeline_flag_names())} run-time parameters.")


if __name__ == "__main__":
    _define_flags()
    run_cli(main, "pipelines.kubeflow")
