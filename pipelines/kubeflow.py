r"""Compile the pipeline's stages into a Kubeflow Pipelines spec (container steps).

    pip install -e ".[kubeflow]"
    python -m pipelines.kubeflow --image=REGISTRY/dim-tf:TAG --pvc=dim-data \
        --flagfile_in_image=configs/pipeline_cifar10.flags --output=dim_pipeline.yaml

Each stage becomes one container step running `python -m pipelines.run
--only=STAGE` with the same flagfile and pipeline root, in stage order. The
image must hold the repository checkout as its working directory (the
`pipelines` package is not installed with dim-tf). The steps share the
pipeline root (artifacts and the SQLite metadata store) through a persistent
volume claim mounted at --mount_path: use a ReadWriteOnce volume (or one
whose file locking SQLite trusts; SQLite's WAL journal is not safe on NFS).
Kubeflow's own step cache is switched off: the stages' cache keys include
the flagfile's content and the upstream artifacts, which Kubeflow cannot see.
Training can ask for accelerators (--train_accelerator, e.g. nvidia.com/gpu)
and uses the flagfile's --strategy. With --train_workers=N the train step
instead launches a Training Operator TFJob of a chief and N workers on the same
volume and waits for it (`--train_launcher=tfjob`, pipelines/tfjob.py); the
accelerators then go to the job's pods, and the pipeline's service account must
be allowed to create, get, list and delete `tfjobs.kubeflow.org` in
--tfjob_namespace.
"""

import os

from absl import flags

from dim_tf import DimError, run_cli
from pipelines.flags import STAGE_NAMES

FLAGS = flags.FLAGS


def compile_pipeline(
    output: str,
    image: str,
    flagfile: str,
    mount_path: str = "/pipeline",
    pvc: str | None = None,
    train_accelerator: str | None = None,
    train_accelerator_count: int = 1,
    train_memory: str = "16G",
    train_workers: int = 0,
    tfjob_namespace: str = "kubeflow",
) -> str:
    """Writes the Kubeflow Pipelines (v2 IR YAML) spec of the DIM pipeline to `output`.

    The compiled pipeline takes two run-time parameters: `flagfile` (default
    `flagfile`) and `pipeline_root` (default `<mount_path>/root`).

    Raises:
        ImportError: kfp (or, with `pvc`, kfp-kubernetes) is not installed.
    """
    from kfp import compiler, dsl

    launch_tfjob = train_workers > 0
    tfjob_flags = [
        "--train_launcher=tfjob", f"--tfjob_workers={train_workers}", f"--tfjob_image={image}",
        f"--tfjob_namespace={tfjob_namespace}", f"--tfjob_mount_path={mount_path}",
        f"--tfjob_memory={train_memory}", *([f"--tfjob_pvc={pvc}"] if pvc else []),
        *([f"--tfjob_accelerator={train_accelerator}",
           f"--tfjob_accelerator_count={train_accelerator_count}"] if train_accelerator else []),
    ] if launch_tfjob else []

    def step(stage: str):
        command = ["python", "-m", "pipelines.run", f"--only={stage}"]
        extra = tfjob_flags if stage == "train" else []

        def run_stage(flagfile: str, pipeline_root: str):
            return dsl.ContainerSpec(image=image, command=command,
                                     args=["--flagfile", flagfile, "--pipeline_root", pipeline_root,
                                           *extra])

        run_stage.__name__ = f"dim_{stage}"
        run_stage.__doc__ = f"dim-tf pipeline stage `{stage}` ({' '.join(command[1:])})."
        return dsl.container_component(run_stage)

    components = {stage: step(stage) for stage in STAGE_NAMES}

    @dsl.pipeline(name="dim-tf", description="Deep InfoMax: ingest, train, evaluate, push.")
    def dim_pipeline(flagfile: str = flagfile, pipeline_root: str = f"{mount_path}/root"):
        previous = None
        for stage in STAGE_NAMES:
            task = components[stage](flagfile=flagfile, pipeline_root=pipeline_root)
            task.set_display_name(stage)
            task.set_caching_options(False)
            if stage == "train" and not launch_tfjob:
                task.set_memory_limit(train_memory)
                if train_accelerator:
                    task.set_accelerator_type(train_accelerator)
                    task.set_accelerator_limit(train_accelerator_count)
            if pvc:
                from kfp import kubernetes

                kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)
            if previous is not None:
                task.after(previous)
            previous = task

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(dim_pipeline, package_path=output)
    return output


def _define_flags() -> None:
    """The command's flags, defined only when it runs, so importing this module
    never clashes with another entry point's flags."""
    flags.DEFINE_string("image", None, "Container image with dim-tf installed and the repository "
                        "checkout (pipelines/, configs/) as its working directory (e.g. built "
                        "FROM tensorflow/tensorflow:2.21.0, the checkout copied in, `pip install .`).")
    flags.DEFINE_string("output", "dim_pipeline.yaml", "Where the compiled spec is written.")
    flags.DEFINE_string("flagfile_in_image", "configs/pipeline_cifar10.flags",
                        "The pipeline flagfile, as a path inside the image (or the volume).")
    flags.DEFINE_string("mount_path", "/pipeline", "Where the volume is mounted in every step.")
    flags.DEFINE_string("pvc", None, "Name of the persistent volume claim holding the pipeline root.")
    flags.DEFINE_string("train_accelerator", None, "Accelerator of the training step, e.g. nvidia.com/gpu.")
    flags.DEFINE_integer("train_accelerator_count", 1, "How many of --train_accelerator.")
    flags.DEFINE_string("train_memory", "16G", "Memory limit of the training step (of each "
                        "TFJob pod with --train_workers).")
    flags.DEFINE_integer("train_workers", 0, "0: train in the step's pod. N > 0: the step launches "
                         "a TFJob of a chief and N workers and waits for it.", lower_bound=0)
    flags.mark_flag_as_required("image")


def main() -> None:
    try:
        path = compile_pipeline(FLAGS.output, FLAGS.image, FLAGS.flagfile_in_image, FLAGS.mount_path,
                                FLAGS.pvc, FLAGS.train_accelerator, FLAGS.train_accelerator_count,
                                FLAGS.train_memory, FLAGS.train_workers, FLAGS.tfjob_namespace)
    except ImportError as error:
        raise DimError(f"{error}. Compiling for Kubeflow needs the optional extra: "
                       "pip install -e \".[kubeflow]\"") from error
    print(f"Kubeflow pipeline spec written to {path}")


if __name__ == "__main__":
    _define_flags()
    run_cli(main, "pipelines.kubeflow")
