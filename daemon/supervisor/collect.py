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
    "learnd_ingest_queued_bytes": "ingest",
    "learnd_ingest_queued_limit_bytes": "ingest",
    "learnd_predict_latency_p99_seconds": "predict",
    "learnd_predict_latency_bound_seconds": "predict",
    "learnd_satisficing_met": "predict",
}
# learnd_auth_allowed_keys{socket}: the process that binds each socket (the predict
# socket: its one worker, or the supervisor's proxy in front of several; the one that
# binds it is the only one that sets the gauge); the control socket: the supervisor.
SOCKET_OWNERS = {"ingest": ("ingest",), "predict": ("predict", "supervisor"), "snapshots": ("trainer",)}


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


def _owns(role, name, labels):
    """Whether `role`'s value of a gauge is the tree's."""
    kind = role.split("-")[0]
    if name == "learnd_auth_allowed_keys":
        return kind in SOCKET_OWNERS.get(labels.get("socket"), ("supervisor",))
    return GAUGE_OWNERS.get(name, "trainer") == kind


def _samples(text):
    """(family name, type, help, sample name, labels, value) of an exposition, without
    the per-process `_created` start times (a sum of them means nothing)."""
    for fam in text_string_to_metric_families(text):
        if fam.name.endswith("_created"):
            continue
        yield fam.name, fam.type, fam.documentation, None, (), None   # the family, even empty
        for s in fam.samples:
            if not s.name.endswith("_created"):
                yield fam.name, fam.type, fam.documentation, s.name, tuple(sorted(s.labels.items())), s.value


def counter_values(text):
    """{(family, type, help, sample, labels): value} of the counters and histograms in an
    exposition: what a process has counted, to keep once it is gone."""
    return {(f, t, h, n, labels): v for f, t, h, n, labels, v in _samples(text)
            if n is not None and t != "gauge"}


def merge(expositions, stale=None, retired=None):
    """Metric families for {role: exposition text}, merged as the module says.

    stale: {role: exposition} of children that did not answer this scrape (restarting,
    or slow): their counters, as last seen, still count, their gauges do not.
    retired: counter_values() summed over the processes that died, added to the sums so
    that a counter of the tree never goes down when a child restarts (Prometheus would
    take the drop for a reset and count the whole remaining total again)."""
    families = {}
    values = {}      # (family, sample name, labels) -> value

    def add(role, f, t, h, n, labels, v, gauges=True):
        families.setdefault(f, (t, h))          # a family no process has set yet is still declared
        if n is None:
            return
        key = (f, n, labels)
        if t == "gauge":
            if not gauges or not _owns(role, f, dict(labels)):
                return
            # Several workers own a latency gauge: the largest is the tree's.
            old = values.get(key)
            values[key] = v if old is None or not old >= v else old
        else:
            values[key] = values.get(key, 0.0) + v

    for role, text in expositions.items():
        for sample in _samples(text):
            add(role, *sample)
    for role, text in (stale or {}).items():
        for sample in _samples(text):
            add(role, *sample, gauges=False)
    for (f, t, h, n, labels), v in (retired or {}).items():
        add("retired", f, t, h, n, labels, v, gauges=False)
    out = {name: Metric(name, doc, kind) for name, (kind, doc) in families.items()}
    for (fname, sname, labels), value in values.items():
        out[fname].add_sample(sname, dict(labels), value)
    return list(out.values())


class TreeCollector:
    """A prometheus_client collector: the merged metrics of the children `addresses()`
    names ({role: control address}) at scrape time.

    It remembers each child's last exposition (and its pid): a child that misses a
    scrape still counts with what it last said, and when a child is replaced by a new
    process, the old one's counters are kept in `retired`, so the tree's counters only
    ever go up."""

    def __init__(self, ctx, addresses, failures, own_registry):
        """own_registry: the supervisor's Metrics registry, merged as role "supervisor"."""
        self.ctx = ctx
        self.addresses = addresses
        self.failures = failures
        self.own_registry = own_registry
        self.last = {}           # role -> (pid, exposition text)
        self.retired = {}        # counter_values() key -> value, over dead processes

    def collect(self):
        texts = {"supervisor": generate_latest(self.own_registry).decode()}
        addresses = self.addresses()
        for role, address in addresses.items():
            result = ask(self.ctx, address, "metrics")
            if result is None:
                self.failures.labels(role).inc()
                continue
            self._seen(role, result["pid"], result["text"])
            texts[role] = result["text"]
        stale = {role: text for role, (_, text) in self.last.items() if role not in texts}
        yield from merge(texts, stale, self.retired)

    def _seen(self, role, pid, text):
        old = self.last.get(role)
        if old is not None and old[0] != pid:
            for key, value in counter_values(old[1]).items():
                self.retired[key] = self.retired.get(key, 0.0) + value
        self.last[role] = (pid, text)

    def describe(self):
        return []
