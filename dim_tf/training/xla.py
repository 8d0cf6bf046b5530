"""Whether the training step is compiled by XLA (`--jit_compile`), and why.

`auto` follows what was measured (docs/performance.md, "Speed on each CPU kind"),
each step timed with and without XLA in alternating blocks of one process:

- x86 CPUs whose vector units stop at AVX2 (no AVX-512, or oneDNN limited to an
  AVX2 ISA by ONEDNN_MAX_CPU_ISA): XLA, which compiles for the host, ran the step
  1.03-1.10x faster than TensorFlow's prebuilt kernels. On.
- x86 CPUs with AVX-512 (and AMX): XLA ran it 0.48-0.81x as fast, where oneDNN's
  AVX-512 and AMX kernels win. Off.
- Other CPUs (Arm): not measured; off, as in Keras' default.
- A GPU or TPU: on, as in Keras' default, where XLA fuses the element-wise work.

The environment variable DIM_TF_XLA_AUTO=off (or on) replaces that rule, for
automation that runs many short trainings (the test suite sets it: XLA's compile
would dominate them).
"""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple

import tensorflow as tf

from dim_tf.training import precision

# ONEDNN_MAX_CPU_ISA values that keep oneDNN to AVX2-class kernels.
AVX2_CLASS_ISAS = ("AVX2", "AVX2_VNNI", "AVX2_VNNI_2")
AVX2_MEASUREMENT = "XLA measured 1.03-1.10x faster on AVX2-only x86 CPUs"
AVX512_MEASUREMENT = "XLA measured 0.48-0.81x as fast on AVX-512 CPUs"
AUTO_OVERRIDE = "DIM_TF_XLA_AUTO"


class JitChoice(NamedTuple):
    """Whether XLA compiles the step, and why (one sentence for the log)."""

    enabled: bool
    reason: str


def avx2_class_cpu(flags: set[str] | None = None, isa: str | None | bool = False) -> bool:
    """Whether this x86 CPU's best vector ISA (as oneDNN may use it) is AVX2-class."""
    flags = precision.cpu_flags() if flags is None else flags
    isa = precision.onednn_max_isa() if isa is False else isa
    if "avx2" not in flags:
        return False
    return isa in AVX2_CLASS_ISAS or "avx512f" not in flags


def choose_jit_compile(setting: str, flags: set[str] | None = None,
                       isa: str | None | bool = False,
                       environ: Mapping[str, str] | None = None) -> JitChoice:
    """What `--jit_compile` (auto, on or off) means on this machine (`flags`, `isa`
    and `environ` default to this machine's /proc/cpuinfo flags, ONEDNN_MAX_CPU_ISA
    and environment)."""
    if setting == "on":
        return JitChoice(True, "--jit_compile=on")
    if setting == "off":
        return JitChoice(False, "--jit_compile=off")
    override = (os.environ if environ is None else environ).get(AUTO_OVERRIDE, "").lower()
    if override in ("on", "off"):
        return JitChoice(override == "on", f"{AUTO_OVERRIDE}={override}")
    for kind in ("GPU", "TPU"):
        if tf.config.list_logical_devices(kind):
            return JitChoice(True, f"a {kind} is visible, where XLA fuses the step's "
                                   "element-wise work (Keras' default)")
    flags = precision.cpu_flags() if flags is None else flags
    if avx2_class_cpu(flags, isa):
        return JitChoice(True, f"this CPU's vector units stop at AVX2, where {AVX2_MEASUREMENT} "
                               "than TensorFlow's kernels; --jit_compile=off to compare")
    if "avx512f" in flags:
        return JitChoice(False, f"this CPU has AVX-512: {AVX512_MEASUREMENT} as TensorFlow's "
                                "oneDNN kernels; --jit_compile=on compiles anyway")
    return JitChoice(False, "XLA was not measured on this kind of CPU (Keras' default: off); "
                            "--jit_compile=on compiles anyway")
