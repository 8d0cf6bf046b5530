"""Runs an exported SavedModel in a process that never imports dim_tf.

    python tests/serving/run_saved_model.py SAVED_MODEL INPUTS.npz OUTPUTS.npz

INPUTS.npz holds uint8 arrays named u8_*, float32 arrays named f32_*; each runs
through serving_default or encode_normalized, and every output is saved as
<input name>/<output name>. Arrays named err_serve_* / err_normalized_* must
fail in serving_default / encode_normalized (fed with their own dtype); the
error message is saved as <input name>/error. The warm-up records are parsed
with the real TF Serving protos and replayed; their count is saved as
"warmup_replayed".
"""

import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2


def main(saved_model, inputs_path, outputs_path):
    loaded = tf.saved_model.load(saved_model)
    serve = loaded.signatures["serving_default"]
    normalized = loaded.signatures["encode_normalized"]
    outputs = {}
    for name, array in np.load(inputs_path).items():
        if name.startswith("err_"):
            fn = serve if name.startswith("err_serve_") else normalized
            try:
                fn(images=tf.constant(array))
            except (tf.errors.InvalidArgumentError, TypeError, ValueError) as error:
                outputs[f"{name}/error"] = np.array(str(error))
                continue
            raise AssertionError(f"{name} {array.dtype}{list(array.shape)} was accepted")
        fn = serve if name.startswith("u8_") else normalized
        for key, value in fn(images=tf.constant(array)).items():
            outputs[f"{name}/{key}"] = value.numpy()
    warmup = os.path.join(saved_model, "assets.extra", "tf_serving_warmup_requests")
    replayed = 0
    for record in tf.data.TFRecordDataset(warmup).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        signature = loaded.signatures[request.model_spec.signature_name]
        feeds = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        result = signature(**feeds)
        assert result["y"].shape[0] == next(iter(feeds.values())).shape[0]
        replayed += 1
    outputs["warmup_replayed"] = np.array(replayed)
    assert not any(m == "dim_tf" or m.startswith("dim_tf.") for m in sys.modules), "dim_tf was imported"
    np.savez(outputs_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:4])
