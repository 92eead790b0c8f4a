"""deploy/k8s: the manifests parse and agree with each other and with the image on names,
ports, labels, paths and probes."""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from . import files

K8S = files.DEPLOY / "k8s"


def _objects():
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in files.load_yaml_all(path):
            out[(doc["kind"], doc.get("metadata", {}).get("name", path.name))] = doc
    return out


def _trainer():
    return _objects()[("StatefulSet", "learnd")]


def _container():
    (c,) = _trainer()["spec"]["template"]["spec"]["containers"]
    return c


def test_kustomization_lists_every_manifest():
    kustomization = files.load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")


def test_container_ports_are_the_images():
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    exposed = {int(p) for w, rest in files.dockerfile_instructions() if w == "EXPOSE" for p in rest.split()}
    assert set(ports.values()) == exposed
    env = files.dockerfile_env()
    assert ports["metrics"] == int(env["LEARND_METRICS"].rsplit(":", 1)[1])
    for name in ("ingest", "predict", "control", "snapshots"):
        assert ports[name] == int(env[f"LEARND_{name.upper()}"].rsplit(":", 1)[1])


def test_probes_on_healthz_and_readyz():
    c = _container()
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_non_root_read_only_with_resources():
    spec = _trainer()["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
    # The drain before the checkpoint takes up to 60 s.
    assert spec["terminationGracePeriodSeconds"] > 60
    # One trainer owns the state dir: one pod, replaced (never doubled) on an update.
    assert _trainer()["spec"]["replicas"] == 1 and _trainer()["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_state_claim_and_writable_mounts_match_the_image():
    spec = _trainer()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _container()["volumeMounts"]}
    env = files.dockerfile_env()
    # The state dir is the pod's own claim, made from the StatefulSet's template and kept
    # when the StatefulSet is deleted or scaled down.
    claims = {t["metadata"]["name"]: t for t in _trainer()["spec"]["volumeClaimTemplates"]}
    state = mounts[env["LEARND_STATE_DIR"]]
    assert state in claims and state not in volumes
    assert claims[state]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims[state]["spec"]["resources"]["requests"]["storage"]
    assert _trainer()["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                         "whenScaled": "Retain"}
    # With a read-only root, Numba's cache dir is an emptyDir the init container fills
    # from the cache the image warmed.
    cache = mounts[env["NUMBA_CACHE_DIR"]]
    assert "emptyDir" in volumes[cache]
    (init,) = spec["initContainers"]
    assert init["image"] == _container()["image"]
    (init_mount,) = init["volumeMounts"]
    assert init_mount["name"] == cache
    assert f"{env['NUMBA_CACHE_DIR']}/. {init_mount['mountPath']}/" in " ".join(init["command"])


def test_services_select_the_pod_and_name_its_ports():
    objects = _objects()
    pod_labels = _trainer()["spec"]["template"]["metadata"]["labels"]
    assert _trainer()["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in _container()["ports"]}
    learnd = objects[("Service", "learnd")]
    assert {p["name"] for p in learnd["spec"]["ports"]} == port_names
    # Ingest must reach a pod that is not ready yet: it becomes ready on its first batch.
    assert learnd["spec"]["publishNotReadyAddresses"] is True
    predict = objects[("Service", "learnd-predict")]
    assert [p["name"] for p in predict["spec"]["ports"]] == ["predict"]
    assert not predict["spec"].get("publishNotReadyAddresses", False)
    for service in (learnd, predict):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])


def test_the_trainer_is_named_by_a_headless_service():
    objects = _objects()
    pod_labels = _trainer()["spec"]["template"]["metadata"]["labels"]
    governing = objects[("Service", _trainer()["spec"]["serviceName"])]
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= pod_labels.items()
    # The pod's name must resolve while it starts (ingest reaches it before it is ready).
    assert governing["spec"]["publishNotReadyAddresses"] is True
    port_names = {p["name"] for p in _container()["ports"]}
    assert all(p["targetPort"] in port_names for p in governing["spec"]["ports"])
    # Nothing else runs the trainer: no Deployment or claim of its own beside the StatefulSet.
    assert ("Deployment", "learnd") not in objects
    assert not [name for kind, name in objects if kind == "PersistentVolumeClaim"]


def test_the_service_monitor_scrapes_the_metrics_port_as_job_learnd():
    objects = _objects()
    monitor = objects[("ServiceMonitor", "learnd")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for (kind, _), s in objects.items() if kind == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["learnd"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The operator names the job after the Service; the alert rules select job="learnd",
    # or job="learnd-follower" (the followers' Service) for the followers' own alert.
    assert "jobLabel" not in monitor["spec"]
    followers = objects[("ServiceMonitor", "learnd-follower")]
    assert "jobLabel" not in followers["spec"] and ("Service", "learnd-follower") in objects
    for rule in files.rules():
        job = "learnd-follower" if "learnd_follower_" in rule["expr"] else "learnd"
        assert f'job="{job}"' in rule["expr"], rule["alert"]


def test_followers_follow_the_learnd_service_and_scale_behind_their_own():
    from learnd.clients.cli import build_parser

    objects = _objects()
    deployment = objects[("Deployment", "learnd-follower")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(c["args"])
    assert args.command == "follow"
    host, port = args.source.removeprefix("tcp://").rsplit(":", 1)
    learnd = objects[("Service", "learnd")]
    assert host == "learnd" and int(port) == next(p["port"] for p in learnd["spec"]["ports"]
                                                  if p["name"] == "snapshots")
    # A follower must never be taken for the trainer, nor the trainer for a follower.
    assert not learnd["spec"]["selector"].items() <= pod_labels.items()
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = files.dockerfile_env()
    for name in ("predict", "control", "metrics"):
        assert ports[name] == int(env[f"LEARND_{name.upper()}"].rsplit(":", 1)[1])
    assert c["resources"]["requests"]["cpu"]       # what the autoscaler's utilization divides by
    hpa = objects[("HorizontalPodAutoscaler", "learnd-follower")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "learnd-follower"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    service = objects[("Service", "learnd-follower")]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "predict" in {p["name"] for p in service["spec"]["ports"]}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    monitor = objects[("ServiceMonitor", "learnd-follower")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= learnd["metadata"]["labels"].items()


# Kinds whose schemas are not the Kubernetes API's: the Prometheus operator's
# ServiceMonitor (a CustomResourceDefinition) and kustomize's own file.  The tests above
# check those two by hand.
NOT_IN_THE_API = {"ServiceMonitor", "Kustomization"}
# The newest Kubernetes release kubernetes-validate carries schemas for, and one three
# minor releases older (clusters run behind).
API_VERSIONS = ("1.34.0", "1.37.0")


def _api_objects():
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in files.load_yaml_all(path)
            if doc["kind"] not in NOT_IN_THE_API]


@pytest.mark.parametrize("version", API_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    """Offline, strict: a misspelled or misplaced field is an error, not ignored."""
    checked = []
    for name, doc in _api_objects():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is not valid for Kubernetes "
                        f"{version}: {e}")
        checked.append(doc["kind"])
    assert {"StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler"} <= set(checked)


def test_the_schema_check_refuses_a_misplaced_field():
    trainer = copy.deepcopy(_trainer())
    trainer["spec"]["template"]["spec"]["containers"][0]["port"] = 5555     # for `ports`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(trainer, API_VERSIONS[-1], strict=True)
