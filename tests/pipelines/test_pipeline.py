"""The pipeline end to end on a tiny image tree: artifacts, caching, reruns, blessing, failures."""

import json
import os

import pytest

from dim_tf import read_embeddings
from tests.pipelines.conftest import parameters, pipeline_flags, run_cli, versions

# End to end: subprocesses of the command lines (pytest.ini).
pytestmark = pytest.mark.e2e

STAGES = ("ingest", "train", "evaluate", "push", "embed")


def _run(image_tree, root, *extra, **kwargs):
    from pipelines.pipeline import run_pipeline

    return run_pipeline(str(root), parameters(image_tree, root, *extra), **kwargs)


def _statuses(root):
    from pipelines.pipeline import open_store

    with open_store(str(root)) as store:
        assert store.integrity_check() == "ok"
        return [(e.stage, e.status) for e in store.executions()]


def test_full_run_then_cache_hits_then_a_training_change_reruns_downstream_only(image_tree, tmp_path):
    root = tmp_path / "root"
    first = _run(image_tree, root)
    assert not any(r.cached for r in first.values())

    examples = first["ingest"].outputs["examples"].uri
    assert examples.startswith(str(root / "ingest" / first["ingest"].execution.run_id))
    schema = json.load(open(os.path.join(examples, "schema.json")))
    assert schema["splits"]["train"]["num_examples"] == 24
    assert schema["label_names"] == ["class_0", "class_1"]
    statistics = json.load(open(os.path.join(examples, "statistics.json")))
    assert statistics["test"]["examples_per_label"] == {"class_0": 6, "class_1": 6}
    assert statistics["train"]["height"]["min"] == statistics["train"]["height"]["max"] == 32
    assert statistics["train"]["corrupt_files"] == []

    model = first["train"].outputs["model"]
    assert model.properties["steps"] == 3
    assert json.load(open(os.path.join(model.uri, "config.json")))["dataset"] == f"tfrecord:{examples}"
    report = json.load(open(os.path.join(first["evaluate"].outputs["evaluation"].uri, "report.json")))
    assert set(report["probes"]["linear"]) == {"conv", "y"}
    pushed = first["push"].outputs["pushed_model"].uri
    assert pushed == str(root / "saved_models" / "tiny" / "1")
    assert os.path.exists(os.path.join(pushed, "saved_model.pb"))
    assert os.path.exists(os.path.join(pushed, "assets.extra", "evaluation_report.json"))

    second = _run(image_tree, root)
    assert all(second[s].cached for s in STAGES)
    assert {s: r.outputs["model"].uri for s, r in second.items() if "model" in r.outputs} == {
        "train": model.uri}
    assert versions(root / "saved_models" / "tiny") == ["1"]

    third = _run(image_tree, root, "--learning_rate=3e-4")
    assert [s for s in STAGES if third[s].cached] == ["ingest"]
    assert third["train"].outputs["model"].uri != model.uri
    assert third["push"].outputs["pushed_model"].uri.endswith(os.path.join("tiny", "2"))

    statuses = _statuses(root)
    assert statuses.count(("ingest", "complete")) == 1
    assert statuses.count(("train", "complete")) == 2
    assert statuses.count(("push", "cached")) == 1

    listing = run_cli("pipelines.lineage", f"--pipeline_root={root}").stdout
    assert listing.count("pipeline run ") == 3 and "cached from" in listing
    blessing_id = third["push"].outputs["blessing"].id
    lineage = run_cli("pipelines.lineage", f"--pipeline_root={root}", f"--artifact={blessing_id}").stdout
    for stage in STAGES[:STAGES.index("push") + 1]:  # push's lineage
        assert f" {stage} (complete" in lineage


def test_push_refuses_an_unblessed_model_and_pushes_a_blessed_one(image_tree, tmp_path):
    root = tmp_path / "root"
    destination = root / "saved_models" / "tiny"
    refused = _run(image_tree, root, "--min_accuracy=101")
    blessing = refused["push"].outputs["blessing"]
    assert "pushed_model" not in refused["push"].outputs
    assert not blessing.properties["blessed"]
    assert "below --min_accuracy=101" in blessing.properties["reasons"][0]
    assert json.load(open(blessing.uri))["blessed"] is False
    assert not destination.exists() or not versions(destination)

    missing_metric = _run(image_tree, root, "--blessing_metric=knn/fc")
    assert "has no 'knn/fc' accuracy" in missing_metric["push"].outputs["blessing"].properties["reasons"][0]

    random = refused["evaluate"].outputs["baseline_evaluation"].properties["accuracy"]["linear/conv"]
    trained = refused["evaluate"].outputs["evaluation"].properties["accuracy"]["linear/conv"]
    impossible_gain = trained - random + 1
    not_better = _run(image_tree, root, f"--min_gain_over_random={impossible_gain}")
    assert "above the random encoder" in not_better["push"].outputs["blessing"].properties["reasons"][0]

    blessed = _run(image_tree, root, "--min_accuracy=0", f"--min_gain_over_random={impossible_gain - 2}")
    assert [s for s in STAGES if not blessed[s].cached] == ["push", "embed"]
    assert blessed["push"].outputs["blessing"].properties["blessed"]
    assert versions(destination) == ["1"]


