"""deploy/compose.yaml: the services, their mounts, and the names and ports they reach
each other by."""
from __future__ import annotations

import re
import shlex

from learnd.clients.cli import build_parser

from . import files

COMPOSE = files.DEPLOY / "compose.yaml"


def _interpolated(value):
    """`value` with compose's ${NAME:-default} replaced by its default (nothing set)."""
    if isinstance(value, dict):
        return {k: _interpolated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolated(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return value


def _compose():
    """The compose file as compose reads it with no variable set."""
    return _interpolated(files.load_yaml(COMPOSE))


def _bind_mounts(service):
    """[(source path, target)] of a service's bind mounts (sources relative to deploy/)."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out.append((files.DEPLOY / source, target))
    return out


def test_services_and_named_volumes():
    compose = _compose()
    assert set(compose["services"]) == {"learnd", "replay", "follower-1", "follower-2", "followers-lb",
                                        "prometheus", "grafana"}
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
            if not v.startswith(".")}
    assert used == set(compose["volumes"]) == {"learnd-state", "prometheus-data", "grafana-data"}


def test_learnd_is_built_from_the_dockerfile_with_its_ports_and_state_volume():
    learnd = _compose()["services"]["learnd"]
    context = (COMPOSE.parent / learnd["build"]["context"]).resolve()
    assert context == files.ROOT and (context / learnd["build"]["dockerfile"]) == files.DOCKERFILE
    published = {p.rsplit(":", 1)[1] for p in learnd["ports"]}
    exposed = {p for w, rest in files.dockerfile_instructions() if w == "EXPOSE" for p in rest.split()}
    assert published == exposed
    assert f"learnd-state:{files.dockerfile_env()['LEARND_STATE_DIR']}" in learnd["volumes"]
    # SIGTERM drains for up to 60 s before the checkpoint: compose must wait longer.
    assert int(learnd["stop_grace_period"].rstrip("s")) > 60


def test_every_bind_mount_points_at_a_file_in_deploy():
    for name, service in _compose()["services"].items():
        for source, _ in _bind_mounts(service):
            assert source.exists(), (name, source)


def test_the_replay_service_runs_real_commands_against_the_learnd_service():
    compose = _compose()
    replay = compose["services"]["replay"]
    assert replay["depends_on"]["learnd"]["condition"] == "service_healthy"
    learnd = compose["services"]["learnd"]
    assert replay["restart"] == "no"
    assert (replay["image"], replay["build"]) == (learnd["image"], learnd["build"])
    (script,) = replay["command"]
    parser = build_parser()
    commands = [shlex.split(part.split(">")[0]) for part in script.split("&&")]
    assert [c[:2] for c in commands] == [["learnd", "replay"], ["learnd", "predict"]]
    replay_args = parser.parse_args(commands[0][1:])
    predict_args = parser.parse_args(commands[1][1:])
    assert replay_args.ingest == "tcp://learnd:5555" and predict_args.predict == "tcp://learnd:5556"
    # The file is the one the image links to the digits data shipped in the package.
    assert replay_args.file == predict_args.file == "/opt/learnd/demo/digits.npz"
    assert any("/opt/learnd/demo/digits.npz" in rest and "digits.npz" in rest
               for w, rest in files.dockerfile_instructions() if w == "RUN")


def test_prometheus_scrapes_the_learnd_service_and_loads_the_rules():
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = dict((t, s) for s, t in _bind_mounts(prometheus))
    config = files.load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    assert mounts["/etc/prometheus/rules.yml"].resolve() == files.RULES
    assert config["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    metrics_port = files.dockerfile_env()["LEARND_METRICS"].rsplit(":", 1)[1]
    assert set(jobs) == {"learnd", "learnd-follower"}
    assert jobs["learnd"]["static_configs"] == [{"targets": [f"learnd:{metrics_port}"]}]
    followers = sorted(name for name in compose["services"] if name.startswith("follower-"))
    assert jobs["learnd-follower"]["static_configs"] == [{"targets": [f"{f}:{metrics_port}" for f in followers]}]
    # Built from Debian's package on a base given as a build argument.
    assert (COMPOSE.parent / prometheus["build"]["context"]).resolve() == files.DEPLOY / "prometheus"
    assert prometheus["build"]["args"]["DEBIAN_IMAGE"] == "debian:bookworm-slim"


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard():
    grafana = _compose()["services"]["grafana"]
    mounts = {t: s.resolve() for s, t in _bind_mounts(grafana)}
    datasources = files.load_yaml(files.DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = files.load_yaml(files.DEPLOY / "grafana/provisioning/dashboards/learnd.yml")
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == files.DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning/datasources"] == files.DEPLOY / "grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == files.DEPLOY / "grafana/provisioning/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + files.DASHBOARD.name


def test_two_followers_of_the_learnd_service_behind_one_predict_port():
    compose = _compose()
    learnd = compose["services"]["learnd"]
    followers = [compose["services"][f"follower-{i}"] for i in (1, 2)]
    snapshots_port = files.dockerfile_env()["LEARND_SNAPSHOTS"].rsplit(":", 1)[1]
    for follower in followers:
        assert (follower["image"], follower["build"]) == (learnd["image"], learnd["build"])
        args = build_parser().parse_args(follower["command"])
        assert args.command == "follow" and args.source == f"tcp://learnd:{snapshots_port}"
        assert "ports" not in follower          # reached through the balancer only
    lb = compose["services"]["followers-lb"]
    mounts = {t: s for s, t in _bind_mounts(lb)}
    config = mounts["/usr/local/etc/haproxy/haproxy.cfg"].read_text()
    predict_port = files.dockerfile_env()["LEARND_PREDICT"].rsplit(":", 1)[1]
    metrics_port = files.dockerfile_env()["LEARND_METRICS"].rsplit(":", 1)[1]
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", config, flags=re.M)
    assert servers == [(f"follower-{i}", f"follower-{i}", predict_port) for i in (1, 2)]
    assert re.search(rf"^\s*bind :{predict_port}$", config, flags=re.M)
    assert [p.rsplit(":", 1)[1] for p in lb["ports"]] == [predict_port]
    # Only ready followers get connections: the health check asks /readyz on the metrics port.
    assert "option httpchk GET /readyz" in config and f"check port {metrics_port}" in config
    assert re.search(r"^\s*mode tcp$", config, flags=re.M)
