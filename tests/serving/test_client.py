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

from dim_tf.errors import DataError, ServingError
from dim_tf.models.encoders import build_encoder
from dim_tf.serving import client, standalone
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
    features, paths, _ = client.embed_folder(client.InProcessBackend(path), str(folder),
                                          batch_size=4, progress=False)
    assert len(paths) == 12 and features.shape == (12, 64)
    np.testing.assert_allclose(features, _direct(path, folder), atol=1e-5)
    conv, _, _ = client.embed_folder(client.InProcessBackend(path), str(folder), output="conv",
                                  progress=False)
    assert conv.shape == (12, 4 * 4 * 256)


def test_embedding_decodes_what_training_decodes_and_names_bad_files(exported, tmp_path):
    from PIL import Image

    path, _ = exported
    red = Image.new("RGB", (40, 40), (250, 10, 10))
    blue = Image.new("RGB", (40, 40), (10, 10, 250))
    # Animated WebP crashes tf.io.decode_image in TF 2.21; TIFF is not a TF format.
    red.save(tmp_path / "a.webp", save_all=True, append_images=[blue], lossless=True)
    red.save(tmp_path / "b.tiff")
    red.save(tmp_path / "c.png")
    features, paths, _ = client.embed_folder(client.InProcessBackend(path), str(tmp_path),
                                          batch_size=8, progress=False)
    assert [Path(p).name for p in paths] == ["a.webp", "b.tiff", "c.png"]
    np.testing.assert_allclose(features[0], features[2], atol=1e-4)  # first frame, same pixels
    np.testing.assert_allclose(features[1], features[2], atol=1e-4)

    # The files themselves to the encoded signature (TIFF and animated WebP re-encoded as
    # PNG first): the same codes.
    from_files, file_paths, _ = client.embed_folder(
        client.InProcessBackend(path, "embed_encoded"), str(tmp_path), batch_size=8,
        progress=False)
    assert file_paths == paths
    np.testing.assert_allclose(from_files, features, atol=1e-4)

    (tmp_path / "d.png").write_bytes(b"")
    with pytest.raises(DataError, match="d.png: zero bytes"):
        client.embed_folder(client.InProcessBackend(path), str(tmp_path), progress=False)
    # Skipped and returned instead, with a file whose header passes the listing but whose
    # data does not decode.
    (tmp_path / "e.png").write_bytes((tmp_path / "c.png").read_bytes()[:60])
    kept, kept_paths, bad = client.embed_folder(client.InProcessBackend(path), str(tmp_path),
                                                progress=False, skip_bad=True)
    assert [Path(p).name for p in kept_paths] == ["a.webp", "b.tiff", "c.png"]
    np.testing.assert_allclose(kept, features, atol=1e-5)
    assert sorted(Path(b.path).name for b in bad) == ["d.png", "e.png"]


