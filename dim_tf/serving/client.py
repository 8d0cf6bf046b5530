"""Embedding a folder of images with an exported encoder: TF Serving or in-process.

Three backends share one batching loop:

- `RestBackend`: TF Serving's REST API (POST /v1/models/NAME:predict, columnar
  "inputs" format), standard library only;
- `GrpcBackend`: TF Serving's gRPC PredictionService (needs the `serving` extra:
  tensorflow-serving-api), asking only for the wanted output. gRPC limits a
  message to 4 MB unless both ends raise the limit: TF Serving accepts up to
  2 GB, this client lifts its own limits, and a batch is split into requests
  under 4 MB (`max_request_bytes`) so proxies and servers left at the default
  accept them too; an image bigger than that goes alone;
- `InProcessBackend`: the SavedModel loaded with `tf.saved_model.load`.

Images are sent as uint8 [batch, height, width, channels]; the exported
signature converts channels, resizes and scales them inside the graph.
Consecutive images of the same size share a batch.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Iterator, Protocol

import numpy as np
import tensorflow as tf

from dim_tf.data import image_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# gRPC's default message limit (4 MiB) less room for the request's other fields.
MAX_REQUEST_BYTES = 4 * 1024 * 1024 - 64 * 1024


class Backend(Protocol):
    def predict(self, images: np.ndarray, output: str) -> np.ndarray: ...


class InProcessBackend:
    """Runs the exported SavedModel in this process."""

    def __init__(self, saved_model_dir: str, signature: str = "serving_default"):
        if not os.path.exists(os.path.join(saved_model_dir, "saved_model.pb")):
            raise FileNotFoundError(f"No saved_model.pb in {saved_model_dir!r}: pass a version "
                                    "directory such as saved_models/NAME/1.")
        self._fn = tf.saved_model.load(saved_model_dir).signatures[signature]

    def predict(self, images, output):
        return self._fn(images=tf.constant(images))[output].numpy()


class RestBackend:
    """TF Serving REST: http://HOST:PORT/v1/models/NAME[/versions/V]:predict."""

    def __init__(self, server: str, model_name: str, signature: str = "serving_default",
                 version: int | None = None, timeout: float = 60.0):
        base = server if server.startswith("http") else f"http://{server}"
        path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
        self.url, self.signature, self.timeout = f"{base}{path}:predict", signature, timeout

    def predict(self, images, output):
        body = json.dumps({"signature_name": self.signature,
                           "inputs": {"images": images.tolist()}}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"TF Serving at {self.url} answered {error.code}: "
                               f"{error.read().decode(errors='replace')[:500]}") from error
        outputs = answer["outputs"]
        return np.asarray(outputs[output] if isinstance(outputs, dict) else outputs, np.float32)


class GrpcBackend:
    """TF Serving gRPC PredictionService at HOST:PORT (default port 8500)."""

    def __init__(self, server: str, model_name: str, signature: str = "serving_default",
                 version: int | None = None, timeout: float = 60.0,
                 max_request_bytes: int = MAX_REQUEST_BYTES):
        try:
            import grpc
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        except ImportError as error:
            raise ImportError("The gRPC client needs tensorflow-serving-api: "
                              "pip install 'dim-tf[serving]'.") from error
        self._grpc, self._predict_pb2 = grpc, predict_pb2
        # -1: no client-side limit; responses (e.g. `local` maps) can exceed 4 MB.
        channel = grpc.insecure_channel(server, options=[("grpc.max_send_message_length", -1),
                                                         ("grpc.max_receive_message_length", -1)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.server, self.model_name, self.signature = server, model_name, signature
        self.version, self.timeout, self.max_request_bytes = version, timeout, max_request_bytes

    def predict(self, images, output):
        return np.concatenate([self._predict(chunk, output)
                               for chunk in request_chunks(images, self.max_request_bytes)])

    def _predict(self, images, output):
        request = self._predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature
        if self.version:
            request.model_spec.version.value = self.version
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        request.output_filter.append(output)
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise RuntimeError(f"TF Serving at {self.server} answered {error.code().name} to a "
                               f"request of {request.ByteSize()} bytes ({len(images)} images "
                               f"{list(images.shape[1:])}): {error.details()}") from error
        return tf.make_ndarray(response.outputs[output])


def request_chunks(images: np.ndarray, max_bytes: int) -> list[np.ndarray]:
    """Splits a batch into consecutive chunks of at most `max_bytes` of pixels, at
    least one image each (an empty batch stays one empty chunk)."""
    per_image = max(1, images[0].nbytes if len(images) else 1)
    step = max(1, max_bytes // per_image)
    return [images[i:i + step] for i in range(0, len(images), step)] or [images]


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursively), sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist.")
    found = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}.")
    return found


def _batches(paths: list[str], batch_size: int, channels: int) -> Iterator[np.ndarray]:
    """uint8 batches of consecutive same-size images."""
    batch: list[np.ndarray] = []
    for path in paths:
        # The training data's checks: sizes from the header (memory stays bounded), and
        # formats TensorFlow misreads or crashes on (animated WebP) decoded by Pillow.
        checked = image_files.probe(path, label=0)
        if isinstance(checked, image_files.BadImage):
            raise ValueError(f"Cannot use image {checked}")
        encoded = image_files.pillow_png(path) if checked.via_pillow else tf.io.read_file(path)
        try:
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False).numpy()
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"Cannot decode image {path!r}: {image_files.decode_failure(path) or error.message}") from error
        if batch and (image.shape != batch[0].shape or len(batch) == batch_size):
            yield np.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield np.stack(batch)


def embed_folder(
    backend: Backend, folder: str, batch_size: int = 64, output: str = "y",
    channels: int = 3, progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Embeds every image under `folder`: ([N, D] float32 features, file paths).

    Feature maps (`conv`, `local`) are flattened per image.
    """
    import keras

    paths = list_images(folder)
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    features = []
    for batch in _batches(paths, batch_size, channels):
        values = np.asarray(backend.predict(batch, output), np.float32)
        features.append(values.reshape(len(batch), -1))
        if bar:
            bar.add(len(batch))
    return np.concatenate(features), paths
