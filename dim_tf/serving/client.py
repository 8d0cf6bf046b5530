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

The images of a folder are found as training finds them
(`dim_tf.data.image_files`): every file under it is an image, told by its
content rather than its name, except operating-system and editor clutter
(hidden files and folders, Thumbs.db, backups~); a file that is no usable image
stops the embedding with its reason, before any request. To a signature on
pixels (`serving_default`, `embed`, ...) images are sent as uint8 [batch,
height, width, channels], consecutive images of the same size sharing a batch;
to one on encoded images (`embed_encoded`, ...) the files' bytes are sent as
they are (over REST as {"b64": ...}), any sizes in one batch, and the server
decodes them. Either way the signature converts channels, resizes and scales
inside the graph. The Beam engine (`dim_tf.serving.beam_embed`) lists, reads
and decodes images with the same functions.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import Iterator, Protocol, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from dim_tf.config import ENCODED, SERVING_SIGNATURE, SIGNATURES, SignatureSpec
from dim_tf.data import image_files
from dim_tf.errors import DataError, ServingError

# gRPC's default message limit (4 MiB) less room for the request's other fields.
MAX_REQUEST_BYTES = 4 * 1024 * 1024 - 64 * 1024


def signature_spec(signature: str) -> SignatureSpec:
    """What `signature` takes and returns; a signature dim-tf does not export (a
    renamed or custom one) is taken to be on pixels, like `serving_default`."""
    return SIGNATURES.get(signature, SIGNATURES[SERVING_SIGNATURE])


class Backend(Protocol):
    signature: str

    def predict(self, batch: np.ndarray, output: str) -> np.ndarray:
        """`output` for `batch`: uint8 pixels, or an object array of encoded files."""


class InProcessBackend:
    """Runs the exported SavedModel in this process."""

    def __init__(self, saved_model_dir: str, signature: str = SERVING_SIGNATURE):
        self._fn = load_signature(saved_model_dir, signature)
        self.signature = signature

    def predict(self, batch: np.ndarray, output: str) -> np.ndarray:
        inputs = {signature_spec(self.signature).input_name: tf.constant(batch)}
        return self._fn(**inputs)[output].numpy()


def rest_request(batch: np.ndarray, signature: str) -> dict:
    """TF Serving's REST predict body (columnar "inputs") for `batch`: pixels as nested
    lists, encoded files as {"b64": ...}."""
    if batch.dtype == object:
        values = [{"b64": base64.b64encode(item).decode("ascii")} for item in batch]
    else:
        values = batch.tolist()
    return {"signature_name": signature, "inputs": {signature_spec(signature).input_name: values}}


