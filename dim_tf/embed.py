r"""Embed images with an exported DIM encoder: in this process or through TF Serving
into one .npy file (--engine=local), or at scale on Apache Beam (--engine=beam).

    # local: through a running TF Serving (REST on 8501, or gRPC on 8500 with --protocol=grpc)
    python -m dim_tf.embed --images=photos/ --output=photos_y.npy \
        --server=localhost:8501 --model_name=quick
    # local: in-process, straight from the SavedModel
    python -m dim_tf.embed --images=photos/ --output=photos_y.npy \
        --saved_model=saved_models/quick/1
    # beam: Beam's RunInference, sharded TFRecord (or --output_format=parquet) files
    python -m dim_tf.embed --engine=beam --saved_model=saved_models/quick/1 \
        --images=photos/ --output=out/photos --features=y,fc
    # beam, on an ingested TFRecord dataset, on Dataflow
    python -m dim_tf.embed --engine=beam --saved_model=gs://B/models/quick/1 \
        --examples=/mnt/data/tfrecords --split=test --output=gs://B/emb/test \
        --beam_pipeline_args="--runner=DataflowRunner --project=P --region=R \
        --temp_location=gs://B/tmp"

--engine=local writes OUTPUT ([N, D] float32, rows in sorted file order) and
OUTPUT.files.txt (the image paths, one per row). --engine=beam writes
OUTPUT-NNNNN-of-MMMMM.tfrecord (or .parquet): one row per image, its `id` (the
file path, or the record's image/name) and each of --features flattened to
float32; `dim_tf.serving.beam_embed.read_embeddings` reads them back. Every file
under --images must be an image (found by content, as training finds them),
except hidden and system files; --skip_bad leaves out those that are not, and
lists them in OUTPUT.bad_files.jsonl.

Exit status: 0 written; 2 bad flags, a bad image folder or dataset; 1 the model or
the server could not answer.
"""

from __future__ import annotations

import os

from absl import flags

from dim_tf import cli
from dim_tf.config import FEATURE_NAMES, SERVING_SIGNATURE, SIGNATURES
from dim_tf.errors import ConfigError

PROGRAM = "dim_tf.embed"

FEATURES = sorted(FEATURE_NAMES, key=lambda name: name != "y")  # the global code first

flags.DEFINE_enum("engine", "local", ["local", "beam"], "local: in this process or through "
                  "--server, into one .npy file; beam: an Apache Beam pipeline (RunInference) "
                  "writing sharded TFRecord or Parquet files.")
flags.DEFINE_string("images", None, "Folder of images (searched recursively).")
flags.DEFINE_string("examples", None, "--engine=beam: embed a TFRecord dataset written by the "
                    "ingest (a directory with schema.json) instead of --images.")
flags.DEFINE_string("split", None, "With --examples: embed only this split (default: all).")
flags.DEFINE_string("output", None, "Output: the .npy file (--engine=local), or the path prefix "
                    "of the shards (--engine=beam: OUTPUT-00000-of-00002.tfrecord).")
flags.DEFINE_enum("output_format", None, ["npy", "tfrecord", "parquet"], "npy (--engine=local, "
                  "its only format); tfrecord (the default of --engine=beam) or parquet.")
flags.DEFINE_string("saved_model", None, "Run this SavedModel version directory in-process.")
flags.DEFINE_string("server", None, "TF Serving address HOST:PORT.")
flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "TF Serving API to use with --server.")
flags.DEFINE_string("model_name", None, "Model name on the server (--model_name of the server).")
flags.DEFINE_integer("model_version", None, "Model version on the server (default: latest).")
flags.DEFINE_string("signature", SERVING_SIGNATURE, "--engine=local: the signature to call, "
                    f"among {', '.join(SIGNATURES)}. The *_encoded ones are sent the files' bytes "
                    "(decoded by the server: a JPEG travels as itself, not as pixels); embed and "
                    "embed_encoded return y alone (the smallest REST responses).")
flags.DEFINE_enum("feature", "y", FEATURES, "--engine=local: the encoder output to save.")
flags.DEFINE_list("features", ["y"], "--engine=beam: the encoder outputs to write, e.g. y,fc "
                  f"(among {', '.join(FEATURES)}).")
flags.DEFINE_integer("batch_size", 64, "Images per request (per RunInference batch with "
                     "--engine=beam).")
flags.DEFINE_integer("channels", 3, "Decode images to this many channels (1 or 3).")
flags.DEFINE_string("beam_pipeline_args", None, "--engine=beam: Beam's own pipeline options as "
                    "one string, e.g. \"--runner=DataflowRunner --project=P --region=R "
                    "--temp_location=gs://B/tmp\" (default: the DirectRunner on this machine).")
