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
    assert precision.cpu_bf16_units() == expected

