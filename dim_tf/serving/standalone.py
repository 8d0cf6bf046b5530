"""TF Serving's side of a request, for an exported encoder, in a process without dim_tf.

    python PATH/TO/dim_tf/serving/standalone.py answer SAVED_MODEL REQUESTS.pkl RESULTS.pkl
    python PATH/TO/dim_tf/serving/standalone.py measure SAVED_MODEL PLAN.pkl RESULTS.pkl

Run as a script (never imported by dim_tf), it loads the SavedModel with
`tf.saved_model.load` and imports only TensorFlow, NumPy and
tensorflow-serving-api, so what it measures and answers is what TF Serving
gets: the exported graph, none of dim-tf's model code. The tests check that
no dim_tf module is loaded.

Requests are {"case", "protocol": "rest" | "grpc", "body": bytes}: a REST body is
the JSON of POST /v1/models/NAME:predict (columnar "inputs", {"b64": ...} for
binary strings), a gRPC body a serialized PredictRequest. Each is parsed as TF
Serving parses it, run through its signature and answered as TF Serving
answers: REST with every output of the signature, gRPC with those of its
output_filter (all when empty).

- `answer`: RESULTS maps each case to {"outputs", "request_bytes",
  "response_bytes", "error"}, and "warmup" to {signature: records replayed}
  (the warm-up file parsed with tensorflow-serving-api's protos, every record
  run).
- `measure`: PLAN is {"latency": [request], "throughput": [request],
  "batch_sizes", "callers", "latency_calls", "seconds"}; a latency request is
  answered `latency_calls` times in a row (p50, p99), and each throughput request
  (one per batch size, in that order) by 1, 4, 16... concurrent callers for
  `seconds` (images/s). Times cover parsing, the signature and the response's
  serialization: the server's work, without the network.
"""

import base64
import json
import os
import pickle
import sys
import threading
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2


def _feeds(signature, protocol: str, body: bytes) -> tuple[dict, list | None]:
    """The signature's input tensors from a request body, and the outputs asked for."""
    if protocol == "grpc":
        request = predict_pb2.PredictRequest.FromString(body)
        feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        return feeds, list(request.output_filter) or None
    inputs = json.loads(body)["inputs"]
    feeds = {}
    for name, spec in signature.structured_input_signature[1].items():
        if spec.dtype == tf.string:
            feeds[name] = tf.constant([base64.b64decode(v["b64"]) for v in inputs[name]])
        else:
            feeds[name] = tf.constant(np.array(inputs[name], dtype=spec.dtype.as_numpy_dtype))
    return feeds, None


def _signature_name(protocol: str, body: bytes) -> str:
    if protocol == "grpc":
        return predict_pb2.PredictRequest.FromString(body).model_spec.signature_name
    return json.loads(body).get("signature_name") or "serving_default"


def _respond(protocol: str, outputs: dict) -> bytes:
    if protocol == "rest":
        # TF Serving's columnar answer: one output's value bare, several by name.
        values = {k: v.numpy().tolist() for k, v in outputs.items()}
        return json.dumps({"outputs": next(iter(values.values())) if len(values) == 1
                           else values}).encode()
    response = predict_pb2.PredictResponse()
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response.SerializeToString()


def serve(loaded, protocol: str, body: bytes) -> tuple[dict, bytes]:
    """(outputs, serialized response) for one request, as TF Serving handles it."""
    signature = loaded.signatures[_signature_name(protocol, body)]
    feeds, wanted = _feeds(signature, protocol, body)
    outputs = signature(**feeds)
    if wanted:
        outputs = {name: outputs[name] for name in wanted}
    return outputs, _respond(protocol, outputs)


def answer(loaded, request: dict) -> dict:
    try:
        outputs, response = serve(loaded, request["protocol"], request["body"])
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as error:
        return {"error": str(error), "outputs": {}, "request_bytes": len(request["body"]),
                "response_bytes": 0}
    return {"error": None, "outputs": {k: v.numpy() for k, v in outputs.items()},
            "request_bytes": len(request["body"]), "response_bytes": len(response)}


def replay_warmup(loaded, saved_model: str) -> dict:
    """{signature: records replayed} of the version's warm-up file."""
    path = os.path.join(saved_model, "assets.extra", "tf_serving_warmup_requests")
    replayed = {}
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        name = request.model_spec.signature_name
        feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        batch = int(next(iter(feeds.values())).shape[0])
        for value in loaded.signatures[name](**feeds).values():
            if value.shape[0] != batch:
                raise AssertionError(f"warm-up {name}: {value.shape[0]} outputs for {batch} inputs")
        replayed[name] = replayed.get(name, 0) + 1
    return replayed


def _latency(loaded, request: dict, calls: int) -> dict:
    serve(loaded, request["protocol"], request["body"])  # the first call pays for allocation
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        serve(loaded, request["protocol"], request["body"])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "calls": calls}


def _throughput(loaded, request: dict, batch: int, callers: int, seconds: float) -> float:
    """Images per second answered by `callers` threads sending `request` for `seconds`."""
    done = [0] * callers
    deadline = time.perf_counter() + seconds

    def call(index: int) -> None:
        while time.perf_counter() < deadline:
            serve(loaded, request["protocol"], request["body"])
            done[index] += batch

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def measure(loaded, plan: dict) -> dict:
    results = {"latency": {}, "throughput": {}}
    for request in plan["latency"]:
        results["latency"][request["case"]] = _latency(loaded, request, plan["latency_calls"])
    for request, batch in zip(plan["throughput"], plan["batch_sizes"] * len(plan["throughput"])):
        serve(loaded, request["protocol"], request["body"])
        results["throughput"][request["case"]] = {
            str(callers): _throughput(loaded, request, batch, callers, plan["seconds"])
            for callers in plan["callers"]}
    return results


def _dim_tf_loaded() -> bool:
    return any(m == "dim_tf" or m.startswith("dim_tf.") for m in sys.modules)


def main(mode: str, saved_model: str, plan_path: str, results_path: str) -> None:
    loaded = tf.saved_model.load(saved_model)
    with open(plan_path, "rb") as f:
        plan = pickle.load(f)
    if mode == "answer":
        results = {request["case"]: answer(loaded, request) for request in plan}
        results["warmup"] = replay_warmup(loaded, saved_model)
    elif mode == "measure":
        results = measure(loaded, plan)
    else:
        raise SystemExit(f"unknown mode {mode!r}: answer or measure")
    if _dim_tf_loaded():
        raise AssertionError("dim_tf was imported: the measurement is not TF Serving's")
    with open(results_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
