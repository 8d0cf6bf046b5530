"""One worker of the two-process MultiWorkerMirroredStrategy test.

Run by tests/training/test_distributed.py as
    python -m tests.training.multi_worker_main INDEX PORT0,PORT1 OUT.npz
Each worker trains three steps on its own half of every global batch and
saves its final weights and logs.
"""

import json
import os
import sys


def main(index: int, ports: list[int], out_path: str) -> None:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": index},
    })
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from dim_tf import DeepInfoMax, build_encoder
    from tests.training.test_distributed import GLOBAL_BATCH, STEPS, model_kwargs, step_batches

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = DeepInfoMax(build_encoder("basic32x32"), **model_kwargs())
        model.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1))

    def per_worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        start = context.input_pipeline_id * per_replica
        halves = step_batches()[:, start: start + per_replica]
        return tf.data.Dataset.from_tensor_slices(halves)

    dataset = strategy.distribute_datasets_from_function(per_worker_dataset)
    history = model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0).history
    np.savez(
        out_path,
        losses=np.array(history["loss"], np.float64).reshape(-1),
        **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)},
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], sys.argv[3])
