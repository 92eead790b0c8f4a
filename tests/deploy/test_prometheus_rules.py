"""deploy/prometheus: promtool accepts the config and the rules, every alert has unit
tests that see it fire and stay silent, and docs/operations.md explains each one."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from . import files

# Under CI (.ci/run installs it) a missing promtool fails these tests instead of skipping them.
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                                    reason="promtool is not installed (.ci/run installs Debian's prometheus)")


def _promtool(*args):
    result = subprocess.run(["promtool", *args], cwd=files.RULES.parent, capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules():
    code, out = _promtool("check", "rules", str(files.RULES))
    assert code == 0, out
    assert f"SUCCESS: {len(files.rules())} rules found" in out


@needs_promtool
def test_promtool_check_config():
    code, out = _promtool("check", "config", str(files.PROMETHEUS_CONFIG))
    assert code == 0, out


@needs_promtool
def test_promtool_test_rules():
    code, out = _promtool("test", "rules", str(files.RULES_TEST))
    assert code == 0, out
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing_and_silent():
    tests = files.load_yaml(files.RULES_TEST)
    assert tests["rule_files"] == [files.RULES.name]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    alerts = [r["alert"] for r in files.rules()]
    assert len(alerts) == len(set(alerts))
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires == set(alerts)
    # Silence is also tested where an alert has a look-alike healthy series in its test:
    # an alert_rule_test whose exp_alerts lists fewer instances than its input has.
    for test in tests["tests"]:
        instances = {s["series"].split('instance="')[1].split('"')[0] for s in test["input_series"]}
        for case in test["alert_rule_test"]:
            if len(case.get("exp_alerts", [])) < len(instances):
                silent.add(case["alertname"])
    assert silent == set(alerts)


def test_every_alert_has_a_severity_a_summary_and_a_description():
    for rule in files.rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        # The trainer's alerts on its job; the followers' (learnd follow) on theirs.
        job = "learnd-follower" if "learnd_follower_" in rule["expr"] else "learnd"
        assert f'job="{job}"' in rule["expr"], rule["alert"]


def test_operations_doc_explains_every_alert():
    doc = files.OPERATIONS_DOC.read_text()
    for rule in files.rules():
        assert f"### {rule['alert']}" in doc, rule["alert"]
