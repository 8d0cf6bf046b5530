"""--jit_compile: XLA where it was measured to pay, forced on or off, and the reason logged."""

import pytest

from dim_tf.config import TrainConfig
from dim_tf.errors import ConfigError
from dim_tf.training import xla

AVX2_ONLY = {"avx2", "fma"}
AVX512 = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}
ARM = {"asimd", "bf16"}


@pytest.mark.parametrize("flags, isa, enabled, says", [
    (AVX2_ONLY, None, True, "stop at AVX2"),
    (AVX512, None, False, "has AVX-512"),
    (AVX512, "AVX2", True, "stop at AVX2"),          # an AVX2-only CPU, reproduced
    (AVX512, "AVX512_CORE_BF16", False, "has AVX-512"),
    (ARM, None, False, "not measured"),
])
def test_auto_follows_the_measured_rule(flags, isa, enabled, says):
    choice = xla.choose_jit_compile("auto", flags, isa, environ={})
    assert choice.enabled is enabled and says in choice.reason and "measured" in choice.reason


@pytest.mark.parametrize("setting, enabled", [("on", True), ("off", False)])
def test_the_flag_forces_either_way(setting, enabled):
    for flags in (AVX2_ONLY, AVX512):
        assert xla.choose_jit_compile(setting, flags, None).enabled is enabled


def test_auto_is_on_where_an_accelerator_is_visible(monkeypatch):
    monkeypatch.setattr(xla.tf.config, "list_logical_devices",
                        lambda kind=None: ["/gpu:0"] if kind == "GPU" else [])
    choice = xla.choose_jit_compile("auto", AVX512, None, environ={})
    assert choice.enabled and "GPU" in choice.reason


@pytest.mark.parametrize("value, enabled", [("off", False), ("ON", True)])
def test_the_environment_can_replace_the_rule(value, enabled):
    for flags in (AVX2_ONLY, AVX512):
        choice = xla.choose_jit_compile("auto", flags, None, environ={"DIM_TF_XLA_AUTO": value})
        assert choice.enabled is enabled and "DIM_TF_XLA_AUTO" in choice.reason
    assert xla.choose_jit_compile("on", AVX512, None, environ={"DIM_TF_XLA_AUTO": "off"}).enabled


def test_build_model_compiles_as_chosen():
    from dim_tf.training.dim_model import build_model

    assert xla.choose_jit_compile("auto").enabled is False  # the suite sets DIM_TF_XLA_AUTO=off
    for setting, expected in (("auto", False), ("on", True), ("off", False)):
        model = build_model(TrainConfig(model_dir="<test>", mi_units=8, jit_compile=setting))
        assert model.jit_compile is expected


def test_unknown_jit_compile_value_is_named():
    with pytest.raises(ConfigError, match="--jit_compile='yes' is not valid. Allowed: auto, on, off"):
        TrainConfig(model_dir="<test>", jit_compile="yes")
