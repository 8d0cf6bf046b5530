"""Encoders and heads. Importing this package registers dim-tf's Keras layers, so
`keras.saving.load_model` reads an exported `encoder.keras` file."""

from dim_tf.models import encoders, normalization  # noqa: F401  (registration)
