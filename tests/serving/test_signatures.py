"""The exported signatures as TF Serving clients use them: requests built by dim-tf's client
(REST with {"b64": ...}, gRPC PredictRequest) answered in a process that never imports
dim_tf (dim_tf/serving/standalone.py, run as a script), the response size of each
signature, bad bytes, warm-up records for every signature, and the encoder.keras file."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dim_tf.config import ENCODED, NORMALIZED, SIGNATURES
from dim_tf.data.preprocessing import decode_image, prepare_batch
from dim_tf.models.encoders import build_encoder
from dim_tf.serving.client import grpc_request, rest_request
from dim_tf.serving.export import KERAS_FILE, WARMUP_FILE, export_encoder
from dim_tf.serving.serving_benchmark import benchmark_serving, run_standalone
from dim_tf.serving.signatures import WARMUP_BATCH_SIZES, warmup_requests
from dim_tf.serving.warmup import predict_request_log

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH = 12  # the REST example: 12 small images


@pytest.fixture(scope="module")
def encoder():
    encoder = build_encoder("basic32x32", sync_batch_norm=False)
    rng = np.random.default_rng(0)
    for _ in range(3):  # non-trivial batch-norm statistics
        encoder(rng.uniform(-1, 0.5, (16, 32, 32, 3)).astype(np.float32), training=True)
    return encoder


def _encoded_files(rng) -> list[bytes]:
    """BATCH files of every accepted format, of different sizes, gray and RGB."""
    files = []
    formats = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
    for i in range(BATCH):
        height, width = 20 + 7 * i, 40 - i
        mode = "L" if i in (5, 6) else "RGB"  # a gray JPEG and a gray PNG
        pixels = rng.integers(0, 256, (height, width) + ((3,) if mode == "RGB" else ()),
                              dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, formats[i % len(formats)])
        files.append(buffer.getvalue())
    return files


def _batch_for(kind: str, rng, files: list[bytes]) -> np.ndarray:
    if kind == ENCODED:
        return np.array(files, dtype=object)
    pixels = rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    return pixels.astype(np.float32) / 127.5 - 1 if kind == NORMALIZED else pixels


def _expected(encoder, kind: str, batch: np.ndarray) -> dict:
    """The encoder's outputs by the training preprocessing, image by image."""
    if kind == NORMALIZED:
        prepared = tf.constant(batch)
    elif kind == ENCODED:
        prepared = tf.concat([prepare_batch(decode_image(f, 3)[tf.newaxis], 32, 3) for f in batch], 0)
    else:
        prepared = prepare_batch(tf.constant(batch), 32, 3)
    return {k: v.numpy() for k, v in encoder(prepared, training=False).items()}


@pytest.fixture(scope="module")
def served(encoder, tmp_path_factory):
    """Every signature called over REST and gRPC with the client's requests, answered
    in a process without dim_tf. Returns (version dir, batches, results)."""
    root = tmp_path_factory.mktemp("served")
    version = export_encoder(encoder, str(root / "model"))
    rng = np.random.default_rng(1)
    files = _encoded_files(rng)
    batches, requests = {}, []
    for name, spec in SIGNATURES.items():
        batches[name] = _batch_for(spec.input_kind, rng, files)
        requests.append({"case": f"{name}/rest", "protocol": "rest",
                         "body": json.dumps(rest_request(batches[name], name)).encode()})
        requests.append({"case": f"{name}/grpc", "protocol": "grpc",
                         "body": grpc_request(batches[name], "dim", name).SerializeToString()})
    requests.append({"case": "embed/grpc_filtered", "protocol": "grpc",
                     "body": grpc_request(batches["serving_default"], "dim", "serving_default",
                                          ["y"]).SerializeToString()})
    bad = {"not_an_image": np.array([files[0], b"hello, not an image"], dtype=object),
           "truncated_png": np.array([files[1][:40]], dtype=object),
           "matrix": np.array([[files[0]]], dtype=object)}
    for case, batch in bad.items():
        requests.append({"case": f"bad/{case}", "protocol": "grpc",
                         "body": grpc_request(batch, "dim", "embed_encoded").SerializeToString()})
    return version, batches, run_standalone("answer", version, requests)


def test_every_signature_answers_rest_and_grpc_requests_with_its_outputs(served, encoder):
    _, batches, results = served
    for name, spec in SIGNATURES.items():
        expected = _expected(encoder, spec.input_kind, batches[name])
        for protocol in ("rest", "grpc"):
            answer = results[f"{name}/{protocol}"]
            assert answer["error"] is None, (name, protocol, answer["error"])
            assert set(answer["outputs"]) == set(spec.outputs), (name, protocol)
            for output in spec.outputs:
                actual = answer["outputs"][output]
                assert actual.shape == expected[output].shape, (name, output)
                assert np.max(np.abs(actual - expected[output])) < 1e-4, (name, protocol, output)


def test_responses_carry_only_the_signatures_outputs(served):
    """The table of the issue, from the served responses: over REST every output of the
    signature travels, so `embed` answers 12 images in a few kB where serving_default
    sends megabytes; gRPC filters outputs either way."""
    _, _, results = served
    size = {case: r["response_bytes"] for case, r in results.items() if case != "warmup"}
    assert size["serving_default/rest"] > 1_000_000
    assert size["embed/rest"] < 20_000 and size["embed_encoded/rest"] < 20_000
    assert size["embed/rest"] * 50 < size["serving_default/rest"]
    assert size["probe_features/rest"] < size["serving_default/rest"] / 2
    assert size["embed/grpc"] == size["embed/grpc_filtered"] < 5_000
    # An encoded image travels as itself: 12 small files in a few kB, not nested lists.
    requests = {case: r["request_bytes"] for case, r in results.items() if case != "warmup"}
    encoded_payload = sum(len(f) for f in served[1]["embed_encoded"])
    assert requests["embed_encoded/rest"] < 1.4 * encoded_payload + 200
    assert requests["embed_encoded/grpc"] < encoded_payload + 200


