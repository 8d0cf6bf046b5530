"""dim-tf: Deep InfoMax (Hjelm et al., ICLR 2019) in TensorFlow 2 / Keras 3.

Public API::

    from dim_tf import build_encoder, DeepInfoMax
    with strategy.scope():
        model = DeepInfoMax(build_encoder("basic32x32"), estimator="jsd",
                            alpha=0.0, beta=1.0, gamma=0.1)
        model.compile()
    model.fit(images, epochs=...)
"""

from dim_tf.models.encoders import ENCODERS, FEATURE_NAMES, build_encoder, encoder_image_size
from dim_tf.objectives.estimators import ESTIMATORS, MIEstimate, canonical_estimator, per_example_mi
from dim_tf.training.checkpoints import restore_latest, training_checkpoint
from dim_tf.training.dim_model import DeepInfoMax, default_optimizer

__version__ = "0.1.0"

__all__ = [
    "ENCODERS",
    "ESTIMATORS",
    "FEATURE_NAMES",
    "DeepInfoMax",
    "MIEstimate",
    "build_encoder",
    "canonical_estimator",
    "default_optimizer",
    "encoder_image_size",
    "per_example_mi",
    "restore_latest",
    "training_checkpoint",
]