def test_images_are_found_by_content_and_system_files_are_skipped(tmp_path):
    """The training data's rules: any name, checked by content; clutter never counts."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo_without_extension", "PNG")
    (tmp_path / "sub").mkdir()
    Image.new("L", (5, 5)).save(tmp_path / "sub" / "gray.jpg")
    for clutter in (".DS_Store", "._gray.jpg", "Thumbs.db", "desktop.ini", "photo.png~"):
        (tmp_path / clutter).write_bytes(b"\x00\x01 not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "notes.txt").write_text("not an image")
    found = [Path(p).relative_to(tmp_path).as_posix() for p in client.list_images(str(tmp_path))]
    assert found == ["photo_without_extension", "sub/gray.jpg"]

    (tmp_path / "notes.txt").write_text("not an image either")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        client.list_images(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images under"):
        client.list_images(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        client.list_images(str(tmp_path / "missing"))


def test_unreachable_server_and_missing_model_are_serving_errors(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = client.RestBackend(f"127.0.0.1:{port}", "dim", timeout=5)
    with pytest.raises(ServingError, match="Cannot reach TF Serving at http://127.0.0.1"):
        backend.predict(np.zeros((1, 32, 32, 3), np.uint8), "y")
    with pytest.raises(ServingError, match="No saved_model.pb"):
        client.InProcessBackend(str(tmp_path))


class _FakeRestServing(BaseHTTPRequestHandler):
    """TF Serving's REST predict, answered by `dim_tf.serving.standalone` (as TF Serving parses
    and answers it: {"b64": ...} strings, a single output's value without its name)."""

    loaded = None

    def do_POST(self):  # noqa: N802 (http.server API)
        assert self.path == "/v1/models/dim:predict"
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _, payload = standalone.serve(self.loaded, "rest", body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("signature", ["serving_default", "embed", "embed_encoded"])
def test_rest_client_against_loopback_server(exported, signature):
    path, folder = exported
    _FakeRestServing.loaded = tf.saved_model.load(path)
    server = HTTPServer(("127.0.0.1", 0), _FakeRestServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = client.RestBackend(f"127.0.0.1:{server.server_port}", "dim", signature)
        features, _, _ = client.embed_folder(backend, str(folder), batch_size=5, progress=False)
    finally:
        server.shutdown()
    np.testing.assert_allclose(features, _direct(path, folder), atol=1e-5)


class _GrpcServing:
    """A loopback PredictionService running the SavedModel, counting request sizes.

    `max_receive` None keeps gRPC's default 4 MB request limit; TF Serving itself
    raises it to 2 GB (model_servers/server.cc: SetMaxMessageSize(kint32max))."""

    def __init__(self, path, max_receive=None):
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        loaded = tf.saved_model.load(path)
        self.request_bytes = []

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(inner, request, context):  # noqa: N802,N805 (gRPC API)
                assert request.model_spec.name == "dim"
                self.request_bytes.append(request.ByteSize())
                _, response = standalone.serve(loaded, "grpc", request.SerializeToString())
                return predict_pb2.PredictResponse.FromString(response)

        options = [] if max_receive is None else [("grpc.max_receive_message_length", max_receive)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(None)


@pytest.mark.parametrize("signature", ["serving_default", "embed_encoded"])
def test_grpc_client_against_loopback_server(exported, signature):
    pytest.importorskip("grpc")
    path, folder = exported
    with _GrpcServing(path) as serving:
        features, _, _ = client.embed_folder(client.GrpcBackend(serving.address, "dim", signature),
                                          str(folder), batch_size=5, progress=False)
    np.testing.assert_allclose(features, _direct(path, folder), atol=1e-5)


def test_grpc_client_handles_messages_over_4mb(exported):
    """Requests over 4 MB are split (a server at gRPC's default limit accepts them),
    an image over 4 MB goes alone (TF Serving accepts it), and responses over 4 MB
    are received."""
    pytest.importorskip("grpc")
    path, _ = exported
    signature = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(0)
    large = rng.integers(0, 256, (6, 640, 640, 3), dtype=np.uint8)  # 7.4 MB
    many = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)  # conv answer: 4.9 MB
    huge = rng.integers(0, 256, (1, 1300, 1300, 3), dtype=np.uint8)  # 5.1 MB, one image

    with _GrpcServing(path) as serving:
        backend = client.GrpcBackend(serving.address, "dim")
        np.testing.assert_allclose(backend.predict(large, "y"),
                                   signature(images=large)["y"].numpy(), atol=1e-5)
        assert len(serving.request_bytes) > 1
        assert max(serving.request_bytes) < 4 * 1024 * 1024
        conv = backend.predict(many, "conv")
        assert conv.nbytes > 4 * 1024 * 1024
        np.testing.assert_allclose(conv, signature(images=many)["conv"].numpy(), atol=1e-5)
        with pytest.raises(ServingError, match="RESOURCE_EXHAUSTED to a request of 50700"):
            backend.predict(huge, "y")
    with _GrpcServing(path, max_receive=2**31 - 1) as serving:
        y = client.GrpcBackend(serving.address, "dim").predict(huge, "y")
    np.testing.assert_allclose(y, signature(images=huge)["y"].numpy(), atol=1e-5)


def test_request_chunks_count_encoded_files_by_their_length():
    files = np.array([b"x" * 30, b"y" * 30, b"z" * 80, b"w" * 10], dtype=object)
    chunks = client.request_chunks(files, max_bytes=64)
    assert [list(c) for c in chunks] == [[b"x" * 30, b"y" * 30], [b"z" * 80], [b"w" * 10]]


def test_request_chunks_stay_under_the_limit_and_keep_order():
    images = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)  # 48 bytes each
    chunks = client.request_chunks(images, max_bytes=100)
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), images)
    assert [len(c) for c in client.request_chunks(images, max_bytes=10)] == [1] * 10
    assert [c.shape for c in client.request_chunks(images[:0], max_bytes=100)] == [(0, 4, 4, 3)]


@pytest.mark.e2e
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
    assert bad.returncode == 2 and "exactly one of --saved_model" in bad.stderr

    import shutil

    shutil.copytree(folder, tmp_path / "with_bad")
    (tmp_path / "with_bad" / "notes.txt").write_text("not an image")
    skipped = subprocess.run(
        [sys.executable, "-m", "dim_tf.embed", f"--images={tmp_path / 'with_bad'}",
         f"--output={out}", f"--saved_model={path}", "--signature=embed_encoded", "--skip_bad"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "1 file(s) left out" in skipped.stdout and np.load(out).shape == (12, 64)
    listed = [json.loads(line) for line in open(f"{out}.bad_files.jsonl")]
    assert [Path(e["id"]).name for e in listed] == ["notes.txt"] and "not an image" in listed[0]["reason"]
