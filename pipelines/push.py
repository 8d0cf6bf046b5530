"""Push stage: export the encoder to a model base path, only if its evaluation is blessed.

Inputs `model`, `evaluation` and (optional) `baseline_evaluation`. The
blessing (`--blessing_metric` at least `--min_accuracy` percent and, if set,
at least `--min_gain_over_random` points above the random encoder) is written
to blessing.json (output `blessing`, type ModelBlessing) either way, with the
reasons. A blessed model is exported as the next numeric version of
`--push_destination` (default saved_models/PIPELINE_NAME), with its
evaluation report and blessing in assets.extra: output `pushed_model` (type
PushedModel). An unblessed one pushes nothing. A push killed after its export
reuses that version when it runs again. Run alone:

    python -m pipelines.run --only=push --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import json
import os

from dim_tf import ExportConfig, atomic_write_json, export_run
from pipelines.stage import Stage, StageContext
from pipelines.store import Artifact, NewArtifact


def bless(parameters: dict, evaluation: Artifact, baseline: Artifact | None) -> dict:
    """{"blessed": bool, "reasons": [...], "metric": ..., "value": ..., "baseline": ...}."""
    metric = parameters["blessing_metric"]
    accuracy = evaluation.properties.get("accuracy", {})
    verdict = {"metric": metric, "value": accuracy.get(metric), "baseline": None,
               "min_accuracy": parameters["min_accuracy"],
               "min_gain_over_random": parameters["min_gain_over_random"], "reasons": []}
    reasons = verdict["reasons"]
    if verdict["value"] is None:
        available = ", ".join(sorted(accuracy)) or "none (the probes were skipped: " \
            f"{evaluation.properties.get('probes_skipped')})"
        reasons.append(f"the evaluation has no {metric!r} accuracy; it has: {available}")
    else:
        if verdict["value"] < parameters["min_accuracy"]:
            reasons.append(f"{metric} accuracy {verdict['value']:.2f}% is below --min_accuracy="
                           f"{parameters['min_accuracy']}")
        gain = parameters["min_gain_over_random"]
        if gain is not None:
            if baseline is None:
                reasons.append("--min_gain_over_random needs the baseline evaluation "
                               "(--baseline=true)")
            else:
                verdict["baseline"] = baseline.properties.get("accuracy", {}).get(metric)
                if verdict["baseline"] is None or verdict["value"] - verdict["baseline"] < gain:
                    reasons.append(f"{metric} accuracy {verdict['value']:.2f}% is not "
                                   f"{gain} points above the random encoder's "
                                   f"{verdict['baseline']}%")
    verdict["blessed"] = not reasons
    return verdict


def _push(context: StageContext, verdict: dict) -> str:
    """Exports the blessed model once: a rerun after a kill between the export and the
    store's record finds the version in pushed.json instead of exporting another."""
    record = os.path.join(context.output_dir, "pushed.json")
    if os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            version_dir = json.load(f)["version_dir"]
        if os.path.exists(os.path.join(version_dir, "saved_model.pb")):
            return version_dir
    evaluation = context.inputs["evaluation"]
    assets = {"blessing.json": json.dumps(verdict, indent=2, sort_keys=True)}
    for name in ("report.json", "report.md"):
        path = os.path.join(evaluation.uri, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                assets[f"evaluation_{name}"] = f.read()
    version_dir = export_run(ExportConfig(model_dir=context.inputs["model"].uri,
                                          export_dir=context.parameters["destination"]),
                             extra_assets=assets)
    atomic_write_json(record, {"version_dir": version_dir})
    return version_dir


def execute(context: StageContext) -> list[NewArtifact]:
    verdict = bless(context.parameters, context.inputs["evaluation"],
                    context.inputs.get("baseline_evaluation"))
    pushed = []
    if verdict["blessed"]:
        version_dir = _push(context, verdict)
        pushed.append(NewArtifact("pushed_model", "PushedModel", version_dir,
                                  {"version": int(os.path.basename(version_dir))}))
    verdict["pushed_to"] = pushed[0].uri if pushed else None
    blessing_path = os.path.join(context.output_dir, "blessing.json")
    atomic_write_json(blessing_path, verdict)
    return [NewArtifact("blessing", "ModelBlessing", blessing_path, verdict), *pushed]


STAGE = Stage(name="push",
              inputs={"model": ("train", "model"), "evaluation": ("evaluate", "evaluation"),
                      "baseline_evaluation": ("evaluate", "baseline_evaluation")},
              optional_inputs=("baseline_evaluation",), execute=execute, resumable=True)