def test_a_failing_stage_leaves_the_store_consistent_and_the_next_run_resumes(
        image_tree, tmp_path, monkeypatch):
    import dataclasses

    from pipelines import pipeline

    root = tmp_path / "root"
    original = {s.name: s for s in pipeline.STAGES}

    def broken_evaluate(context):
        os.makedirs(os.path.join(context.output_dir, "evaluation"))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "STAGES", tuple(
        dataclasses.replace(s, execute=broken_evaluate) if s.name == "evaluate" else s
        for s in pipeline.STAGES))
    with pytest.raises(RuntimeError, match="disk on fire"):
        _run(image_tree, root)
    assert _statuses(root) == [("ingest", "complete"), ("train", "complete"),
                               ("evaluate", "failed")]

    monkeypatch.setattr(pipeline, "STAGES", tuple(original.values()))
    resumed = _run(image_tree, root)
    assert [s for s in STAGES if resumed[s].cached] == ["ingest", "train"]
    assert _statuses(root)[-3:] == [("evaluate", "complete"), ("push", "complete"),
                                    ("embed", "complete")]


def test_the_command_lists_its_flags_and_refuses_an_unknown_stage():
    usage = run_cli("pipelines.run", "--help", check=False).stdout
    for flag in ("--pipeline_root", "--only", "--force", "--blessing_metric", "--encoder",
                 "--eval_probes"):
        assert f"  {flag}:" in usage, flag
    assert "Weight of the local MI objective." in usage  # help text from TrainConfig
    bogus = run_cli("pipelines.run", "--only=bogus", "--pipeline_root=unused", check=False)
    assert bogus.returncode == 2
    assert "ingest|train|evaluate|push" in bogus.stderr
    assert run_cli("pipelines.run", check=False).returncode == 2  # no --pipeline_root


def test_each_stage_runs_alone_from_the_command_line(image_tree, tmp_path):
    """With the ingest and the embedding on Beam (DirectRunner)."""
    root = tmp_path / "root"
    flags = pipeline_flags(image_tree, root, "--ingest_runner=beam", "--embed_splits=test",
                           "--embed_features=y,fc",
                           "--beam_pipeline_args=--direct_running_mode=in_memory")
    early = run_cli("pipelines.run", "--only=train", *flags, check=False)
    assert early.returncode == 2
    assert "python -m pipelines.run --only=ingest" in early.stderr
    for bad, message in (("--encoder=nope", "--encoder='nope' is not valid"),
                         ("--blessing_metric=knn/fc", "--blessing_metric=knn/fc: not evaluated"),
                         ("--force=trian", "--force=trian: not a stage"),
                         ("--embed_splits=validation", "validation not ingested"),
                         ("--beam_pipeline_args=--runer=x", "Beam does not know these pipeline "
                          "options: --runer")):
        refused = run_cli("pipelines.run", *flags, bad, check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr[-1000:]
    assert not os.path.exists(root / "ingest")

    outputs = {stage: run_cli("pipelines.run", f"--only={stage}", *flags).stdout for stage in STAGES}
    for stage, output in outputs.items():
        assert f"{stage}: execution" in output and "cached" not in output
    assert "blessed: yes" in outputs["push"]
    again = run_cli("pipelines.run", "--only=evaluate", *flags).stdout
    assert "cached" in again
    assert [s for s, status in _statuses(root)] == [*STAGES, "evaluate"]
    whole = run_cli("pipelines.run", *flags).stdout
    assert whole.count("cached (execution") == 5

    from pipelines.pipeline import open_store

    with open_store(str(root)) as store:
        [examples] = store.outputs(store.executions("ingest")[0].id)
        [embeddings] = store.outputs(store.executions("embed")[0].id)
    assert examples.properties["runner"] == "beam"
    assert examples.properties["counters"]["examples_written"] == 36
    assert embeddings.properties["splits"]["test"]["images_embedded"] == 12
    ids, features = read_embeddings(os.path.join(embeddings.uri, "test"))
    assert len(ids) == 12 and ids[0].startswith(os.path.join(image_tree, "test"))
    assert features["y"].shape == (12, 8) and features["fc"].shape[0] == 12
