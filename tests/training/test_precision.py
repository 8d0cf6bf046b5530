"""What --mixed_precision means on a machine: bfloat16 only where the CPU has units for it."""

import logging

import keras
import pytest

from dim_tf.training import precision

X86_AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni
"""
X86_SAPPHIRE_RAPIDS = X86_AVX2_ONLY.replace("sha_ni", "avx512f avx512_bf16 amx_tile amx_bf16")
ARM_NEOVERSE_V1 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("cpuinfo, feature", [
    (X86_AVX2_ONLY, None),
    (X86_SAPPHIRE_RAPIDS, "avx512_bf16"),
    (X86_SAPPHIRE_RAPIDS.replace("avx512_bf16 ", ""), "amx_bf16"),
    (ARM_NEOVERSE_V1, "bf16"),
    ("", None),
])
def test_bf16_units_are_read_from_cpuinfo(cpuinfo, feature):
    assert precision.cpu_bf16_units(precision.cpu_flags(cpuinfo)) == feature


@pytest.mark.parametrize("environ, feature", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, None),          # an AVX2-only CPU, reproduced
    ({"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}, None),  # the older name, any case
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "avx512_bf16"),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "avx512_bf16"),
    ({}, "avx512_bf16"),
])
def test_onednn_isa_limit_below_bf16_hides_the_units(environ, feature):
    flags = precision.cpu_flags(X86_SAPPHIRE_RAPIDS)
    assert precision.cpu_bf16_units(flags, environ) == feature


def test_onednn_isa_limit_is_named_in_the_fallback(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    choice = precision.choose_precision(True, bf16_feature=None)
    assert choice.policy == "float32" and "ONEDNN_MAX_CPU_ISA=AVX2" in choice.reason


def test_forcing_bf16_under_an_isa_limit_that_hides_the_units_is_refused(monkeypatch):
    from dim_tf.errors import ConfigError

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(precision, "cpu_flags", lambda *args: {"avx2", "avx512f", "avx512_bf16"})
    with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA=AVX2.*aborts the process"):
        precision.choose_precision(True, force=True)


@pytest.mark.parametrize("mixed, force, feature, policy", [
    (False, False, "amx_bf16", "float32"),
    (True, False, "amx_bf16", "mixed_bfloat16"),
    (True, False, None, "float32"),              # AVX2 only: emulated bfloat16 is 4x slower
    (True, True, None, "mixed_bfloat16"),
])
def test_mixed_precision_falls_back_to_float32_without_bf16_units(mixed, force, feature, policy):
    assert precision.choose_precision(mixed, force, bf16_feature=feature).policy == policy


def test_fallback_is_logged_once_and_sets_the_float32_policy(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda *args, **kwargs: None)
    try:
        with caplog.at_level(logging.INFO, logger="absl"):  # absl's level may be raised by earlier tests
            assert precision.use_precision(True) == "float32"
        assert keras.config.dtype_policy().name == "float32"
        lines = [r.getMessage() for r in caplog.records if "falls back to float32" in r.getMessage()]
        assert len(lines) == 1 and "--force_mixed_precision" in lines[0]
        assert precision.use_precision(True, force=True) == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_this_machine_is_detected_as_it_is():
    """On the CPU running the suite the answer must match its own flags."""
    flags = precision.cpu_flags()
    expected = next((f for f in precision.CPU_BF16_FLAGS if f in flags), None)
    if precision.onednn_max_isa() in precision.ONEDNN_ISAS_WITHOUT_BF16:
        expected = None
    assert precision.cpu_bf16_units() == expected

