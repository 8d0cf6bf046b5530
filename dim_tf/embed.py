r"""Embed a folder of images into a .npy file with an exported DIM encoder.

    # through a running TF Serving (REST on 8501, or gRPC on 8500 with --protocol=grpc)
    python -m dim_tf.embed --images=photos/ --output=photos_y.npy \
        --server=localhost:8501 --model_name=quick
    # or in-process, straight from the SavedModel
    python -m dim_tf.embed --images=photos/ --output=photos_y.npy \
        --saved_model=saved_models/quick/1

Writes OUTPUT ([N, D] float32, rows in sorted file order) and OUTPUT.files.txt
(the image paths, one per row). Every file under --images must be an image
(found by content, as training finds them), except hidden and system files.

Exit status: 0 written; 2 bad flags or a bad image folder; 1 the model or the
server could not answer.
"""

from __future__ import annotations

import os

from absl import flags

from dim_tf import cli
from dim_tf.config import SERVING_SIGNATURE
from dim_tf.errors import ConfigError

PROGRAM = "dim_tf.embed"

flags.DEFINE_string("images", None, "Folder of images (searched recursively).")
flags.DEFINE_string("output", None, "Output .npy file.")
flags.DEFINE_string("saved_model", None, "Run this SavedModel version directory in-process.")
flags.DEFINE_string("server", None, "TF Serving address HOST:PORT.")
flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "TF Serving API to use with --server.")
flags.DEFINE_string("model_name", None, "Model name on the server (--model_name of the server).")
flags.DEFINE_integer("model_version", None, "Model version on the server (default: latest).")
flags.DEFINE_string("signature", SERVING_SIGNATURE, "Signature to call.")
flags.DEFINE_enum("feature", "y", ["y", "fc", "conv", "local"], "Encoder output to save.")
flags.DEFINE_integer("batch_size", 64, "Images per request.")
flags.DEFINE_integer("channels", 3, "Decode images to this many channels (1 or 3).")
FLAGS = flags.FLAGS


def _check_flags() -> None:
    if not FLAGS.images or not FLAGS.output:
        raise ConfigError("--images and --output are required.")
    if bool(FLAGS.saved_model) == bool(FLAGS.server):
        raise ConfigError("give exactly one of --saved_model (in-process) or --server (TF Serving).")
    if FLAGS.server and not FLAGS.model_name:
        raise ConfigError("--server needs --model_name.")
    if FLAGS.batch_size < 1 or FLAGS.channels not in (1, 3):
        raise ConfigError("--batch_size must be >= 1 and --channels 1 or 3.")


def main() -> None:
    _check_flags()
    # Imported once the flags are valid: a bad flag is refused before TensorFlow loads.
    import numpy as np

    from dim_tf.serving import client

    if FLAGS.saved_model:
        backend = client.InProcessBackend(FLAGS.saved_model, FLAGS.signature)
    elif FLAGS.protocol == "rest":
        backend = client.RestBackend(FLAGS.server, FLAGS.model_name, FLAGS.signature,
                                     FLAGS.model_version)
    else:
        backend = client.GrpcBackend(FLAGS.server, FLAGS.model_name, FLAGS.signature,
                                     FLAGS.model_version)
    features, paths = client.embed_folder(backend, FLAGS.images, FLAGS.batch_size,
                                          FLAGS.feature, FLAGS.channels)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    np.save(FLAGS.output, features)
    with open(FLAGS.output + ".files.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(paths) + "\n")
    print(f"{PROGRAM}: {features.shape[0]} images -> {FLAGS.output} {features.shape}")


if __name__ == "__main__":
    cli.run(main, PROGRAM)