def test_bad_bytes_fail_naming_what_was_expected(served):
    _, _, results = served
    expected = "image_bytes must hold JPEG, PNG, GIF, BMP or WebP files"
    assert expected in results["bad/not_an_image"]["error"]
    assert "a file of] [19] [bytes" in results["bad/not_an_image"]["error"]  # the bad one's length
    assert results["bad/truncated_png"]["error"]  # a known header, bad data: the decoder's word
    assert "image_bytes must be a string vector [batch]" in results["bad/matrix"]["error"]


def test_warmup_records_cover_every_signature_and_several_sizes(served, encoder):
    version, _, results = served
    assert set(results["warmup"]) == set(SIGNATURES)
    assert all(count >= 2 for count in results["warmup"].values())
    requests = warmup_requests(encoder)
    sizes = {tuple(next(iter(inputs.values())).shape) for name, inputs in requests
             if name == "embed"}
    assert sizes == {(n, 32, 32, 3) for n in WARMUP_BATCH_SIZES} | {(1, 128, 128, 3)}
    # tensorflow-serving-api's messages and the fallback encoding write the same bytes.
    for name, inputs in requests:
        assert predict_request_log(inputs, signature_name=name) == predict_request_log(
            inputs, signature_name=name, use_serving_api=False), name
    written = list(tf.data.TFRecordDataset(os.path.join(version, "assets.extra", WARMUP_FILE))
                   .as_numpy_iterator())
    assert written == [predict_request_log(inputs, signature_name=name) for name, inputs in requests]


def test_the_keras_file_loads_with_keras_and_matches_the_signature(served, encoder, tmp_path):
    version, batches, results = served
    path = os.path.join(version, KERAS_FILE)
    script = f"""
import sys, numpy as np, keras, tensorflow as tf
import dim_tf.models  # registers dim-tf's layers with Keras
encoder = keras.saving.load_model({path!r})
images = np.load({str(tmp_path / "images.npy")!r})
np.savez({str(tmp_path / "out.npz")!r}, **{{k: np.asarray(v) for k, v in encoder(images, training=False).items()}})
"""
    np.save(tmp_path / "images.npy", batches["encode_normalized"])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = dict(np.load(tmp_path / "out.npz"))
    served_outputs = results["encode_normalized/grpc"]["outputs"]
    for name in ("y", "fc", "conv", "local"):
        assert np.max(np.abs(loaded[name] - served_outputs[name])) < 1e-4, name


def _text_proto_fields(path: Path) -> list[tuple[str, str]]:
    """(field, value) pairs of a flat text-format file such as TF Serving's batching file."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            field, _, value = line.partition(" ")
            pairs.append((field.rstrip(":"), value.strip("{} ").removeprefix("value: ")))
    return pairs


def test_the_shipped_tf_serving_configs_parse_and_agree_with_the_export():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    configs = REPO_ROOT / "configs" / "serving"
    models = text_format.Parse((configs / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    for model in models.model_config_list.config:
        if model.version_labels:  # every label names a version the policy loads
            loaded = set(model.model_version_policy.specific.versions)
            assert set(model.version_labels) == {"stable", "canary"}
            assert set(model.version_labels.values()) <= loaded, model.name
    fields = _text_proto_fields(configs / "batching_parameters.txt")
    known = {"num_batch_threads", "max_batch_size", "batch_timeout_micros",
             "max_enqueued_batches", "allowed_batch_sizes", "pad_variable_length_inputs"}
    assert {field for field, _ in fields} <= known
    allowed = [int(value) for field, value in fields if field == "allowed_batch_sizes"]
    single = dict(fields)
    # TF Serving's rule: increasing, the last one max_batch_size.
    assert allowed == sorted(set(allowed)) and allowed[-1] == int(single["max_batch_size"])
    assert tuple(allowed) == WARMUP_BATCH_SIZES  # each padded size is warmed up
    assert single["pad_variable_length_inputs"] == "false"


@pytest.mark.e2e
def test_the_serving_benchmark_reports_every_figure(served):
    version = served[0]
    result = benchmark_serving(version, seconds=0.05, latency_calls=3)
    assert {(b["signature"], b["protocol"]) for b in result["bytes"]} >= {
        (name, protocol) for name in SIGNATURES for protocol in ("rest", "grpc")}
    photo = {b["protocol"] + b["signature"]: b["request_bytes"] for b in result["bytes"]
             if b["payload"].startswith("1 photo")}
    assert photo["restembed"] > 10_000_000 > 200_000 > photo["restembed_encoded"]
    assert set(result["latency_batch_1"]) == {"pixels", "jpeg"}
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in result["latency_batch_1"].values())
    cells = {(t["input"], t["batch"]) for t in result["throughput_images_per_second"]}
    assert cells == {(i, b) for i in ("pixels", "jpeg") for b in (1, 8, 64)}
    assert all(t["callers_16"] > 0 for t in result["throughput_images_per_second"])
