"""Mixed precision: which policy `--mixed_precision` means on this machine, and
dynamic loss scaling for float16.

bfloat16 has float32's exponent range, so CPUs with bfloat16 units (x86
AVX512_BF16 or AMX, Arm's BF16 extension) and TPUs train in `mixed_bfloat16`
without loss scaling. A CPU without such units emulates every bfloat16 product
in float32 plus conversions: measured on an AVX2-only AMD EPYC (Zen 3), the
one-hour recipe's step ran 4.2x slower in bfloat16 than in float32.
There `--mixed_precision` falls back to float32 with one log line, unless forced;
so it does where `ONEDNN_MAX_CPU_ISA` (oneDNN's switch, e.g. AVX2 to reproduce an
AVX2-only CPU on a newer one) keeps oneDNN below the bfloat16 instructions.
GPUs run `mixed_float16`, whose small range makes small gradients underflow:
each optimiser of a float16 player is wrapped in a dynamic loss-scale optimiser
(`keras_hooks.StepCountingLossScaleOptimizer`). Scores, estimators, losses and
the prior discriminator (with its gradient penalty) stay in float32 either way.
"""

from __future__ import annotations

import os
import platform
from typing import Mapping, NamedTuple

import keras
import tensorflow as tf
from absl import logging

from dim_tf.errors import ConfigError
from dim_tf.training.keras_hooks import StepCountingLossScaleOptimizer

# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic: x86 AVX512_BF16 and AMX
# tiles (oneDNN uses either), and the Armv8.6 BF16 extension ("bf16" in "Features").
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# oneDNN's ISA limits (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) below
# AVX512_CORE_BF16: under one of them oneDNN does not use the CPU's bfloat16 units.
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                            "AVX512_CORE_VNNI")
FLOAT32 = "float32"


class PrecisionChoice(NamedTuple):
    """The dtype policy a run computes in and why (one sentence for the log)."""

    policy: str
    reason: str


def cpu_flags(cpuinfo_text: str | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo ("flags" on x86, "Features" on Arm).

    Empty where that file does not exist (macOS, Windows).
    """
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo_text = f.read()
        except OSError:
            return set()
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return found


def onednn_max_isa(environ: Mapping[str, str] | None = None) -> str | None:
    """The ISA oneDNN is limited to by ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), upper-case, or None."""
    environ = os.environ if environ is None else environ
    value = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def cpu_bf16_units(flags: set[str] | None = None,
                   environ: Mapping[str, str] | None = None) -> str | None:
    """The name of the bfloat16 feature TensorFlow can use here (e.g. "amx_bf16"), or None.

    None as well where ONEDNN_MAX_CPU_ISA keeps oneDNN below bfloat16 (x86). Apple
    silicon has no /proc/cpuinfo; its M2 and later cores have BF16, but
    TensorFlow's macOS build does not use it, so it counts as none.
    """
    flags = cpu_flags() if flags is None else flags
    if onednn_max_isa(environ) in ONEDNN_ISAS_WITHOUT_BF16 and "bf16" not in flags:
        return None
    for name in CPU_BF16_FLAGS:
        if name in flags:
            return name
    return None


def choose_precision(mixed_precision: bool, force: bool = False,
                     bf16_feature: str | None | bool = False) -> PrecisionChoice:
    """What `--mixed_precision` (and `--force_mixed_precision`) mean on this machine.

    Args:
        mixed_precision: the run asks for mixed precision.
        force: compute in bfloat16 on a CPU even without bfloat16 units.
        bf16_feature: the CPU's bfloat16 feature name or None; False (default)
            reads it from this machine (`cpu_bf16_units`). Tests pass it.
    """
    if not mixed_precision:
        return PrecisionChoice(FLOAT32, "--mixed_precision is off")
    if tf.config.list_logical_devices("GPU"):
        return PrecisionChoice("mixed_float16", "a GPU is visible: float16 with loss scaling")
    if tf.config.list_logical_devices("TPU"):
        return PrecisionChoice("mixed_bfloat16", "a TPU is visible")
    feature = cpu_bf16_units() if bf16_feature is False else bf16_feature
    if feature:
        return PrecisionChoice("mixed_bfloat16", f"the CPU has bfloat16 units ({feature})")
    if force:
        hidden_units = cpu_bf16_units(environ={}) if bf16_feature is False else None
        if hidden_units:
            raise ConfigError(
                f"--force_mixed_precision with ONEDNN_MAX_CPU_ISA={onednn_max_isa()}: this CPU "
                f"has bfloat16 units ({hidden_units}), so TensorFlow sends bfloat16 products to "
                "oneDNN, which has no bfloat16 kernels under that limit and aborts the process. "
                "Unset ONEDNN_MAX_CPU_ISA, or train in float32 (drop --force_mixed_precision).")
        return PrecisionChoice("mixed_bfloat16", "forced by --force_mixed_precision on a CPU "
                               "without bfloat16 units (emulated: slower than float32)")
    isa = onednn_max_isa()
    hidden = (f", or ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN from them"
              if isa in ONEDNN_ISAS_WITHOUT_BF16 else "")
    return PrecisionChoice(FLOAT32, (
        f"--mixed_precision falls back to float32: this CPU ({platform.processor() or 'unknown'}) "
        f"has no bfloat16 units (no AVX512_BF16, AMX or Arm BF16){hidden}, where bfloat16 runs "
        "several times slower than float32; --force_mixed_precision uses it anyway"))


def use_precision(mixed_precision: bool, force: bool = False) -> str:
    """Sets this machine's policy for the run as Keras' global policy, logs why
    when it is not what was asked, and returns the policy's name."""
    choice = choose_precision(mixed_precision, force)
    if mixed_precision:
        logging.info("Precision %s: %s.", choice.policy, choice.reason)
    keras.config.set_dtype_policy(choice.policy)
    return choice.policy


def needs_loss_scaling() -> bool:
    """Whether models built now compute in float16 (the global policy's compute dtype)."""
    return keras.config.dtype_policy().compute_dtype == "float16"


def with_loss_scaling(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """`optimizer` wrapped for dynamic loss scaling (unless it already is)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return StepCountingLossScaleOptimizer(optimizer)


def unscaled(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimiser doing the updates: the inner one of a loss-scale optimiser."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer
