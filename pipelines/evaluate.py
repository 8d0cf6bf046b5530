"""Evaluate stage: the evaluation report of the trained encoder (and of a random one).

Inputs `model` and `examples`; outputs `evaluation` (type ModelEvaluation: the
report directory of `dim_tf.evaluate`, report.json and report.md with plots)
and, with `--baseline`, `baseline_evaluation`: the same for a randomly
initialised encoder of the same architecture, the yardstick of the push
stage's `--min_gain_over_random`. Run alone:

    python -m pipelines.run --only=evaluate --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import os

from dim_tf import EvalConfig, EvaluationResult, evaluate
from pipelines.ingest import examples_dataset
from pipelines.stage import Stage, StageContext
from pipelines.store import NewArtifact


def _summary(results: EvaluationResult) -> dict:
    """Top-1 accuracies as {"probe/layer": percent}, for the store and the blessing."""
    probes = results.probes
    if "skipped" in probes:
        return {}
    return {f"{kind}/{layer}": accuracy["top1"]
            for kind, layers in probes.items() for layer, accuracy in layers.items()}


def execute(context: StageContext) -> list[NewArtifact]:
    p = dict(context.parameters)
    with_baseline = p.pop("baseline")
    settings = dict(model_dir=context.inputs["model"].uri,
                    dataset=examples_dataset(context.inputs["examples"]), **p)
    outputs = []
    for name, random_init in (("evaluation", False), ("baseline_evaluation", True)):
        if random_init and not with_baseline:
            continue
        report_dir = os.path.join(context.output_dir, name)
        results = evaluate(EvalConfig(report_dir=report_dir, random_init=random_init, **settings),
                           progress=False)
        outputs.append(NewArtifact(name, "ModelEvaluation", report_dir, {
            "accuracy": _summary(results), "diagnostics": results.diagnostics,
            "probes_skipped": results.probes.get("skipped")}))
    return outputs


STAGE = Stage(name="evaluate",
              inputs={"model": ("train", "model"), "examples": ("ingest", "examples")},
              execute=execute, resumable=True)
