"""Diagnostics of a frozen encoder's code Y: NDM, a MINE estimate and decoder MS-SSIM.

The three measures of the paper's Table 3 (Hjelm et al. 2019, sec. 4) that are
not classifiers. Each is an evaluator `(train, test, settings) -> float`
(`common.Evaluator`) on NumPy arrays the caller has already computed with the
frozen encoder (`DiagnosticData`): it trains its own small network on the
training split and reports one float on the held-out split.

- `neural_dependency_measure` (NDM, `ndm`): how far the dimensions of Y are
  from independent, as a KL divergence in nats between Y and the product of
  its marginals (its total correlation). ~0 for independent dimensions.
- `mine_estimate` (`mine`): a MINE-style (Belghazi et al. 2018)
  Donsker-Varadhan lower bound on I(X; Y) in nats between images and codes.
- `decoder_ms_ssim` (`decoder`): the multi-scale SSIM in [0, 1] of images
  reconstructed from Y by a deconvolutional decoder trained with squared error.
"""

from __future__ import annotations

from dim_tf.evaluation.diagnostics import decoder, mine, ndm
from dim_tf.evaluation.diagnostics.common import DiagnosticData, DiagnosticSettings, Evaluator
from dim_tf.evaluation.diagnostics.decoder import decoder_ms_ssim
from dim_tf.evaluation.diagnostics.mine import mine_estimate
from dim_tf.evaluation.diagnostics.ndm import neural_dependency_measure

# Result name (the key in the evaluation's results) -> the evaluator and its
# default settings, in the order they run and are reported.
DIAGNOSTICS: dict[str, tuple[Evaluator, DiagnosticSettings]] = {
    "ndm": (neural_dependency_measure, ndm.DEFAULTS),
    "mine_nats": (mine_estimate, mine.DEFAULTS),
    "ms_ssim": (decoder_ms_ssim, decoder.DEFAULTS),
}

__all__ = ["DIAGNOSTICS", "DiagnosticData", "DiagnosticSettings", "Evaluator", "decoder_ms_ssim",
           "mine_estimate", "neural_dependency_measure"]
