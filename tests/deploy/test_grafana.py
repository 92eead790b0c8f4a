"""deploy/grafana: a well-formed dashboard on the provisioned datasource that draws
everything an operator watches."""
from __future__ import annotations

import re

from . import files

PROVISIONED = files.DEPLOY / "grafana/provisioning/datasources/prometheus.yml"


def test_dashboard_shape():
    d = files.dashboard()
    assert d["uid"] == "learnd" and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in files.dashboard_panels():
        assert p["type"] in ("timeseries", "stat") and p["title"] and p["description"], p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]


def test_panels_do_not_overlap():
    cells = {}
    for p in files.dashboard()["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]


def test_every_panel_queries_the_provisioned_prometheus():
    (ds,) = files.load_yaml(PROVISIONED)["datasources"]
    variables = {v["name"]: v for v in files.dashboard()["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == ds["uid"]
    for p in files.dashboard_panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    # Every variable a query uses is defined (or one of Grafana's own).
    for expr in files.dashboard_exprs():
        for name in re.findall(r"\$(\w+)", expr):
            assert name in variables or name.startswith("__"), (name, expr)
        files.as_prometheus_query(expr)


def _panel(title):
    (p,) = [p for p in files.dashboard_panels() if p["title"] == title]
    return " ".join(t["expr"] for t in p["targets"])


def test_the_panels_an_operator_needs():
    assert "rate(learnd_samples_trained_total" in _panel("Throughput")
    assert "learnd_train_loss" in _panel("Training loss (EWMA)")
    assert "learnd_learning_rate" in _panel("Learning rate")
    assert "learnd_eval_error" in _panel("Evaluation error by split")
    assert "learnd_diagnosis_gap" in _panel("Diagnosis gaps")
    assert "learnd_diagnosis_verdict" in _panel("Diagnosis")
    latency = _panel("Predict latency")
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (instance, le) (rate(learnd_predict_latency_seconds_bucket" \
            in latency
    assert "learnd_predict_latency_bound_seconds" in latency
    assert "learnd_queue_depth" in _panel("Queue depth")
    refused = _panel("Rejected inputs and refused handshakes")
    assert "sum by (instance, reason) (rate(learnd_rejected_total" in refused
    assert "learnd_auth_failures_total" in refused
    assert "learnd_checkpoints_total" in _panel("Checkpoints")
    assert "learnd_nonfinite_steps_total" in _panel("Non-finite steps")
    assert "learnd_grad_norm" in _panel("Gradient norm per layer")
    assert "learnd_weight_norm" in _panel("Weight norm per layer")
    for title in ("Gradient norm per layer", "Weight norm per layer"):
        (p,) = [p for p in files.dashboard_panels() if p["title"] == title]
        assert "{{param}}" in p["targets"][0]["legendFormat"]


def test_operations_doc_reads_every_panel():
    doc = files.OPERATIONS_DOC.read_text()
    for p in files.dashboard_panels():
        assert f"**{p['title']}**" in doc, p["title"]


def test_every_drift_is_marked_on_the_dashboard():
    (drift,) = [a for a in files.dashboard()["annotations"]["list"] if a["name"] == "Drift"]
    assert drift["enable"] and drift["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "learnd_drift_detected_total" in drift["expr"] and "$instance" in drift["expr"]
    files.as_prometheus_query(drift["expr"])
    assert "Drift" in files.OPERATIONS_DOC.read_text()