flags.DEFINE_bool("skip_bad", False, "Leave out files that are no usable image (counted, and "
                  "listed in OUTPUT.bad_files.jsonl) instead of failing.")
FLAGS = flags.FLAGS


def _check_flags() -> None:
    if FLAGS.batch_size < 1 or FLAGS.channels not in (1, 3):
        raise ConfigError("--batch_size must be >= 1 and --channels 1 or 3.")
    if FLAGS.engine == "local":
        _check_local_flags()
    else:
        _check_beam_flags()


def _check_local_flags() -> None:
    beam_only = [f"--{name}" for name in ("examples", "split", "features", "beam_pipeline_args")
                 if FLAGS[name].present]
    if FLAGS.output_format not in (None, "npy"):
        beam_only.append(f"--output_format={FLAGS.output_format}")
    if beam_only:
        raise ConfigError(f"{', '.join(beam_only)}: only with --engine=beam (--engine=local "
                          "writes one --feature of --images to a .npy file).")
    if not FLAGS.images or not FLAGS.output:
        raise ConfigError("--images and --output are required.")
    if bool(FLAGS.saved_model) == bool(FLAGS.server):
        raise ConfigError("give exactly one of --saved_model (in-process) or --server (TF Serving).")
    if FLAGS.server and not FLAGS.model_name:
        raise ConfigError("--server needs --model_name.")


def _check_beam_flags() -> None:
    if FLAGS.server or not FLAGS.saved_model:
        raise ConfigError("--engine=beam runs the SavedModel in the Beam workers: give "
                          "--saved_model (a version directory such as saved_models/NAME/1), "
                          "not --server.")
    if bool(FLAGS.images) == bool(FLAGS.examples):
        raise ConfigError("--engine=beam needs exactly one of --images (a folder) or --examples "
                          "(a TFRecord dataset written by the ingest).")
    if FLAGS.split and not FLAGS.examples:
        raise ConfigError("--split selects a split of --examples; --images is embedded whole.")
    if not FLAGS.output:
        raise ConfigError("--output (the path prefix of the shards) is required.")
    if FLAGS.output_format == "npy":
        raise ConfigError("--output_format=npy is --engine=local's; --engine=beam writes "
                          "tfrecord or parquet.")
    if FLAGS["feature"].present:
        raise ConfigError("--engine=beam takes --features (a list, e.g. y,fc), not --feature.")
    unknown = [name for name in FLAGS.features if name not in FEATURES]
    if unknown or not FLAGS.features:
        raise ConfigError(f"--features={','.join(FLAGS.features)}: give names among "
                          f"{', '.join(FEATURES)}.")
    # Beam's own options too (Beam loads, TensorFlow not yet): a typo is refused in a second.
    from dim_tf.data import beam as beam_runs

    beam_runs.pipeline_options(FLAGS.beam_pipeline_args)


def main() -> None:
    _check_flags()
    # The engines import TensorFlow once the flags are valid: a bad flag is refused first.
    if FLAGS.engine == "beam":
        _embed_with_beam()
    else:
        _embed_locally()


def _embed_locally() -> None:
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
    features, paths, bad = client.embed_folder(backend, FLAGS.images, FLAGS.batch_size,
                                               FLAGS.feature, FLAGS.channels,
                                               skip_bad=FLAGS.skip_bad)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    np.save(FLAGS.output, features)
    with open(FLAGS.output + ".files.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(paths) + "\n")
    bad_list = FLAGS.output + client.BAD_FILES_SUFFIX
    if os.path.exists(bad_list):  # an earlier run's
        os.remove(bad_list)
    client.write_bad_files([(entry.path, entry.reason) for entry in bad], bad_list)
    skipped = f"; {len(bad)} file(s) left out, listed in {bad_list}" if bad else ""
    print(f"{PROGRAM}: {features.shape[0]} images -> {FLAGS.output} {features.shape}{skipped}")


def _embed_with_beam() -> None:
    from dim_tf.serving.beam_embed import embed_with_beam

    output_format = {"output_format": FLAGS.output_format} if FLAGS.output_format else {}
    counters = embed_with_beam(
        FLAGS.saved_model, FLAGS.output, images=FLAGS.images, examples=FLAGS.examples,
        split=FLAGS.split, features=tuple(FLAGS.features), batch_size=FLAGS.batch_size,
        channels=FLAGS.channels, signature=FLAGS.signature, skip_bad=FLAGS.skip_bad,
        pipeline_args=FLAGS.beam_pipeline_args, **output_format)
    skipped = f", {counters['bad_files']} bad file(s) skipped" if counters["bad_files"] else ""
    print(f"{PROGRAM}: {counters['images_embedded']} images -> {FLAGS.output}-*-of-* "
          f"({','.join(FLAGS.features)}){skipped}")


if __name__ == "__main__":
    cli.run(main, PROGRAM)
