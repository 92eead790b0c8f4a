"""Bias / variance diagnosis from the errors of the evaluated splits.

With the human-level (Bayes proxy) error e*, and the errors on train, train-dev, dev
and test:

    avoidable bias        = train - e*          the model cannot fit its own training data
    variance              = train-dev - train   it fits them but does not generalize
    data mismatch         = dev - train-dev     it generalizes, but the target data differ
    dev overfitting       = test - dev          the dev set was tuned to
    variance or mismatch  = dev - train         one of the two above; only train-dev tells which

The verdict is the largest gap that is both above the tolerance and more than
NOISE_SIGMAS standard errors above zero, with the recipe that addresses it; "ok" when
no gap that can be measured is, and "unknown" before the train split has been
evaluated.  A dev error far above the train error is never "ok": when neither variance
nor data mismatch counts on its own (no train-dev rows, or too few to tell), their sum
dev - train is weighed by the same rule and the verdict is "variance_or_mismatch".
The standard error matters because held-out sets are small: 150 dev rows at 3% error
and 150 test rows at 6% differ by 0.03 by chance alone about one time in five, and a gap
that small would otherwise send the operator after a bigger dev set.  Errors are
proportions of distinct rows, so a split's standard error is binomial; for regression
(MSE) none is known and the tolerance alone decides.

A gap that cannot be measured is named with the reason its splits have no figure
(`why_no_figure`), so a status never passes over it in silence.
"""
from __future__ import annotations

import math

GAPS = ("avoidable_bias", "variance", "data_mismatch", "dev_overfitting", "variance_or_mismatch")
VERDICTS = ("ok", *GAPS, "unknown")
SPLITS = ("train", "train_dev", "dev", "test")

# (the split whose figure the gap subtracts from, the split it subtracts; None = Bayes proxy)
_GAP_SPLITS = {
    "avoidable_bias": ("train", None),
    "variance": ("train_dev", "train"),
    "data_mismatch": ("dev", "train_dev"),
    "dev_overfitting": ("test", "dev"),
    "variance_or_mismatch": ("dev", "train"),
}
# The gaps variance_or_mismatch is the sum of: when one of them counts, it says more.
_PARTS = ("variance", "data_mismatch")

RECIPES = {
    "ok": "no gap that could be measured is above the tolerance and its noise: keep training on "
          "fresh data and watch the dev error",
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
    "variance_or_mismatch": "dev error is far above train error: variance or data mismatch, and only "
                            "a train-dev set tells which; send training rows with split auto so a "
                            "train-dev set is kept, or send train_dev rows",
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


def figure_for(task, results):
    """"error", "mse", or None while neither the task nor any figure says which."""
    if task is not None:
        return "mse" if task == "regression" else "error"
    if not results:
        return None
    return "error" if any("error" in f for f in results.values()) else "mse"


def diagnose(results, bayes_error=0.0, tolerance=0.02, task=None, no_figure=None):
    """The diagnosis for evaluation results {split: figures}.

    task: the stream's task when known (it names the figure before any evaluation).
    no_figure: {split: why it has no figure} for the splits missing from results
    (see why_no_figure); a split missing from both is said to have "no figure".

    Returns {"bayes_error", "tolerance", "figure", "gaps": {gap: value or None},
    "gap_errors": {gap: standard error or None}, "unmeasured": {gap: reason},
    "noise_sigmas", "verdict", "recipe"}; a gap is None, and listed in unmeasured, when a
    split it needs has no figure; its standard error None when it cannot be estimated
    (regression).
    """
    no_figure = no_figure or {}
    values = {split: figure_of(f) for split, f in results.items()}
    errors = {split: standard_error(f) for split, f in results.items()}
    gaps, gap_errors, unmeasured = {}, {}, {}
    for gap, (a, b) in _GAP_SPLITS.items():
        va = values.get(a)
        vb = bayes_error if b is None else values.get(b)
        gaps[gap] = None if va is None or vb is None else va - vb
        ea, eb = errors.get(a), 0.0 if b is None else errors.get(b)   # the proxy is a given
        gap_errors[gap] = None if gaps[gap] is None or ea is None or eb is None else math.hypot(ea, eb)
        if gaps[gap] is None:
            missing = [s for s in (a, b) if s is not None and values.get(s) is None]
            unmeasured[gap] = "; ".join(no_figure.get(s, f"no {s} figure") for s in missing)
    if gaps["avoidable_bias"] is None:
        verdict = "unknown"
    else:
        over = {g: v for g, v in gaps.items()
                if v is not None and v > tolerance
                and (gap_errors[g] is None or v > NOISE_SIGMAS * gap_errors[g])}
        if any(g in over for g in _PARTS):
            over.pop("variance_or_mismatch", None)
        verdict = max(over, key=over.get) if over else "ok"
    return {"bayes_error": bayes_error, "tolerance": tolerance, "figure": figure_for(task, results),
            "gaps": gaps, "gap_errors": gap_errors, "unmeasured": unmeasured,
            "noise_sigmas": NOISE_SIGMAS, "verdict": verdict, "recipe": RECIPES[verdict]}


def why_no_figure(split, held, sent, fractions, frozen=False, eval_interval_s=None):
    """Why `split` has no figure yet, in words an operator can act on.

    held: rows the split holds now (distinct rows for held-out splits, the trained rows'
    window for train); sent: {split a message named: rows} accepted so far ("auto",
    "train", "train_dev", "dev", "test"); fractions: {"dev_fraction", "test_fraction",
    "train_dev_fraction"} of rows sent with split auto; frozen: training is frozen.
    """
    if held:
        every = "" if eval_interval_s is None else f" (it runs every {eval_interval_s:g} s)"
        what = f"the last {held} trained rows" if split == "train" else f"{held} distinct rows"
        return f"{split} split holds {what} and has not been evaluated yet{every}"
    auto = sent.get("auto", 0)
    if split == "train":
        if frozen:
            return "train split empty: training is frozen, no row has been trained on (learnd unfreeze)"
        if auto + sent.get("train", 0) == 0:
            return "train split empty: no training rows yet (send rows with split train or auto)"
        return "train split empty: no training step yet (a step takes batch_size rows, or those " \
               "waiting batch_linger_ms)"
    fraction = fractions[f"{split}_fraction"]
    if split == "train_dev":
        remedy = "send training rows with split auto so a train-dev set is kept, or send train_dev rows"
        if auto == 0:
            if sent.get("train", 0):
                return f"train_dev split empty: rows are sent with split train; {remedy}"
            return f"train_dev split empty: no rows sent with split auto or train_dev yet; {remedy}"
        if fraction == 0:
            return ("train_dev split empty: train_dev_fraction is 0, so rows sent with split auto keep "
                    "no train-dev set; set train_dev_fraction > 0, or send train_dev rows")
        return (f"train_dev split empty: none of the {auto} rows sent with split auto has landed in it "
                f"yet (train_dev_fraction {fraction:g} of those that would train do); send more, or "
                f"send train_dev rows")
    remedy = f"send rows of the target distribution with split {split}, or training rows with split auto"
    if auto == 0:
        return f"{split} split empty: no rows sent with split {split} or auto yet; {remedy}"
    if fraction == 0:
        return (f"{split} split empty: {split}_fraction is 0, so rows sent with split auto keep no "
                f"{split} set; send rows with split {split}")
    return (f"{split} split empty: none of the {auto} rows sent with split auto has landed in it yet "
            f"({split}_fraction {fraction:g} of them do); send more, or send rows with split {split}")
