"""TF Serving warm-up records.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file of
serialized `tensorflow.serving.PredictionLog` protos, at most 1000) when it
loads a version, so the first real request does not pay for loading kernels
and allocating memory. The records are built with tensorflow-serving-api's
messages (the `serving` extra). Without that package they are encoded here in
protobuf wire format (field numbers from tensorflow_serving/apis/*.proto), to
the same bytes: the tests compare the two.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dim_tf.faults import kill_point

# PredictionLog.predict_log = 6; PredictLog.request = 1; PredictRequest.model_spec = 1,
# PredictRequest.inputs = 2 (map<string, TensorProto>: entry key = 1, value = 2);
# ModelSpec.name = 1, ModelSpec.signature_name = 3.
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC, _REQUEST_INPUTS = 1, 2
_SPEC_NAME, _SPEC_SIGNATURE = 1, 3
_MAP_KEY, _MAP_VALUE = 1, 2
MAX_RECORDS = 1000


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _encoded_request_log(inputs: dict[str, np.ndarray], model_name: str,
                         signature_name: str) -> bytes:
    """The fallback: a serialized PredictionLog holding one PredictRequest, by hand."""
    # proto3 leaves empty strings out (TF Serving fills in the model's name).
    spec = b"".join(_field(number, text.encode()) for number, text in
                    ((_SPEC_NAME, model_name), (_SPEC_SIGNATURE, signature_name)) if text)
    request = _field(_REQUEST_MODEL_SPEC, spec)
    for key, value in inputs.items():
        tensor = tf.make_tensor_proto(value).SerializeToString()
        request += _field(_REQUEST_INPUTS, _field(_MAP_KEY, key.encode()) + _field(_MAP_VALUE, tensor))
    return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def predict_request_log(inputs: dict[str, np.ndarray], model_name: str = "",
                        signature_name: str = "serving_default",
                        use_serving_api: bool = True) -> bytes:
    """A serialized PredictionLog holding one PredictRequest (tensorflow-serving-api's
    messages when installed and `use_serving_api`, else `_encoded_request_log`)."""
    try:
        if not use_serving_api:
            raise ImportError
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    except ImportError:
        return _encoded_request_log(inputs, model_name, signature_name)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString(deterministic=True)


def write_warmup_file(path: str, requests: list[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Writes `requests` ((signature name, inputs) pairs) as TF Serving warm-up records."""
    if len(requests) > MAX_RECORDS:
        raise ValueError(f"TF Serving reads at most {MAX_RECORDS} warm-up records; got {len(requests)}.")
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            writer.write(predict_request_log(inputs, signature_name=signature_name))
            kill_point("export.warmup_record")
