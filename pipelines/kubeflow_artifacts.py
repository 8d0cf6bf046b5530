"""The Kubeflow artifacts of each stage's step: what it declares, and what it writes.

The stages keep their results on the pipeline's volume, where the local
pipeline's metadata store caches and relates them. Each Kubeflow step also
declares its inputs and outputs as Kubeflow artifacts, so the Kubeflow UI
shows the run's lineage, metrics and report:

    ingest    -> examples (Dataset)
    train     examples -> model (Model)
    evaluate  examples, model -> metrics (Metrics), report (Markdown)
    push      model, metrics -> pushed_model (Model)
    embed     examples, pushed_model -> embeddings (Dataset)

Every artifact's metadata holds `volume_uri`, where the stage's result lives on
the volume, and its `fingerprint` in the local store. The files Kubeflow
uploads are what is small enough to view there: the dataset's schema and
statistics, the run's config and summary, the evaluation report with its
plots inlined, the pushed SavedModel itself, the embeddings' counters.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil

from pipelines.stage import StageResult


@dataclasses.dataclass(frozen=True)
class StepArtifacts:
    """inputs: {name: the upstream stage whose output of that name it is};
    outputs: {name: Kubeflow artifact class name in `kfp.dsl`}."""

    inputs: dict[str, str]
    outputs: dict[str, str]


STEP_ARTIFACTS = {
    "ingest": StepArtifacts(inputs={}, outputs={"examples": "Dataset"}),
    "train": StepArtifacts(inputs={"examples": "ingest"}, outputs={"model": "Model"}),
    "evaluate": StepArtifacts(inputs={"examples": "ingest", "model": "train"},
                              outputs={"metrics": "Metrics", "report": "Markdown"}),
    "push": StepArtifacts(inputs={"model": "train", "metrics": "evaluate"},
                          outputs={"pushed_model": "Model"}),
    "embed": StepArtifacts(inputs={"examples": "ingest", "pushed_model": "push"},
                           outputs={"embeddings": "Dataset"}),
}


def artifact_class(stage: str, name: str):
    """The `kfp.dsl` artifact class of a step's input or output `name`."""
    from kfp import dsl

    step = STEP_ARTIFACTS[stage]
    producer = step.inputs.get(name, stage)
    return getattr(dsl, STEP_ARTIFACTS[producer].outputs[name])


def artifact_parameters(stage: str) -> list:
    """The step's artifacts as keyword-only `inspect.Parameter`s annotated `dsl.Input[...]`
    or `dsl.Output[...]`: the signature kfp reads, both when it compiles the step's
    component and when its executor fills in the step's artifacts."""
    import inspect

    from kfp import dsl

    step = STEP_ARTIFACTS[stage]
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                              annotation=direction[artifact_class(stage, name)])
            for names, direction in ((step.inputs, dsl.Input), (step.outputs, dsl.Output))
            for name in names]


def _pointer(artifact) -> dict:
    """Metadata naming where a stage's result is, and which one it is."""
    return {"volume_uri": artifact.uri, "fingerprint": artifact.fingerprint,
            "type": artifact.type}


def _copy_files(directory: str, names: tuple[str, ...], destination: str) -> None:
    os.makedirs(destination, exist_ok=True)
    for name in names:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            shutil.copy2(path, os.path.join(destination, name))


def _inline_images(markdown: str, directory: str) -> str:
    """Markdown with its relative `![...](file.png)` images as data URIs: Kubeflow
    shows one file, not a folder."""
    def inline(match: re.Match) -> str:
        path = os.path.join(directory, match.group(2))
        if not os.path.isfile(path):
            return match.group(0)
        with open(path, "rb") as f:
            encoded = base64.b64encode(f.read()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{encoded})"

    return re.sub(r"!\[([^\]]*)\]\(([^):]+\.png)\)", inline, markdown)


def _ingest(results: dict[str, StageResult], examples) -> None:
    ingested = results["ingest"].outputs["examples"]
    examples.metadata.update(_pointer(ingested), splits=ingested.properties["splits"],
                             source=ingested.properties["source"])
    _copy_files(ingested.uri, ("schema.json", "statistics.json"), examples.path)


def _train(results: dict[str, StageResult], model) -> None:
    trained = results["train"].outputs["model"]
    model.metadata.update(_pointer(trained), **{k: v for k, v in trained.properties.items()
                                                if k != "metrics"})
    _copy_files(trained.uri, ("config.json", "summary.json"), model.path)


def _evaluate(results: dict[str, StageResult], metrics, report) -> None:
    outputs = results["evaluate"].outputs
    for name, prefix in (("evaluation", ""), ("baseline_evaluation", "random_init/")):
        if name in outputs:
            for key, accuracy in sorted(outputs[name].properties["accuracy"].items()):
                metrics.log_metric(prefix + key, accuracy)
    evaluation = outputs["evaluation"]
    metrics.metadata.update(_pointer(evaluation))
    report.metadata.update(_pointer(evaluation))
    with open(os.path.join(evaluation.uri, "report.md"), encoding="utf-8") as f:
        markdown = _inline_images(f.read(), evaluation.uri)
    os.makedirs(os.path.dirname(report.path) or ".", exist_ok=True)
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(markdown)


def _push(results: dict[str, StageResult], pushed_model) -> None:
    outputs = results["push"].outputs
    blessing = outputs["blessing"]
    pushed_model.metadata.update(_pointer(blessing), blessed=blessing.properties["blessed"],
                                 reasons=blessing.properties["reasons"],
                                 metric=blessing.properties["metric"],
                                 value=blessing.properties["value"])
    if "pushed_model" in outputs:
        version = outputs["pushed_model"]
        pushed_model.metadata.update(volume_uri=version.uri, version=version.properties["version"])
        shutil.copytree(version.uri, pushed_model.path, dirs_exist_ok=True)
    else:
        _copy_files(os.path.dirname(blessing.uri), (os.path.basename(blessing.uri),),
                    pushed_model.path)


def _embed(results: dict[str, StageResult], embeddings) -> None:
    embedded = results["embed"].outputs["embeddings"]
    embeddings.metadata.update(_pointer(embedded), **embedded.properties)
    _copy_files(embedded.uri, ("embeddings.json",), embeddings.path)


_PUBLISHERS = {"ingest": _ingest, "train": _train, "evaluate": _evaluate, "push": _push,
               "embed": _embed}


def publish(stage: str, results: dict[str, StageResult], executor_input: dict) -> str:
    """Writes `stage`'s Kubeflow output artifacts and the executor output file the
    Kubeflow launcher reads (metadata, metrics), with kfp's own executor.

    Returns:
        The executor output file's path.
    """
    import inspect

    from kfp.dsl.executor import Executor

    step = STEP_ARTIFACTS[stage]
    publisher = _PUBLISHERS[stage]

    def write_artifacts(**artifacts):
        publisher(results, *(artifacts[name] for name in step.outputs))

    # kfp's executor fills in the arguments a function's signature asks for.
    parameters = artifact_parameters(stage)
    write_artifacts.__signature__ = inspect.Signature(parameters)
    write_artifacts.__annotations__ = {p.name: p.annotation for p in parameters}
    return Executor(executor_input, write_artifacts).execute()
