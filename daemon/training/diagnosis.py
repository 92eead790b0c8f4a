"""Bias / variance diagnosis from the errors of the evaluated splits.

With the human-level (Bayes proxy) error e*, and the errors on train, train-dev, dev
and test:

    avoidable bias   = train - e*          the model cannot fit its own training data
    variance         = train-dev - train   it fits them but does not generalize
    data mismatch    = dev - train-dev     it generalizes, but the target data differ
    dev overfitting  = test - dev          the dev set was tuned to

The verdict is the largest gap that is both above the tolerance and more than
NOISE_SIGMAS standard errors above zero, with the recipe that addresses it; "ok" when
no gap that can be measured is, and "unknown" before the train split has been
evaluated.  The standard error matters because held-out sets are small: 150 dev rows
at 3% error and 150 test rows at 6% differ by 0.03 by chance alone about one time in
five, and a gap that small would otherwise send the operator after a bigger dev set.
Errors are proportions of rows, so a split's standard error is binomial; for
regression (MSE) none is known and the tolerance alone decides.
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


NOISE_SIGMAS = 2.0   # a gap counts only this many standard errors above zero (~95% one-sided: 97.7%)


def standard_error(figures):
    """Binomial standard error of a split's error rate, or None (regression, no rows).

    The rate is smoothed to (errors + 1) / (rows + 2), so a split with no errors on a
    few rows is not taken for an exact 0."""
    error, rows = figures.get("error"), figures.get("rows")
    if error is None or not rows or not math.isfinite(error):
        return None
    p = (error * rows + 1.0) / (rows + 2.0)
    return math.sqrt(p * (1.0 - p) / rows)


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
    "gap_errors": {gap: standard error or None}, "noise_sigmas", "verdict", "recipe"};
    a gap is None when a split it needs has no figure yet, its standard error None when
    it cannot be estimated (regression).
    """
    values = {split: figure_of(f) for split, f in results.items()}
    errors = {split: standard_error(f) for split, f in results.items()}
    kind = "error" if any("error" in f for f in results.values()) else "mse"
    gaps, gap_errors = {}, {}
    for gap, (a, b) in _GAP_SPLITS.items():
        va = values.get(a)
        vb = bayes_error if b is None else values.get(b)
        gaps[gap] = None if va is None or vb is None else va - vb
        ea, eb = errors.get(a), 0.0 if b is None else errors.get(b)   # the proxy is a given
        gap_errors[gap] = None if gaps[gap] is None or ea is None or eb is None else math.hypot(ea, eb)
    if gaps["avoidable_bias"] is None:
        verdict = "unknown"
    else:
        over = {g: v for g, v in gaps.items()
                if v is not None and v > tolerance
                and (gap_errors[g] is None or v > NOISE_SIGMAS * gap_errors[g])}
        verdict = max(over, key=over.get) if over else "ok"
    return {"bayes_error": bayes_error, "tolerance": tolerance, "figure": kind,
            "gaps": gaps, "gap_errors": gap_errors, "noise_sigmas": NOISE_SIGMAS,
            "verdict": verdict, "recipe": RECIPES[verdict]}
