"""Bias / variance diagnosis from the errors of the evaluated splits.

With the human-level (Bayes proxy) error e*, and the errors on train, train-dev, dev
and test:

    avoidable bias   = train - e*          the model cannot fit its own training data
    variance         = train-dev - train   it fits them but does not generalize
    data mismatch    = dev - train-dev     it generalizes, but the target data differ
    dev overfitting  = test - dev          the dev set was tuned to

The verdict is the largest gap above the tolerance, with the recipe that addresses it;
"ok" when every gap that can be measured is within the tolerance, and "unknown" before
the train split has been evaluated.
"""
from __future__ import annotations

import math

GAPS = ("avoidable_bias", "variance", "data_mismatch", "dev_overfitting")
VERDICTS = ("ok", *GAPS, "unknown")

# (the split whose figure the gap subtracts from, the split it subtracts; None = Bayes proxy)
_GAP_SPLITS = {
    "avoidable_bias": ("train", None),
    "variance": ("train_dev", "train"),
    "data_mismatch": ("dev", "train_dev"),
    "dev_overfitting": ("test", "dev"),
}

RECIPES = {
    "ok": "no gap above the tolerance: keep training on fresh data and watch the dev error",
    "avoidable_bias": "train error is far above the Bayes proxy: use a bigger network (more units "
                      "or layers), train longer or with a better optimizer or learning rate, or "
                      "lower the regularization",
    "variance": "train-dev error is far above train error: get more training data, add "
                "regularization (l2, dropout via keep_prob), or use a smaller network",
    "data_mismatch": "dev error is far above train-dev error: the target data differ from the "
                     "training data; make the training data more like the target (collect or "
                     "synthesize such rows, send them as training rows)",
    "dev_overfitting": "test error is far above dev error: the dev set has been tuned to; get a "
                       "bigger dev set",
    "unknown": "not enough evaluated data yet: the train split must be evaluated first "
               "(and train_dev, dev, test for the other gaps)",
}


def figure_of(figures):
    """The split's error-like figure: error for classification, mse for regression."""
    for key in ("error", "mse"):
        value = figures.get(key)
        if value is not None and math.isfinite(value):
            return value
    return None


def diagnose(results, bayes_error=0.0, tolerance=0.02):
    """The diagnosis for evaluation results {split: figures}.

    Returns {"bayes_error", "tolerance", "figure", "gaps": {gap: value or None},
    "verdict", "recipe"}; a gap is None when a split it needs has no figure yet.
    """
    values = {split: figure_of(f) for split, f in results.items()}
    kind = "error" if any("error" in f for f in results.values()) else "mse"
    gaps = {}
    for gap, (a, b) in _GAP_SPLITS.items():
        va = values.get(a)
        vb = bayes_error if b is None else values.get(b)
        gaps[gap] = None if va is None or vb is None else va - vb
    if gaps["avoidable_bias"] is None:
        verdict = "unknown"
    else:
        over = {g: v for g, v in gaps.items() if v is not None and v > tolerance}
        verdict = max(over, key=over.get) if over else "ok"
    return {"bayes_error": bayes_error, "tolerance": tolerance, "figure": kind,
            "gaps": gaps, "verdict": verdict, "recipe": RECIPES[verdict]}
