"""The process tree's one exposition: counters summed, each gauge from its owner."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from learnd.daemon.supervisor.collect import merge


def _exposition(counter=0.0, gauges=None, labelled=None):
    r = CollectorRegistry()
    c = Counter("learnd_rejected_total", "Rejected.", ["reason"], registry=r)
    c.labels("bad_header").inc(counter)
    for name, value in (gauges or {}).items():
        Gauge(name, name, registry=r).set(value)
    Gauge("learnd_eval_error", "Error per split.", ["split"], registry=r)   # declared, never set
    if labelled:
        g = Gauge("learnd_auth_allowed_keys", "Keys.", ["socket"], registry=r)
        for sock, n in labelled.items():
            g.labels(sock).set(n)
    return generate_latest(r).decode()


def _values(families):
    out = {}
    text = generate_latest(_Registry(families)).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out, text


class _Registry:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def test_counters_add_up_and_each_gauge_comes_from_its_owner():
    merged = merge({
        "supervisor": _exposition(1, {"learnd_uptime_seconds": 50, "learnd_model_version": 0},
                                  {"control": 2}),
        "ingest": _exposition(2, {"learnd_delayed_label_store_rows": 7, "learnd_model_version": 0},
                              {"ingest": 2}),
        "trainer": _exposition(4, {"learnd_model_version": 12, "learnd_uptime_seconds": 3}, {"snapshots": 2}),
        "predict-0": _exposition(8, {"learnd_predict_latency_p99_seconds": 0.002}, {"predict": 2}),
        "predict-1": _exposition(16, {"learnd_predict_latency_p99_seconds": 0.005}),
    })
    values, text = _values(merged)
    assert values[("learnd_rejected_total", (("reason", "bad_header"),))] == 31
    assert values[("learnd_model_version", ())] == 12                   # the trainer's, not a sum
    assert values[("learnd_uptime_seconds", ())] == 50                  # the supervisor's
    assert values[("learnd_delayed_label_store_rows", ())] == 7
    assert values[("learnd_predict_latency_p99_seconds", ())] == 0.005  # the slowest worker
    assert {k[1][0][1] for k in values if k[0] == "learnd_auth_allowed_keys"} == {
        "control", "ingest", "snapshots", "predict"}
    assert "# HELP learnd_eval_error " in text                          # declared families stay
    assert "_created" not in text                                       # per-process start times


def test_the_tree_counters_never_go_down_when_a_child_restarts_or_misses_a_scrape():
    from learnd.daemon.supervisor.collect import TreeCollector

    failures = Counter("failures_total", "f", ["role"], registry=CollectorRegistry())
    answering = {}
    collector = TreeCollector(None, lambda: dict(answering), failures, CollectorRegistry())
    collector._seen("ingest", 100, _exposition(5, {"learnd_delayed_label_store_rows": 9}))
    # The child is away (restarting): its counters as last seen still count, its gauge not.
    values, _ = _values(list(collector.collect()))
    assert values[("learnd_rejected_total", (("reason", "bad_header"),))] == 5
    assert ("learnd_delayed_label_store_rows", ()) not in values
    # A new process (another pid) counts from 0 again: the old one's total is kept.
    collector._seen("ingest", 101, _exposition(2, {"learnd_delayed_label_store_rows": 1}))
    values, _ = _values(list(collector.collect()))
    assert values[("learnd_rejected_total", (("reason", "bad_header"),))] == 7
    # The same process again: nothing retired twice.
    collector._seen("ingest", 101, _exposition(3))
    values, _ = _values(list(collector.collect()))
    assert values[("learnd_rejected_total", (("reason", "bad_header"),))] == 8
