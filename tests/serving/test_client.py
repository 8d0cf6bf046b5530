"""The embedding client: in-process, and REST / gRPC against loopback stand-ins for
TF Serving that run the same SavedModel (no TF Serving binary is available here)."""

import json
import subprocess
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.models.encoders import build_encoder
from dim_tf.serving import client
from dim_tf.serving.export import export_encoder
from tests.training.synthetic import write_image_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    path = export_encoder(build_encoder("basic32x32", sync_batch_norm=False), str(root / "model"))
    write_image_folder(root / "images", {"train": 9, "test": 3})
    return path, root / "images"


def _direct(path, folder, feature="y"):
    fn = tf.saved_model.load(path).signatures["serving_default"]
    rows = []
    for image_path in client.list_images(str(folder)):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3)[tf.newaxis]
        rows.append(fn(images=image)[feature].numpy().reshape(-1))
    return np.stack(rows)


def test_in_process_embedding_matches_direct_calls(exported):
    path, folder = exported
    features, paths = client.embed_folder(client.InProcessBackend(path), str(folder),
                                          batch_size=4, progress=False)
    assert len(paths) == 12 and features.shape == (12, 64)
    np.testing.assert_allclose(features, _direct(path, folder), atol=1e-5)
    conv, _ = client.embed_folder(client.InProcessBackend(path), str(folder), output="conv",
                                  progress=False)
    assert conv.shape == (12, 4 * 4 * 256)


class _FakeRestServing(BaseHTTPRequestHandler):
    signature = None

    def do_POST(self):  # noqa: N802 (http.server API)
        assert self.path == "/v1/models/dim:predict"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        images = tf.constant(np.asarray(body["inputs"]["images"], np.uint8))
        outputs = {k: v.numpy().tolist() for k, v in self.signature(images=images).items()}
        payload = json.dumps({"outputs": outputs}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_rest_client_against_loopback_server(exported):
    path, folder = exported
    _FakeRestServing.signature = tf.saved_model.load(path).signatures["serving_default"]
    server = HTTPServer(("127.0.0.1", 0), _FakeRestServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = client.RestBackend(f"127.0.0.1:{server.server_port}", "dim")
        features, _ = client.embed_folder(backend, str(folder), batch_size=5, progress=False)
    finally:
        server.shutdown()
    np.testing.assert_allclose(features, _direct(path, folder), atol=1e-5)


def test_grpc_client_against_loopback_server(exported):
    grpc = pytest.importorskip("grpc")
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    path, folder = exported
    signature = tf.saved_model.load(path).signatures["serving_default"]

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC API)
            assert request.model_spec.name == "dim"
            images = tf.constant(tf.make_ndarray(request.inputs["images"]))
            outputs = signature(images=images)
            response = predict_pb2.PredictResponse()
            for key in request.output_filter:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        features, _ = client.embed_folder(client.GrpcBackend(f"127.0.0.1:{port}", "dim"),
                                          str(folder), batch_size=5, progress=False)
    finally:
        server.stop(None)
    np.testing.assert_allclose(features, _direct(path, folder), atol=1e-5)


def test_embed_command_writes_npy_and_file_list(exported, tmp_path):
    path, folder = exported
    out = tmp_path / "emb.npy"
    result = subprocess.run(
        [sys.executable, "-m", "dim_tf.embed", f"--images={folder}", f"--output={out}",
         f"--saved_model={path}", "--batch_size=4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.load(out).shape == (12, 64)
    assert len((tmp_path / "emb.npy.files.txt").read_text().split()) == 12
    bad = subprocess.run([sys.executable, "-m", "dim_tf.embed", f"--images={folder}",
                          f"--output={out}"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "exactly one of --saved_model" in bad.stderr
