"""The metadata store: transactions, cached executions, lineage, integrity (no TensorFlow)."""

import pytest

from pipelines.store import Artifact, MetadataStore, NewArtifact


@pytest.fixture
def store(tmp_path):
    with MetadataStore(str(tmp_path / "metadata.sqlite")) as store:
        store.begin_pipeline_run("run-1", "test")
        yield store


def _complete(store, stage, key, inputs, outputs, tmp_path):
    execution = store.start_execution("run-1", stage, key, key[:4], {"p": 1}, "v1", inputs)
    new = []
    for name in outputs:
        (tmp_path / f"{stage}-{name}").mkdir()
        new.append(NewArtifact(name, name.title(), str(tmp_path / f"{stage}-{name}"), {"n": 1}))
    return execution, store.complete_execution(execution, new, {n: f"{key}/{n}" for n in outputs})


def test_outputs_and_completion_are_recorded_together(store, tmp_path):
    execution, [examples] = _complete(store, "ingest", "k1", {}, ["examples"], tmp_path)
    assert store.execution(execution).status == "complete"
    assert examples.fingerprint == "k1/examples" and examples.exists()
    assert store.latest_complete("ingest", "k1").id == execution
    assert store.latest_complete("ingest", "other") is None
    assert store.integrity_check() == "ok"


def test_a_write_interrupted_midway_leaves_no_trace(store, tmp_path):
    execution = store.start_execution("run-1", "train", "k2", "k2", {}, "v1", {})
    (tmp_path / "model").mkdir()
    with pytest.raises(KeyError):  # no fingerprint for the second output: fails mid-transaction
        store.complete_execution(execution, [NewArtifact("model", "Model", str(tmp_path / "model")),
                                             NewArtifact("logs", "Logs", str(tmp_path))],
                                 {"model": "k2/model"})
    assert store.execution(execution).status == "running"
    assert store.outputs(execution) == []
    assert store.integrity_check() == "ok"
    assert store.abandon_running("train", "k2") == [execution]
    assert store.execution(execution).status == "failed"
    assert "ended before the stage finished" in store.execution(execution).error


def test_cached_executions_reuse_outputs_and_lineage_walks_inputs(store, tmp_path):
    ingest, [examples] = _complete(store, "ingest", "k1", {}, ["examples"], tmp_path)
    train, [model] = _complete(store, "train", "k2", {"examples": examples}, ["model"], tmp_path)
    cached = store.record_cached("run-1", "train", store.execution(train), {"p": 1}, "v2",
                                 {"examples": examples})
    assert cached.status == "cached" and cached.cached_from == train
    assert [a.id for a in store.outputs(cached.id)] == [model.id]
    assert [a.id for a in store.inputs(cached.id)] == [examples.id]
    walk = [(depth, artifact.name, producer.stage) for depth, artifact, producer in store.lineage(model.id)]
    assert walk == [(0, "model", "train"), (1, "examples", "ingest")]
    assert isinstance(store.artifact(model.id), Artifact)
    assert store.integrity_check() == "ok"


def test_the_store_survives_reopening(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    with MetadataStore(path) as store:
        store.begin_pipeline_run("run-1", "test")
        execution = store.start_execution("run-1", "ingest", "k", "k", {"a": [1, 2]}, "v1", {})
    with MetadataStore(path) as store:
        assert store.execution(execution).parameters == {"a": [1, 2]}
        assert [r["id"] for r in store.pipeline_runs()] == ["run-1"]
