"""Evaluation: metrics, comparison with a from-scratch baseline, and reports.

* :func:`evaluate` / :func:`predict` / :func:`classification_metrics` -> :class:`Metrics`;
  :func:`predict_proba`: class probabilities;
* :class:`RunResult` (one method, one seed), :func:`summarize` (mean/std over seeds, gain over the
  baseline, negative transfer, significance) and :func:`format_table`;
* :func:`write_metrics_json` and :func:`write_report` (self-contained HTML with plots);
* label-free model choice for domain adaptation (:mod:`.unsupervised`): :func:`prediction_entropy`,
  :func:`snd_score`, :func:`dev_risk`, and the domain gap (:func:`domain_gap`,
  :func:`proxy_a_distance`).
* What transfer changed, layer by layer: linear CKA between two models' representations
  (:func:`linear_cka`, :func:`layer_cka`) and the relative weight change (:func:`weight_change`).
"""

from transferkit.evaluation.compare import RunResult, fit_warnings, format_gain, format_table, summarize
from transferkit.evaluation.metrics import (
    Metrics,
    classification_metrics,
    evaluate,
    evaluate_with_head,
    predict,
    predict_proba,
)
from transferkit.evaluation.predictions import prediction_rows, predictions_csv, write_predictions
from transferkit.evaluation.report import write_metrics_json, write_report
from transferkit.evaluation.similarity import compare_models, layer_cka, linear_cka, weight_change
from transferkit.evaluation.unsupervised import (
    dev_risk,
    dev_weights,
    domain_gap,
    prediction_entropy,
    proxy_a_distance,
    snd_score,
)

__all__ = [
    "compare_models",
    "Metrics",
    "RunResult",
    "classification_metrics",
    "dev_risk",
    "dev_weights",
    "domain_gap",
    "evaluate",
    "evaluate_with_head",
    "fit_warnings",
    "format_gain",
    "format_table",
    "layer_cka",
    "linear_cka",
    "predict",
    "predict_proba",
    "prediction_entropy",
    "prediction_rows",
    "predictions_csv",
    "proxy_a_distance",
    "snd_score",
    "summarize",
    "weight_change",
    "write_metrics_json",
    "write_predictions",
    "write_report",
]
