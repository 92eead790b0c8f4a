"""The files under deploy/, read the way their tools read them."""
from __future__ import annotations

import json
import pathlib
import re
import shlex

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "learnd.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Grafana's variables in the dashboard's queries, and what they become for Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def dockerfile_instructions(path=DOCKERFILE):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(path=DOCKERFILE):
    """{name: value} from the ENV instructions of the last stage."""
    env = {}
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            env = {}
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_panels():
    """The dashboard's panels that draw something (rows left out)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs():
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def as_prometheus_query(expr):
    """A dashboard query as Prometheus receives it: Grafana's variables substituted."""
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    if "$" in expr:
        raise ValueError(f"a Grafana variable the tests do not know in {expr!r}")
    return expr


def rules():
    """[rule dict] of every group in rules.yml."""
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def metric_names(expr):
    """The learnd_* names an expression reads."""
    return set(re.findall(r"\blearnd_[a-z0-9_]+", expr))


def documented_metrics():
    """{name: type} of every metric in docs/metrics.md."""
    rows = re.findall(r"^\| `(learnd_[a-z0-9_]+)` \| (\w+) \|", METRICS_DOC.read_text(), flags=re.M)
    return dict(rows)


def follower_only_metrics():
    """Names docs/metrics.md marks "(followers only)": a follower exposes them, a daemon does not."""
    return set(re.findall(r"^\| `(learnd_[a-z0-9_]+)`.*\(followers only\)", METRICS_DOC.read_text(), flags=re.M))


def base_name(name, documented):
    """A histogram's _bucket, _sum or _count series named by its histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and documented.get(name[:-len(suffix)]) == "histogram":
            return name[:-len(suffix)]
    return name
