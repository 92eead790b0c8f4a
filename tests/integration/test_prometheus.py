"""A real Prometheus server scraping a live daemon with deploy/prometheus's config and
alert rules; promtool on the daemon's exposition; and every metric the dashboard and the
rules read exists in docs/metrics.md and in a live exposition."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from learnd.clients.launch import terminate
from learnd.engine.datasets import split
from tests.conftest import Daemon
from tests.deploy import files

from .exposition import FAST_EVAL_ENV, drive_to_full_exposition, exposed_names

# Under CI (.ci/run installs it) a missing Prometheus fails these tests instead of skipping them.
needs_prometheus = pytest.mark.skipif(
    (shutil.which("prometheus") is None or shutil.which("promtool") is None) and not os.environ.get("CI"),
    reason="Prometheus is not installed (.ci/run installs Debian's prometheus package)")

SCRAPE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(daemon, exposition text) of a daemon that has trained, evaluated every split,
    served predictions and refused a message."""
    Xtr, ytr, _, _ = split("digits")
    daemon = Daemon(tmp_path_factory.mktemp("prom") / "state", env=FAST_EVAL_ENV).start()
    try:
        yield daemon, drive_to_full_exposition(daemon, Xtr, ytr)
    finally:
        daemon.kill()


def test_every_metric_the_dashboard_and_rules_read_is_documented_and_exposed(live):
    _, text = live
    families, samples = exposed_names(text)
    help_lines = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(help_lines) == len(set(help_lines)), "a metric family is exposed twice"
    documented = files.documented_metrics()
    used = {}
    for where, exprs in (("dashboard", files.dashboard_exprs()),
                         ("rules.yml", [r["expr"] for r in files.rules()])):
        for expr in exprs:
            for name in files.metric_names(expr):
                used.setdefault(name, where)
    assert len(used) > 25
    undocumented = {n: w for n, w in used.items() if files.base_name(n, documented) not in documented}
    assert undocumented == {}
    # A follower's own series (documented "(followers only)") are not in a daemon's
    # exposition; test_followers.py checks that a follower exposes them.
    follower_only = files.follower_only_metrics()
    assert {n for n in used if n.startswith("learnd_follower_")} <= follower_only
    not_exposed = {n: w for n, w in used.items()
                   if n not in samples and n not in families and n not in follower_only}
    assert not_exposed == {}


@needs_prometheus
def test_promtool_accepts_the_exposition(live):
    _, text = live
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool lints naming conventions too; any remark would be printed here.
    assert (result.stdout + result.stderr).strip() == ""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A `prometheus` server on a loopback port with deploy/prometheus/prometheus.yml
    pointed at one daemon, scraping and evaluating every second."""

    def __init__(self, workdir, metrics_host_port):
        config = files.load_yaml(files.PROMETHEUS_CONFIG)
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(files.RULES)]
        # Only the daemon's job: the followers' job (learnd-follower) has no target here;
        # tests/integration/test_followers.py checks a follower's exposition.
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "learnd"]
        job["static_configs"] = [{"targets": [metrics_host_port]}]
        config["scrape_configs"] = [job]
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = _free_port()
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:    # a bad query answers 400 with a JSON body
            return json.load(exc)

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                value = predicate()
            except (urllib.error.URLError, ConnectionError):
                value = None      # not listening yet
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"{what} not seen within {SCRAPE_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self):
        terminate(self.proc, 30)
        self._log.close()


@needs_prometheus
def test_a_real_prometheus_scrapes_the_daemon_and_evaluates_the_rules(live, tmp_path, figures):
    daemon, _ = live
    host_port = daemon.metrics_url.split("//", 1)[1].split("/", 1)[0]
    prom = Prometheus(tmp_path, host_port)
    try:
        t0 = time.monotonic()

        def trained():
            answer = prom.api("query", query='learnd_samples_trained_total{job="learnd"}')
            result = answer["data"]["result"] if answer.get("status") == "success" else []
            return result if result and float(result[0]["value"][1]) > 0 else None

        (sample,) = prom.wait_for(trained, "learnd_samples_trained_total > 0")
        figures(f"first scrape with trained rows after {time.monotonic() - t0:.1f} s: "
                f"learnd_samples_trained_total = {sample['value'][1]}")
        assert sample["metric"]["instance"] == host_port

        (target,) = prom.api("targets", state="active")["data"]["activeTargets"]
        assert (target["health"], target["labels"]["job"], target["scrapeUrl"]) == \
            ("up", "learnd", daemon.metrics_url)

        series = prom.api("label/__name__/values")["data"]
        assert {n for n in series if n.startswith("learnd_")} >= \
            {"learnd_eval_error", "learnd_grad_norm", "learnd_predict_latency_seconds_bucket"}

        # Every rule loaded and evaluated on live series without an error.
        def evaluated():
            groups = prom.api("rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20") and
                                          r["health"] != "unknown" for r in rules) else None

        loaded = prom.wait_for(evaluated, "an evaluation of every rule")
        assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in files.rules())
        assert {r["name"]: (r["health"], r.get("lastError", "")) for r in loaded} == \
            {r["name"]: ("ok", "") for r in loaded}
        # A healthy daemon raises none of them (up, trained just now, no failures).
        firing = [a for a in prom.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
        assert firing == []

        # Every query of the dashboard and every rule is PromQL this server accepts.
        bad = {}
        for expr in [files.as_prometheus_query(e) for e in files.dashboard_exprs()] + \
                [r["expr"] for r in files.rules()]:
            answer = prom.api("query", query=expr)
            if answer.get("status") != "success":
                bad[expr] = answer.get("error")
        assert bad == {}
    finally:
        prom.stop()
