r"""Evaluate a DIM encoder: frozen-feature probes, MI measures and a report.

    python -m dim_tf.evaluate --model_dir=runs/quick
    python -m dim_tf.evaluate --model_dir=runs/quick --random_init      # untrained baseline
    python -m dim_tf.evaluate --saved_model=saved_models/quick/1 --dataset=sample:cifar10 \
        --report_dir=reports/quick

The report (report.md, report.json, pictures) goes to --report_dir, by default
MODEL_DIR/evaluation (MODEL_DIR/evaluation_random_init with --random_init).
The flags are the fields of `dim_tf.config.EvalConfig`.
"""

from __future__ import annotations


from dim_tf import cli
from dim_tf import config as config_lib

PROGRAM = "dim_tf.evaluate"

cli.define_config_flags(config_lib.EvalConfig)


def main() -> None:
    config = config_lib.EvalConfig(**cli.config_values(config_lib.EvalConfig))
    from dim_tf.evaluation.run import evaluate  # TensorFlow loads only once the flags are valid

    result = evaluate(config)
    print(f"{PROGRAM}: report in {config.resolved_report_dir()}/report.md "
          f"({result.timing_seconds['total']:.1f} s)")
    if "skipped" in result.probes:
        print(f"  probes skipped: {result.probes['skipped']}")
    for kind, layers in result.probes.items():
        if kind != "skipped":
            row = "  ".join(f"{layer} {acc['top1']:.2f}" for layer, acc in layers.items())
            print(f"  {kind:<10} {row}")
    for name, value in result.diagnostics.items():
        print(f"  {name:<10} {value:.4f}" if value is not None else f"  {name:<10} n/a")


if __name__ == "__main__":
    cli.run(main, PROGRAM)