def grpc_request(batch: np.ndarray, model_name: str, signature: str, outputs: Sequence[str] = (),
                 version: int | None = None):
    """TF Serving's gRPC PredictRequest for `batch`, asking only for `outputs` (all when
    empty). Needs tensorflow-serving-api."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version:
        request.model_spec.version.value = version
    request.inputs[signature_spec(signature).input_name].CopyFrom(tf.make_tensor_proto(batch))
    request.output_filter.extend(outputs)
    return request


def check_saved_model(saved_model_dir: str, signature: str = SERVING_SIGNATURE,
                      outputs: Sequence[str] = ()) -> None:
    """Checks that `saved_model_dir` is a SavedModel version directory whose `signature`
    has the named `outputs`, from its saved_model.pb alone (no variables are loaded:
    cheap enough for a driver that only hands the path to its workers).

    Raises:
        ServingError: no saved_model.pb there, no such signature or output (the
            message names those there are).
    """
    path = os.path.join(saved_model_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        raise ServingError(f"No saved_model.pb in {saved_model_dir!r}: pass a version "
                           "directory such as saved_models/NAME/1.")
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    # "__saved_model_init_op" and the like are TensorFlow's, not callable signatures.
    signatures = {name: definition for meta_graph in saved_model.meta_graphs
                  for name, definition in meta_graph.signature_def.items()
                  if not name.startswith("__")}
    if signature not in signatures:
        raise ServingError(f"{saved_model_dir!r} has no signature {signature!r}; it has "
                           f"{', '.join(sorted(signatures))}.")
    missing = [name for name in outputs if name not in signatures[signature].outputs]
    if missing:
        raise ServingError(f"Signature {signature!r} of {saved_model_dir!r} has no output "
                           f"{', '.join(map(repr, missing))}; it has "
                           f"{', '.join(sorted(signatures[signature].outputs))}.")


def load_signature(saved_model_dir: str, signature: str = SERVING_SIGNATURE):
    """The function `signature` of the SavedModel in `saved_model_dir`, loaded with
    `tf.saved_model.load` (Keras 3's `load_model` cannot read a SavedModel).

    Raises:
        ServingError: see `check_saved_model`.
    """
    check_saved_model(saved_model_dir, signature)
    return tf.saved_model.load(saved_model_dir).signatures[signature]


class RestBackend:
    """TF Serving REST: http://HOST:PORT/v1/models/NAME[/versions/V]:predict."""

    def __init__(self, server: str, model_name: str, signature: str = SERVING_SIGNATURE,
                 version: int | None = None, timeout: float = 60.0):
        base = server if server.startswith("http") else f"http://{server}"
        path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
        self.url, self.signature, self.timeout = f"{base}{path}:predict", signature, timeout

    def predict(self, batch: np.ndarray, output: str) -> np.ndarray:
        body = json.dumps(rest_request(batch, self.signature)).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read()
        except urllib.error.HTTPError as error:
            raise ServingError(f"TF Serving at {self.url} answered {error.code}: "
                               f"{error.read().decode(errors='replace')[:500]}") from error
        except OSError as error:  # URLError (refused, unknown host) or a timeout
            raise ServingError(f"Cannot reach TF Serving at {self.url}: "
                               f"{getattr(error, 'reason', error)}. Check --server and that the "
                               "server runs with --rest_api_port.") from error
        try:
            outputs = json.loads(answer)["outputs"]
            return np.asarray(outputs[output] if isinstance(outputs, dict) else outputs, np.float32)
        except (ValueError, KeyError, TypeError) as error:
            raise ServingError(f"TF Serving at {self.url} sent no {output!r} output (expected "
                               f"JSON with \"outputs\"): {answer[:200]!r}") from error


class GrpcBackend:
    """TF Serving gRPC PredictionService at HOST:PORT (default port 8500)."""

    def __init__(self, server: str, model_name: str, signature: str = SERVING_SIGNATURE,
                 version: int | None = None, timeout: float = 60.0,
                 max_request_bytes: int = MAX_REQUEST_BYTES):
        try:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc
        except ImportError as error:
            raise ServingError("The gRPC client needs tensorflow-serving-api: "
                               "pip install 'dim-tf[serving]'.") from error
        self._grpc = grpc
        # -1: no client-side limit; responses (e.g. `local` maps) can exceed 4 MB.
        channel = grpc.insecure_channel(server, options=[("grpc.max_send_message_length", -1),
                                                         ("grpc.max_receive_message_length", -1)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.server, self.model_name, self.signature = server, model_name, signature
        self.version, self.timeout, self.max_request_bytes = version, timeout, max_request_bytes

    def predict(self, batch: np.ndarray, output: str) -> np.ndarray:
        return np.concatenate([self._predict(chunk, output)
                               for chunk in request_chunks(batch, self.max_request_bytes)])

    def _predict(self, batch: np.ndarray, output: str) -> np.ndarray:
        request = grpc_request(batch, self.model_name, self.signature, [output], self.version)
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise ServingError(f"TF Serving at {self.server} answered {error.code().name} to a "
                               f"request of {request.ByteSize()} bytes ({len(batch)} images): "
                               f"{error.details()}") from error
        return tf.make_ndarray(response.outputs[output])


def _item_bytes(item) -> int:
    return len(item) if isinstance(item, bytes) else item.nbytes


def request_chunks(batch: np.ndarray, max_bytes: int) -> list[np.ndarray]:
    """Splits a batch (pixels, or encoded files) into consecutive chunks of at most
    `max_bytes` of image data, at least one image each (an empty batch stays one
    empty chunk)."""
    chunks, start, size = [], 0, 0
    for i, item in enumerate(batch):
        if i > start and size + _item_bytes(item) > max_bytes:
            chunks.append(batch[start:i])
            start, size = i, 0
        size += _item_bytes(item)
    if len(batch) > start:
        chunks.append(batch[start:])
    return chunks or [batch]


def find_image_files(folder: str, skip_bad: bool = False) -> tuple[list[image_files.ImageFile],
                                                                    list[image_files.BadImage]]:
    """The images under `folder` (recursively, sorted by path), by training's rules, and
    the files there that are no usable image (only with `skip_bad`, else none).

    Raises:
        DataError: `folder` is missing or holds no usable image, or (without
            `skip_bad`) a file in it is no usable image (all such files are named,
            with their reasons).
    """
    if not os.path.isdir(folder):
        raise DataError(f"Image folder {folder!r} does not exist.")
    paths = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not image_files.is_system_file(name)]
        paths.extend(os.path.join(root, name) for name in names
                     if not image_files.is_system_file(name))
    # The training data's checks, from the headers: what each file is (sizes too, so
    # memory stays bounded), and which formats Pillow must decode (TensorFlow misreads
    # or crashes on them: animated WebP).
    checked = [image_files.probe(path, label=0) for path in sorted(paths)]
    images = [entry for entry in checked if isinstance(entry, image_files.ImageFile)]
    bad = [entry for entry in checked if isinstance(entry, image_files.BadImage)]
    if bad and not skip_bad:
        raise DataError(f"Cannot use {len(bad)} file(s) under {folder!r} (every file there but "
                        "hidden and system files must be an image):\n  "
                        + "\n  ".join(map(str, bad)))
    if not images:
        raise DataError(f"No images under {folder!r} (hidden and system files are skipped"
                        + (f"; {len(bad)} file(s) are no usable image)." if bad else ")."))
    return images, bad


def list_images(folder: str) -> list[str]:
    """The image files under `folder` (recursively), sorted; see the module docstring.

    Raises:
        DataError: `folder` is missing or empty, or holds a file that is no usable image.
    """
    return [image.path for image in find_image_files(folder)[0]]


# What reading and decoding an image file raises when its data is bad: TensorFlow's
# errors (a file removed since the listing too), Pillow's.
DECODE_ERRORS = (tf.errors.OpError, OSError, ValueError, SyntaxError)


def decode_pixels(encoded: bytes | tf.Tensor, channels: int) -> np.ndarray:
    """uint8 [height, width, channels]: the (first frame of the) encoded image, gray
    and RGB converted to `channels` by `tf.io.decode_image`.

    Raises:
        tf.errors.InvalidArgumentError: the bytes are no image TensorFlow decodes.
    """
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False).numpy()


def read_pixels(image: image_files.ImageFile, channels: int) -> np.ndarray:
    """`decode_pixels` of a listed image file; Pillow reads the formats TensorFlow
    misreads (`image.via_pillow`).

    Raises:
        One of DECODE_ERRORS: the file cannot be read or decoded (`undecodable_reason`).
    """
    path = image.path
    return decode_pixels(image_files.pillow_png(path) if image.via_pillow else tf.io.read_file(path),
                         channels)


def undecodable_reason(path: str | None, error: Exception) -> str:
    """Why `read_pixels` (`path`) or `decode_pixels` (no path) failed with `error`:
    Pillow's account of the file if it has one, else the error's message."""
    if path is not None and os.path.isfile(path):
        reason = image_files.decode_failure(path)
        if reason:
            return reason
    if isinstance(error, tf.errors.OpError):  # the message without TF's op decorations
        return error.message.split("}}")[-1].split("[Op:")[0].strip()
    return str(error)


def _pixel_batches(images: list[image_files.ImageFile], batch_size: int, channels: int,
                   bad: list[image_files.BadImage] | None
                   ) -> Iterator[tuple[np.ndarray, list[image_files.ImageFile]]]:
    """uint8 batches of consecutive same-size images, with their files. An image that
    does not decode stops the embedding, or with `bad` (a list) is appended to it."""
    batch: list[np.ndarray] = []
    files: list[image_files.ImageFile] = []
    for checked in images:
        try:
            image = read_pixels(checked, channels)
        except DECODE_ERRORS as error:
            reason = undecodable_reason(checked.path, error)
            if bad is None:
                raise DataError(f"Cannot decode image {checked.path!r}: {reason}") from error
            bad.append(image_files.BadImage(checked.path, reason))
            continue
        if batch and (image.shape != batch[0].shape or len(batch) == batch_size):
            yield np.stack(batch), files
            batch, files = [], []
        batch.append(image)
        files.append(checked)
    if batch:
        yield np.stack(batch), files


def encoded_bytes(image: image_files.ImageFile) -> bytes:
    """The file's bytes as a signature on encoded images takes them: as they are, or
    re-encoded as PNG for the formats TensorFlow misreads (`image.via_pillow`)."""
    if image.via_pillow:
        return image_files.pillow_png(image.path)
    with open(image.path, "rb") as f:
        return f.read()


def _encoded_batches(images: list[image_files.ImageFile], batch_size: int
                     ) -> Iterator[tuple[np.ndarray, list[image_files.ImageFile]]]:
    """Object arrays of up to `batch_size` encoded files, any sizes mixed, with their files."""
    for start in range(0, len(images), batch_size):
        files = images[start:start + batch_size]
        yield np.array([encoded_bytes(image) for image in files], dtype=object), files


BAD_FILES_SUFFIX = ".bad_files.jsonl"


def write_bad_files(bad: list[tuple[str, str]], path: str) -> None:
    """Writes (id, reason) pairs as JSON lines, sorted by id (nothing when there are none)."""
    if bad:
        with tf.io.gfile.GFile(path, "w") as f:
            f.write("".join(json.dumps({"id": image_id, "reason": reason}) + "\n"
                            for image_id, reason in sorted(bad)))


def embed_folder(
    backend: Backend, folder: str, batch_size: int = 64, output: str = "y",
    channels: int = 3, progress: bool = True, skip_bad: bool = False,
) -> tuple[np.ndarray, list[str], list[image_files.BadImage]]:
    """Embeds every image under `folder`: ([N, D] float32 features, the N file paths,
    the files left out).

    Feature maps (`conv`, `local`) are flattened per image. Without `skip_bad` a file
    that is no usable image stops the embedding (none are left out); with it, such
    files are left out and returned.

    Raises:
        DataError: `folder` is missing or holds no usable image, or (without
            `skip_bad`) a file in it is no usable image (see the module docstring).
        ServingError: the backend could not answer.
    """
    import keras

    images, bad = find_image_files(folder, skip_bad)
    bar = keras.utils.Progbar(len(images), unit_name="image") if progress else None
    features, paths = [], []
    encoded = signature_spec(backend.signature).input_kind == ENCODED
    batches = (_encoded_batches(images, batch_size) if encoded
               else _pixel_batches(images, batch_size, channels, bad if skip_bad else None))
    for batch, files in batches:
        values = np.asarray(backend.predict(batch, output), np.float32)
        features.append(values.reshape(len(batch), -1))
        paths += [image.path for image in files]
        if bar:
            bar.add(len(batch))
    if not features:
        raise DataError(f"None of the images under {folder!r} could be decoded; "
                        f"{len(bad)} file(s) left out.")
    return np.concatenate(features), paths, bad
