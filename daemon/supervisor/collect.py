"""One /metrics for the whole process tree: the children's expositions merged.

At each scrape the supervisor asks every child for its exposition over the child's
control socket and merges them under today's names: counters and histograms are summed
over the processes (each counts its own events: rejected messages on ingest and on
predict add up), and a gauge is taken from the process that owns it (the trainer for
the model's figures, ingest for its id store, the predict workers for latency, the
largest over several workers).  A child that does not answer in time is left out of
that scrape and counted in learnd_metrics_collect_failures_total{role}.
"""
from __future__ import annotations

import logging

import zmq
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from learnd.clients import protocol

log = logging.getLogger("learnd.collect")

TIMEOUT_MS = 2000
# Gauges some process other than the trainer owns ("predict": every predict worker).
GAUGE_OWNERS = {
    "learnd_uptime_seconds": "supervisor",
    "learnd_ready": "supervisor",
    "learnd_delayed_label_store_rows": "ingest",
    "learnd_predict_latency_p99_seconds": "predict",
    "learnd_predict_latency_bound_seconds": "predict",
    "learnd_satisficing_met": "predict",
}
# learnd_auth_allowed_keys{socket}: each socket's owner.
SOCKET_OWNERS = {"ingest": "ingest", "predict": "predict", "snapshots": "trainer"}


def ask(ctx, address, op, timeout_ms=TIMEOUT_MS):
    """One request to a child's control socket on its own short-lived socket (usable
    from any thread); the result dict, or None when the child does not answer in time."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send_multipart(protocol.encode({"op": op}))
        if not sock.poll(timeout_ms):
            return None
        reply = protocol.decode(sock.recv_multipart(), reply=True)
        return reply.header.get("result") if reply.header.get("ok") else None
    finally:
        sock.close()


def _owner_of(name, labels):
    if name == "learnd_auth_allowed_keys":
        return SOCKET_OWNERS.get(labels.get("socket"), "supervisor")
    return GAUGE_OWNERS.get(name, "trainer")


def merge(expositions):
    """Metric families for {role: exposition text}, merged as the module says."""
    families = {}
    out_order = []
    values = {}      # (family, sample name, labels) -> value
    for role, text in expositions.items():
        kind = role.split("-")[0]
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created"):      # each process's own start times: no sum of them
                continue
            if fam.name not in families:
                families[fam.name] = (fam.type, fam.documentation)
                # A labelled family no process has set yet is still declared.
                out_order.append(fam.name)
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                key = (fam.name, s.name, tuple(sorted(s.labels.items())))
                if fam.type == "gauge":
                    if _owner_of(fam.name, s.labels) != kind:
                        continue
                    # Several workers own a latency gauge: the largest is the tree's.
                    old = values.get(key)
                    values[key] = s.value if old is None or not old >= s.value else old
                else:
                    values[key] = values.get(key, 0.0) + s.value
    out = {name: Metric(name, families[name][1], families[name][0]) for name in out_order}
    for (fname, sname, labels), value in values.items():
        out[fname].add_sample(sname, dict(labels), value)
    return list(out.values())


class TreeCollector:
    """A prometheus_client collector: the merged metrics of the children `addresses()`
    names ({role: control address}) at scrape time."""

    def __init__(self, ctx, addresses, failures, own_registry):
        """own_registry: the supervisor's Metrics registry, merged as role "supervisor"."""
        self.ctx = ctx
        self.addresses = addresses
        self.failures = failures
        self.own_registry = own_registry

    def collect(self):
        texts = {"supervisor": generate_latest(self.own_registry).decode()}
        for role, address in self.addresses().items():
            result = ask(self.ctx, address, "metrics")
            if result is None:
                self.failures.labels(role).inc()
                continue
            texts[role] = result["text"]
        yield from merge(texts)

    def describe(self):
        return []
