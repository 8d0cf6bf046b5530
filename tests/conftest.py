"""Test set-up shared by every test module.

The CPU is split into two logical devices before TensorFlow initialises, so
MirroredStrategy can be tested on a machine without GPUs. Single-device code
keeps running on /cpu:0.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The image-folder check cache (dim_tf/data/file_check_cache.py) of every test and of
# the commands tests run goes to a throw-away directory, never the user's cache.
os.environ["DIM_TF_CACHE_DIR"] = tempfile.mkdtemp(prefix="dim_tf_test_cache_")
# --jit_compile=auto compiles training with XLA on AVX2-only CPUs (dim_tf/training/xla.py);
# the suite's many short runs would spend most of their time compiling, so auto means
# off here (tests/training/test_xla*.py test XLA and the rule themselves).
os.environ["DIM_TF_XLA_AUTO"] = "off"
# The XLA tests compile many small train steps: LLVM's optimisation passes would
# double their compile time and change nothing they check.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Python, NumPy, TF and Keras seeds."""
    import keras

    keras.utils.set_random_seed(1234)
    yield
