"""Predict latency over the most recent answered requests, for the satisficing metric:
its 99th percentile against a configured bound.  Refused requests are not in it: their
replies say nothing of how fast the model is served."""
from __future__ import annotations

import numpy as np

WINDOW = 4096      # requests: the p99 of the last few seconds at a busy daemon


class LatencyWindow:
    """A ring of the last `size` latencies (seconds).  Written by the predict thread
    only; read (a copy) at scrape and status time, where a torn read of one slot moves a
    percentile by at most one sample."""

    def __init__(self, size=WINDOW):
        self.values = np.zeros(size)
        self.count = 0

    def record(self, seconds):
        self.values[self.count % self.values.shape[0]] = seconds
        self.count += 1

    def quantile(self, q):
        """The q-quantile (0..1) of the recent latencies, or NaN before any request."""
        n = min(self.count, self.values.shape[0])
        if n == 0:
            return float("nan")
        return float(np.quantile(self.values[:n], q))


def satisficing_values(window, bound_s):
    """The satisficing gauges for a metrics live collector: {name: (help, value)}."""
    s = satisficing(window, bound_s)
    met = float("nan") if s["met"] is None else float(s["met"])
    return {
        "learnd_predict_latency_p99_seconds": (
            f"p99 of the last {WINDOW} predict latencies.", s.get("p99_seconds", float("nan"))),
        "learnd_predict_latency_bound_seconds": ("Configured bound on the predict p99 (satisficing).", bound_s),
        "learnd_satisficing_met": ("1 when the satisficing metric is within its bound.",
                                   ("metric", {"predict_latency_p99": met})),
    }


def satisficing(window, bound_s):
    """{"metric", "p99_seconds", "bound_seconds", "requests", "met"}: requests is how many
    answered requests the p99 is over; met (and the p99) is unknown, None (NaN), before
    the first."""
    p99 = window.quantile(0.99)
    return {"metric": "predict_latency_p99", "p99_seconds": p99, "bound_seconds": bound_s,
            "requests": min(window.count, window.values.shape[0]),
            "met": None if p99 != p99 else bool(p99 <= bound_s)}


def combined_satisficing(parts):
    """One satisficing figure for several predict workers' `satisficing()` dicts: the
    largest p99 (the tree meets its bound only if every worker does), over the requests
    of all of them; None without any part."""
    if not parts:
        return None
    answered = [p for p in parts if p["met"] is not None]
    if not answered:
        return dict(parts[0])
    worst = max(answered, key=lambda p: p["p99_seconds"])
    return {**worst, "requests": sum(p["requests"] for p in parts),
            "met": all(p["met"] for p in answered)}
