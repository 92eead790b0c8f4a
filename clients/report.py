"""`learnd report`: learning curves as a PNG, from the evaluation history a daemon keeps
in its state dir (`eval-history.jsonl`, one JSON object per evaluation; see
docs/metrics.md).  Needs matplotlib: `pip install 'learnd[report]'`.
"""
from __future__ import annotations

import json
import math
import os

HISTORY_FILE = "eval-history.jsonl"     # written by daemon/history.py
SPLIT_STYLES = {"train": "tab:blue", "train_dev": "tab:orange", "dev": "tab:red", "test": "tab:green"}


class ReportError(Exception):
    pass


def read_records(state_dir):
    """The history's records, oldest first; a torn last line (a crash mid-write) is skipped."""
    path = os.path.join(state_dir, HISTORY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise ReportError(f"no evaluation history at {path}: has the daemon evaluated yet "
                          f"(every eval_interval_s once it has trained)?") from None
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        raise ReportError(f"{path} holds no evaluations yet")
    return records


def curves(records):
    """{"samples": [...], "learning_rate": [...], "train_loss": [...],
    "progressive_error": [...], "error": {split: [...]}, "loss": {split: [...]}, "verdict"}
    with NaN where an evaluation had no figure."""
    nan = float("nan")

    def num(v):
        return nan if v is None else float(v)

    splits = [s for s in SPLIT_STYLES if any(s in r.get("splits", {}) for r in records)]
    out = {"samples": [r["samples"] for r in records],
           "learning_rate": [num(r.get("learning_rate")) for r in records],
           "train_loss": [num(r.get("train_loss")) for r in records],
           "progressive_error": [num((r.get("progressive") or {}).get("window_error")) for r in records],
           "error": {}, "loss": {}, "verdict": records[-1].get("verdict")}
    for key in ("error", "loss"):
        for s in splits:
            out[key][s] = [num(r.get("splits", {}).get(s, {}).get(key if key == "loss" else "error",
                           r.get("splits", {}).get(s, {}).get("mse"))) for r in records]
    return out


def write_report(state_dir, output=None):
    """Write the learning-curve PNG; returns its path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("matplotlib is not installed: pip install 'learnd[report]'") from None
    c = curves(read_records(state_dir))
    output = output or os.path.join(state_dir, "learning-curves.png")
    fig, (ax_err, ax_loss, ax_lr) = plt.subplots(3, 1, figsize=(9, 10), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 3, 1.4]})
    x = c["samples"]
    regression = all(all(math.isnan(v) for v in vals) for vals in c["error"].values()) if c["error"] else True
    for split, values in c["error"].items():
        ax_err.plot(x, values, label=split, color=SPLIT_STYLES[split], marker=".", markersize=3)
    if not all(math.isnan(v) for v in c["progressive_error"]):
        ax_err.plot(x, c["progressive_error"], label="progressive (test-then-train)",
                    color="gray", linestyle="--")
    ax_err.set_ylabel("MSE" if regression else "error (1 - accuracy)")
    ax_err.set_title(f"learnd learning curves — {os.path.abspath(state_dir)}\n"
                     f"last diagnosis: {c['verdict']}", fontsize=10)
    ax_err.legend(loc="upper right", fontsize=8)
    ax_err.grid(alpha=0.3)
    for split, values in c["loss"].items():
        ax_loss.plot(x, values, label=split, color=SPLIT_STYLES[split], marker=".", markersize=3)
    ax_loss.plot(x, c["train_loss"], label="training loss (EWMA, with regularization)",
                 color="black", linewidth=0.8, alpha=0.6)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(x, c["learning_rate"], color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("rows trained")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
