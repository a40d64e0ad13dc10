"""The Helm chart, with a real Helm engine (helm-python-sdk bundles Helm v4): lint, render the defaults
and variants, validate every rendered object against the Kubernetes schemas, and check that the
pieces fit together (ports, selectors, addresses, RBAC, secrets, dashboard)."""

import json
import re
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "clusterlink"
NS = "clusterlink-system"
KUBE_VERSION = "1.30"
BASE = {"peer": {"name": "peer1"}}

# The Prometheus Operator's kinds are not in the Kubernetes schemas; the fields this chart uses are
# checked against this subset of their CRDs (monitoring.coreos.com/v1).
_ENDPOINT = {"type": "object", "required": ["port"], "additionalProperties": False,
             "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}
MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"enum": ["ServiceMonitor", "PodMonitor"]},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
            "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array"}}},
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        }},
    },
}

VARIANTS = {
    "defaults": {},
    "nodeport": {"gateway": {"service": {"type": "NodePort", "nodePort": 30443, "port": 443}}},
    "clusterip": {"gateway": {"service": {"type": "ClusterIP"}}},
    "loadbalancer-annotated": {"gateway": {"service": {"annotations": {
                                                           "service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                                                       "loadBalancerSourceRanges": ["10.0.0.0/8"],
                                                       "externalTrafficPolicy": "Local"}}},
    "ha": {"controlplane": {"replicas": 3}, "gateway": {"replicas": 3, "workers": 4}},
    "no-agent": {"agent": {"enabled": False}},
    "privileged-agent-cgroupfs": {"agent": {"privileged": True, "cgroup": "/sys/fs/cgroup/kubepods",
                                            "priorityClassName": "system-node-critical"}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "pod-monitor": {"metrics": {"podMonitor": {"enabled": True, "interval": "15s"}}},
    "inline-certificates": {"certificates": {"create": True, "cert": "CERT", "key": "KEY", "ca": "CA"},
                            "tokens": {"create": False}},
    "labels-and-pull-secrets": {"peer": {"labels": {"cluster": "east", "ip": "10.1.2.3"}},
                                "imagePullSecrets": [{"name": "regcred"}],
                                "image": {"tag": "v9", "pullPolicy": "Always"},
                                "controlplane": {"nodeSelector": {"role": "infra"},
                                                 "tolerations": [{"key": "infra", "operator": "Exists"}]}},
    "no-rbac-no-dashboard": {"rbac": {"create": False}, "dashboard": {"enabled": False}},
    "network-policy": {"networkPolicy": {"enabled": True, "nodeCIDRs": ["10.0.0.0/24", "10.0.1.0/24"]}},
    "mcs": {"mcs": {"enabled": True}, "controlplane": {"dns": {"enabled": True}}},
    "mcs-without-crds": {"mcs": {"enabled": True, "installCRDs": False}},
    "dual-stack-udp-off": {"gateway": {"dualStack": True, "udpIdleTimeout": 90},
                           "agent": {"udp": {"enabled": False, "idleTimeout": 10}, "proxyAddress6": ""}},
    "gateway-sysctls": {"gateway": {"sysctls": [{"name": "net.ipv4.tcp_tw_reuse", "value": "1"},
                                                {"name": "net.ipv4.ip_local_port_range", "value": "20000 60999"}]}},
}


def merge(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values=None, *, release="clusterlink"):
    """Every rendered object (templates only; the CRDs are in crds/)."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(merge(BASE, values or {}), name=release, namespace=NS)
    docs = []
    for name, text in manifests.items():
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by(docs, kind, suffix=""):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def args_of(workload):
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    out = {}
    for arg in container["args"][1:]:
        key, _, value = arg.partition("=")
        out.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


@pytest.fixture(scope="module")
def default_docs():
    return render()


# -- lint and render -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lint_is_clean(variant):
    report = helm.lint(str(CHART), merge(BASE, VARIANTS[variant]), strict=True, namespace=NS,
                       kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems


def test_lint_of_the_ci_values_file_is_clean():
    values = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
    report = helm.lint(str(CHART), values, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


def test_the_peer_name_is_required():
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="peer.name is required"):
        chart.render({}, name="clusterlink", namespace=NS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_object_validates(variant):
    docs = render(VARIANTS[variant])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(doc, MONITOR_SCHEMA)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == NS, doc["metadata"]["name"]


def test_the_crds_ship_with_the_chart():
    with helm.Chart.load(str(CHART)) as chart:
        crds = [yaml.safe_load(c["data"]) for c in chart.crds]
    assert sorted(c["spec"]["names"]["kind"] for c in crds) == ["AccessPolicy", "Export", "Import", "Peer",
                                                                 "PrivilegedAccessPolicy"]


def test_what_the_defaults_install(default_docs):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in default_docs)
    assert kinds == sorted([
        ("ServiceAccount", "clusterlink-controlplane"), ("Deployment", "clusterlink-controlplane"),
        ("Service", "clusterlink-controlplane"),
        ("ServiceAccount", "clusterlink-gateway"), ("Deployment", "clusterlink-gateway"),
        ("Service", "clusterlink-gateway"), ("Service", "clusterlink-gateway-internal"),
        ("ServiceAccount", "clusterlink-agent"), ("DaemonSet", "clusterlink-agent"),
        ("Service", "clusterlink-agent-metrics"),
        ("ClusterRole", "clusterlink-controlplane"), ("ClusterRoleBinding", "clusterlink-controlplane"),
        ("Role", "clusterlink-controlplane"), ("RoleBinding", "clusterlink-controlplane"),
        ("ClusterRole", "clusterlink-agent"), ("ClusterRoleBinding", "clusterlink-agent"),
        ("ConfigMap", "clusterlink-dashboard")])


def test_release_names_prefix_everything():
    names = {d["metadata"]["name"] for d in render(release="east")}
    assert "east-clusterlink-controlplane" in names and "east-clusterlink-gateway" in names


# -- the pieces fit together --------------------------------------------------------------------------


def test_gateway_service_exposes_port_443_to_the_peer_listener(default_docs):
    svc = by(default_docs, "Service", "-gateway")
    (port,) = svc["spec"]["ports"]
    assert svc["spec"]["type"] == "LoadBalancer" and port["port"] == 443 and port["targetPort"] == "peer"
    gw = by(default_docs, "Deployment", "-gateway")
    ports = {p["name"]: p["containerPort"] for p in gw["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert args_of(gw)["--peer-listen"] == f"0.0.0.0:{ports['peer']}"
    assert svc["spec"]["selector"].items() <= gw["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("variant, type_, node_port", [("nodeport", "NodePort", 30443),
                                                       ("clusterip", "ClusterIP", None)])
def test_gateway_service_types(variant, type_, node_port):
    svc = by(render(VARIANTS[variant]), "Service", "-gateway")
    assert svc["spec"]["type"] == type_ and svc["spec"]["ports"][0].get("nodePort") == node_port


def test_udp_and_dual_stack_values_reach_the_flags(default_docs):
    gateway, agent = args_of(by(default_docs, "Deployment", "-gateway")), args_of(by(default_docs, "DaemonSet", "-agent"))
    assert gateway["--peer-listen"] == "0.0.0.0:8443" and gateway["--udp-idle-timeout"] == "60"
    assert agent["--udp"] == "on" and agent["--udp-idle-timeout"] == "30" and agent["--proxy-address6"] == "auto"
    assert "ipFamilyPolicy" not in by(default_docs, "Service", "-gateway")["spec"]
    docs = render(VARIANTS["dual-stack-udp-off"])
    gateway, agent = args_of(by(docs, "Deployment", "-gateway")), args_of(by(docs, "DaemonSet", "-agent"))
    assert gateway["--peer-listen"] == "[::]:8443" and gateway["--udp-idle-timeout"] == "90"
    assert agent["--udp"] == "off" and agent["--udp-idle-timeout"] == "10" and "--proxy-address6" not in agent
    assert by(docs, "Service", "-gateway")["spec"]["ipFamilyPolicy"] == "PreferDualStack"


def test_gateway_access_log_is_off_unless_asked(default_docs):
    assert args_of(by(default_docs, "Deployment", "-gateway"))["--access-log"] == "off"
    on = render({"gateway": {"accessLog": True}})
    assert args_of(by(on, "Deployment", "-gateway"))["--access-log"] == "on"


def test_gateway_sysctls_reach_the_pod_security_context_and_none_by_default(default_docs):
    def pod_context(docs):
        return by(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["securityContext"]

    assert "sysctls" not in pod_context(default_docs)  # unsafe ones would stop pods on a default kubelet
    assert pod_context(render(VARIANTS["gateway-sysctls"]))["sysctls"] == \
        VARIANTS["gateway-sysctls"]["gateway"]["sysctls"]


def test_gateway_service_annotations_and_ranges():
    svc = by(render(VARIANTS["loadbalancer-annotated"]), "Service", "-gateway")
    assert svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
    assert svc["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert svc["spec"]["externalTrafficPolicy"] == "Local"


def test_controlplane_finds_the_gateway_pods_and_keeps_their_ports_out_of_imports(default_docs):
    cp = args_of(by(default_docs, "Deployment", "-controlplane"))
    gw = by(default_docs, "Deployment", "-gateway")
    assert cp["--store"] == "kubernetes" and cp["--name"] == "peer1" and cp["--namespace"] == NS
    selector = dict(item.split("=") for item in cp["--gateway-selector"].split(","))
    assert selector.items() <= gw["spec"]["template"]["metadata"]["labels"].items()
    agent_selector = by(default_docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= agent_selector.items()  # the Import Services select gateways only
    reserved = {int(item.split(":")[0]) for item in cp["--reserved-ports"].split(",")}
    container_ports = {p["containerPort"] for p in gw["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert container_ports <= reserved


def test_component_addresses_point_at_the_right_services(default_docs):
    cp_svc = by(default_docs, "Service", "-controlplane")
    api_port = next(p["port"] for p in cp_svc["spec"]["ports"] if p["name"] == "api")
    expected_cp = f"{cp_svc['metadata']['name']}.{NS}.svc:{api_port}"
    assert args_of(by(default_docs, "Deployment", "-gateway"))["--controlplane"] == expected_cp
    agent = args_of(by(default_docs, "DaemonSet"))
    assert agent["--controlplane"] == expected_cp
    assert agent["--server-name"] == "peer1"  # the control plane's certificate is the peer certificate
    internal = by(default_docs, "Service", "-gateway-internal")
    agents_port = next(p["port"] for p in internal["spec"]["ports"] if p["name"] == "agents")
    cp = args_of(by(default_docs, "Deployment", "-controlplane"))
    assert cp["--gateway-agent-address"] == f"{internal['metadata']['name']}.{NS}.svc:{agents_port}"
    assert cp["--api-listen"] == f"0.0.0.0:{api_port}"


def test_agent_daemonset_has_what_the_datapath_needs(default_docs):
    ds = by(default_docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    caps = container["securityContext"]["capabilities"]
    assert set(caps["add"]) == {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"} and caps["drop"] == ["ALL"]
    assert not container["securityContext"]["privileged"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"bpffs": "/sys/fs/bpf", "cgroup": "/sys/fs/cgroup", "modules": "/lib/modules",
                    "kernel-sources": "/usr/src"}
    assert mounts["/lib/modules"]["readOnly"] and mounts["/usr/src"]["readOnly"]
    args = args_of(ds)
    assert args["--node"] == "$(NODE_NAME)" and args["--workloads"] == "kubernetes"
    assert args["--cgroup"] == "auto" and args["--proxy-address"] == "$(HOST_IP)"
    assert args["--metrics-listen"] == "$(HOST_IP):9092"  # the host network: not on every interface
    assert args["--on-datapath-failure"] == "retry"  # a node without kernel headers: up, and reporting it
    types = {v["name"]: v["hostPath"].get("type") for v in pod["volumes"] if "hostPath" in v}
    assert types["modules"] == types["kernel-sources"] == ""  # not checked: the pod starts without headers
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "HOST_IP": "status.hostIP"}
    assert pod["tolerations"] == [{"operator": "Exists"}]


def test_privileged_agent_variant():
    ds = by(render(VARIANTS["privileged-agent-cgroupfs"]), "DaemonSet")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["privileged"] and "capabilities" not in container["securityContext"]
    assert args_of(ds)["--cgroup"] == "/sys/fs/cgroup/kubepods"
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"


def test_probes_and_resources_are_set(default_docs):
    for kind, suffix in (("Deployment", "-controlplane"), ("Deployment", "-gateway"), ("DaemonSet", "")):
        container = by(default_docs, kind, suffix)["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"] and container["livenessProbe"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert any(p["name"] == "metrics" for p in container["ports"])


def test_replicas_and_workers():
    docs = render(VARIANTS["ha"])
    assert by(docs, "Deployment", "-controlplane")["spec"]["replicas"] == 3
    gw = by(docs, "Deployment", "-gateway")
    assert gw["spec"]["replicas"] == 3 and args_of(gw)["--workers"] == "4"
    assert "--workers" not in args_of(by(render(), "Deployment", "-gateway"))


def test_peer_labels_image_and_scheduling():
    docs = render(VARIANTS["labels-and-pull-secrets"])
    cp = by(docs, "Deployment", "-controlplane")
    assert sorted(args_of(cp)["--peer-label"]) == ["cluster=east", "ip=10.1.2.3"]
    pod = cp["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["nodeSelector"] == {"role": "infra"}
    assert pod["containers"][0]["image"].endswith(":v9") and pod["containers"][0]["imagePullPolicy"] == "Always"


# -- RBAC --------------------------------------------------------------------------------------------


def rules(docs, kind, suffix):
    return by(docs, kind, suffix)["rules"]


def allowed(rule_list, group, resource, verb, name=None):
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and (not r.get("resourceNames") or name in r["resourceNames"]) for r in rule_list)


def test_rbac_is_least_privilege(default_docs):
    cluster = rules(default_docs, "ClusterRole", "-controlplane")
    for rule in cluster + rules(default_docs, "Role", "-controlplane") + rules(default_docs, "ClusterRole", "-agent"):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    assert not any("secrets" in r["resources"] for r in cluster)  # Secrets only in its own namespace
    assert not any(allowed(cluster, "clusterlink.net", k, v) for k in ("imports", "exports", "peers")
                   for v in ("create", "delete", "update"))
    agent = rules(default_docs, "ClusterRole", "-agent")
    assert agent == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    gw = by(default_docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    assert gw["automountServiceAccountToken"] is False  # the gateway never talks to the API server


def test_rbac_covers_every_call_the_control_plane_makes(default_docs):
    """Replay the store's calls (as the unit tests' fake records them) against the rendered rules."""
    from controlplane.store import kubeapi as K
    from controlplane.store.kube import WATCHED

    cluster = rules(default_docs, "ClusterRole", "-controlplane")
    local = rules(default_docs, "Role", "-controlplane")
    lease = "clusterlink-controlplane"
    calls = [(r.group, r.plural, verb, None) for r in WATCHED for verb in ("list", "watch")]
    calls += [("clusterlink.net", "imports", "patch", None)]
    calls += [("clusterlink.net", f"{k}/status", "patch", None) for k in ("peers", "exports", "imports")]
    calls += [("", "services", v, None) for v in ("create", "patch", "delete")]
    calls += [("discovery.k8s.io", "endpointslices", v, None) for v in ("create", "patch", "delete")]
    calls += [("events.k8s.io", "events", v, None) for v in ("create", "patch")]  # server.kube_events
    namespaced = [("coordination.k8s.io", "leases", v, lease) for v in ("get", "create", "update")]
    namespaced += [("", "secrets", "get", "clusterlink-token-key"), ("", "secrets", "create", None)]
    pods_in_namespace = {("", "pods", "list", None), ("", "pods", "watch", None)}
    for call in calls:
        rule_set = local if call in pods_in_namespace else cluster
        assert allowed(rule_set, *call), f"RBAC misses {call}"
    for call in namespaced:
        assert allowed(local, *call), f"RBAC misses {call}"
    cp_args = args_of(by(default_docs, "Deployment", "-controlplane"))
    assert cp_args["--lease-name"] == lease
    assert K.PODS in WATCHED


def test_the_mcs_api_is_off_unless_asked(default_docs):
    assert args_of(by(default_docs, "Deployment", "-controlplane"))["--mcs"] == "off"
    assert not [d for d in default_docs if d["kind"] == "CustomResourceDefinition"]
    groups = {g for rule in rules(default_docs, "ClusterRole", "-controlplane") for g in rule["apiGroups"]}
    assert "multicluster.x-k8s.io" not in groups
    assert "--dns-listen" not in args_of(by(default_docs, "Deployment", "-controlplane"))


def test_the_mcs_api_gets_its_crds_rbac_and_flag():
    from controlplane.store import kubeapi as K
    from controlplane.store.kube import MCS_WATCHED

    docs = render(VARIANTS["mcs"])
    assert args_of(by(docs, "Deployment", "-controlplane"))["--mcs"] == "on"
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {f"{r.plural}.{r.group}" for r in MCS_WATCHED}
    for resource in MCS_WATCHED:
        crd = crds[f"{resource.plural}.{resource.group}"]
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["spec"]["names"]["kind"] == resource.kind and crd["spec"]["scope"] == "Namespaced"
        assert [v["name"] for v in crd["spec"]["versions"]] == [resource.version]
    cluster = rules(docs, "ClusterRole", "-controlplane")
    calls = [(r.group, r.plural, v, None) for r in MCS_WATCHED for v in ("list", "watch")]
    calls += [(K.MCS_GROUP, "serviceimports", v, None) for v in ("create", "patch", "delete")]
    calls += [(K.MCS_GROUP, f"{p}/status", "patch", None) for p in ("serviceexports", "serviceimports")]
    calls += [("clusterlink.net", "exports", v, None) for v in ("create", "patch", "delete")]
    for call in calls:
        assert allowed(cluster, *call), f"RBAC misses {call}"
    assert not allowed(cluster, K.MCS_GROUP, "serviceexports", "delete", None)  # never the user's objects
    without = render(VARIANTS["mcs-without-crds"])
    assert not [d for d in without if d["kind"] == "CustomResourceDefinition"]
    assert allowed(rules(without, "ClusterRole", "-controlplane"), K.MCS_GROUP, "serviceimports", "create", None)


def test_the_dns_responder_has_a_port_and_a_service_port():
    docs = render(VARIANTS["mcs"])
    deployment = by(docs, "Deployment", "-controlplane")
    args = args_of(deployment)
    assert args["--dns-listen"] == "0.0.0.0:5353" and args["--dns-zone"] == "clusterset.local"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "dns", "containerPort": 5353, "protocol": "UDP"} in container["ports"]
    svc = by(docs, "Service", "-controlplane")
    assert {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"} in svc["spec"]["ports"]


# -- Secrets -------------------------------------------------------------------------------------------


def test_tokens_come_from_the_control_plane_and_renders_are_the_same_every_time(default_docs):
    """tokens.create: the control plane creates the token Secrets at its first start (--tokens
    store); the chart renders no token, so two renders are identical (GitOps) and an upgrade never
    changes a token (a random token in the render did, locking components out)."""
    assert not [d for d in default_docs if d["kind"] == "Secret"]
    assert render() == default_docs
    cp = by(default_docs, "Deployment", "-controlplane")
    assert "--tokens=store" in cp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "tokens" not in {v["name"] for v in cp["spec"]["template"]["spec"]["volumes"]}
    for kind, suffix in (("Deployment", "-gateway"), ("DaemonSet", "-agent")):
        volumes = {v["name"]: v for v in by(default_docs, kind, suffix)["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tokens"]["secret"]["secretName"] == "clusterlink-join-token"
        assert volumes["tokens"]["secret"]["items"] == [{"key": "token", "path": "join.token"}]
    role = by(default_docs, "Role", "-controlplane")
    readable = {n for rule in role["rules"] for n in rule.get("resourceNames", []) if "get" in rule["verbs"]}
    assert {"clusterlink-join-token", "clusterlink-admin-token", "clusterlink-token-key"} <= readable


def test_tokens_made_elsewhere_are_mounted_from_their_secret():
    docs = render({"tokens": {"create": False, "secretName": "my-tokens"}})
    cp = by(docs, "Deployment", "-controlplane")["spec"]["template"]["spec"]
    assert "--join-token-file=/etc/clusterlink/tokens/join.token" in cp["containers"][0]["args"]
    assert {v["name"]: v for v in cp["volumes"]}["tokens"]["secret"]["secretName"] == "my-tokens"
    for kind, suffix in (("Deployment", "-gateway"), ("DaemonSet", "-agent")):
        volumes = {v["name"]: v for v in by(docs, kind, suffix)["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tokens"]["secret"]["secretName"] == "my-tokens"
        assert volumes["tokens"]["secret"]["items"] == [{"key": "join.token", "path": "join.token"}]


def test_inline_certificates_make_the_secret_and_tokens_can_come_from_elsewhere():
    docs = render(VARIANTS["inline-certificates"])
    secret = by(docs, "Secret", "cl-peer")
    assert set(secret["data"]) == {"cert.pem", "key.pem", "ca.pem"}
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "clusterlink-tokens"]


def test_inline_certificates_must_be_complete():
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="certificates.key is required"):
        chart.render(merge(BASE, {"certificates": {"create": True, "cert": "C", "ca": "A"}}), name="c", namespace=NS)


# -- monitors and dashboard ----------------------------------------------------------------------------


def test_monitors_select_the_metrics_services_and_pods():
    docs = render(VARIANTS["service-monitor"])
    assert not [d for d in docs if d["kind"] == "PodMonitor"]
    sm = by(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    metric_services = [d for d in docs if d["kind"] == "Service"
                       and sm["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["name"] for s in metric_services) == [
        "clusterlink-agent-metrics", "clusterlink-controlplane", "clusterlink-gateway-internal"]
    assert all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in metric_services)
    docs = render(VARIANTS["pod-monitor"])
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    pm = by(docs, "PodMonitor")
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert len(workloads) == 3 and all(pm["spec"]["selector"]["matchLabels"].items()
                                       <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads)
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"


def test_both_monitors_at_once_are_refused():
    """Each scrapes every component: both would count everything twice."""
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="enable one"):
        chart.render(merge(BASE, {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}),
                     name="c", namespace=NS)


# -- availability and hygiene ---------------------------------------------------------------------------


def test_replicated_components_get_a_disruption_budget_and_spread_over_nodes(default_docs):
    assert not [d for d in default_docs if d["kind"] == "PodDisruptionBudget"]  # one replica: none (drains)
    docs = render(VARIANTS["ha"])
    for component in ("controlplane", "gateway"):
        pdb = by(docs, "PodDisruptionBudget", f"-{component}")
        deployment = by(docs, "Deployment", f"-{component}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    custom = [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"x": "y"}}}]
    docs = render({"gateway": {"topologySpreadConstraints": custom}})
    assert by(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["topologySpreadConstraints"] == custom


def test_the_agent_is_node_critical_and_confined(default_docs):
    ds = by(default_docs, "DaemonSet", "-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert sorted(ctx["capabilities"]["add"]) == ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"]
    for kind, suffix in (("Deployment", "-controlplane"), ("Deployment", "-gateway")):
        spec = by(default_docs, kind, suffix)["spec"]["template"]["spec"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_network_policy_keeps_the_agent_port_to_the_nodes(default_docs):
    assert not [d for d in default_docs if d["kind"] == "NetworkPolicy"]
    docs = render(VARIANTS["network-policy"])
    policy = by(docs, "NetworkPolicy", "-gateway")
    gateway_pods = by(docs, "Deployment", "-gateway")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= gateway_pods.items()
    peer, agent, imports = policy["spec"]["ingress"]
    assert "from" not in peer and peer["ports"] == [{"port": 8443, "protocol": "TCP"}]
    assert agent["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}, {"ipBlock": {"cidr": "10.0.1.0/24"}}]
    assert agent["ports"] == [{"port": 4443, "protocol": "TCP"}]
    ranges = [(p["port"], p["endPort"]) for p in imports["ports"]]
    assert ranges == [(1024, 4442), (4444, 49151)]  # every leasable target port but the agent port
    assert {"namespaceSelector": {}} in imports["from"]
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError, match="nodeCIDRs is required"):
        chart.render(merge(BASE, {"networkPolicy": {"enabled": True}}), name="c", namespace=NS)


def test_an_image_digest_pins_every_container():
    digest = "sha256:" + "ab" * 32
    docs = render({"image": {"digest": digest, "tag": "ignored"}})
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"ghcr.io/clusterlink-py/clusterlink@{digest}"}
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema(chart.merge_values(merge(BASE, {"image": {"digest": "latest"}})))


def dashboard_metrics(docs):
    data = json.loads(by(docs, "ConfigMap", "-dashboard")["data"]["clusterlink.json"])
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    return data, {m for e in exprs for m in re.findall(r"\b(clusterlink_[a-z0-9_]+)", e)}


def test_dashboard_covers_the_promised_panels(default_docs):
    data, metrics = dashboard_metrics(default_docs)
    cm = by(default_docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = " ".join(p["title"].lower() for p in data["panels"])
    for topic in ("connections", "bytes", "setup time", "authorization", "peer", "redirected"):
        assert topic in titles, topic


# Families deliberately not on the dashboard, with the reason (a new family must be added to the
# dashboard or here: test_every_metric_family_is_on_the_dashboard_or_listed).
NOT_ON_DASHBOARD = {
    "clusterlink_controlplane_api_requests": "management API traffic: for debugging, not operations",
    "clusterlink_controlplane_objects": "object counts: `clusterlink status` shows them",
    "clusterlink_controlplane_snapshot_version": "only meaningful compared with the agents' and gateways' (alerts)",
    "clusterlink_controlplane_watchers": "snapshot streams open: the connected gauges of agents and gateways say it",
    "clusterlink_controlplane_dns_queries": "only with --dns-listen; nxdomain/formerr rates are for alerts",
    "clusterlink_agent_attached_programs": "constant while healthy; clusterlink_agent_datapath_ready is the signal",
    "clusterlink_agent_datapath_ready": "an alert (not ready = no redirect on the node), not a graph",
    "clusterlink_agent_datapath_start_failures": "an alert, and the agent's log says why",
    "clusterlink_agent_imports": "the imports redirected per node: equal to the Import count while healthy",
    "clusterlink_agent_registered": "an alert: an agent without a credential",
    "clusterlink_agent_snapshot_age_seconds": "an alert on staleness",
    "clusterlink_agent_snapshot_version": "only meaningful compared with the control plane's (alerts)",
    "clusterlink_agent_proxy_accept_errors": "rare; in the agent's log",
    "clusterlink_agent_proxy_connection_errors": "the gateway's connection results say where a connection ended",
    "clusterlink_agent_proxy_connections_completed": "the gateways' connection results carry it per Import",
    "clusterlink_agent_proxy_connections_idle_timeout": "per-node detail for debugging",
    "clusterlink_agent_proxy_connections_rejected": "per-node detail for debugging (the limit is in the log)",
    "clusterlink_agent_proxy_connections_reset": "the gateways' connection results carry it per Import",
    "clusterlink_agent_proxy_resolve_errors": "counted in the redirect and identity failures' causes (log)",
    "clusterlink_agent_proxy_upstream_connect_errors": "the agent-to-gateway hop: in the gateway health panels",
    "clusterlink_agent_proxy_upstream_pool_connect_errors": "pre-connected sockets to the gateway: tuning detail",
    "clusterlink_agent_proxy_upstream_pool_expired": "pre-connected sockets to the gateway: tuning detail",
    "clusterlink_agent_proxy_upstream_pool_hits": "pre-connected sockets to the gateway: tuning detail",
    "clusterlink_agent_proxy_upstream_pool_idle": "pre-connected sockets to the gateway: tuning detail",
    "clusterlink_agent_proxy_upstream_pool_misses": "pre-connected sockets to the gateway: tuning detail",
    "clusterlink_agent_proxy_upstream_pool_stale": "pre-connected sockets to the gateway: tuning detail",
    "clusterlink_agent_udp_flows_started": "UDP flows are connections to the gateways: their results carry them",
    "clusterlink_agent_udp_flows_failed": "an alert; the agent's log says why",
    "clusterlink_agent_udp_datagrams_to_service": "per-node UDP detail; the gateways' bytes panels carry the volume",
    "clusterlink_agent_udp_datagrams_to_client": "per-node UDP detail; the gateways' bytes panels carry the volume",
    "clusterlink_agent_udp_datagrams_dropped": "an alert (loss on the node), with datagrams_to_service as the base",
    "clusterlink_agent_udp_active_flows": "the gateways' active connections include the UDP flows",
    "clusterlink_gateway_authz_requests": "the token cache makes them rare; authorization decisions are on the dashboard",
    "clusterlink_gateway_token_cache_lookups": "tuning detail of the access-token cache",
    "clusterlink_gateway_tunnel_pool_acquires": "hits and misses of the pool: the handshakes panel shows the misses' cost",
    "clusterlink_gateway_listener_errors": "an alert: a listener that could not open (and the log says why)",
    "clusterlink_gateway_snapshot_version": "only meaningful compared with the control plane's (alerts)",
    "clusterlink_process_start_time_seconds": "the gateway's worker restarts are on the dashboard",
}


def metric_families():
    """Every family the components can export (labelled ones included before first use), with the
    collectors every component registers."""
    from prometheus_client import CollectorRegistry

    from agent.metrics import AgentMetrics
    from controlplane.api.buildinfo import Processes
    from controlplane.certmetrics import CertificateExpiry
    from controlplane.gateway.metrics import GatewayMetrics, SupervisorMetrics
    from controlplane.server.metrics import ControlPlaneMetrics

    supervisor = CollectorRegistry()
    SupervisorMetrics(supervisor)
    supervisor.register(CertificateExpiry("gateway", {}))
    supervisor.register(Processes("gateway", dict))
    registries = [ControlPlaneMetrics().registry, AgentMetrics().registry, GatewayMetrics().registry, supervisor]
    return {family.name: family.type for r in registries for family in r.collect()}


def sample_names(families):
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    return {name + suffix for name, kind in families.items() for suffix in suffixes.get(kind, ("",))}


def test_dashboard_uses_the_metrics_the_components_export(default_docs):
    _, metrics = dashboard_metrics(default_docs)
    exported = sample_names(metric_families())
    for prefix in ("clusterlink_controlplane_", "clusterlink_agent_", "clusterlink_gateway_"):
        assert any(m.startswith(prefix) for m in metrics), f"no {prefix}* panel"
    assert metrics <= exported, sorted(metrics - exported)


def test_every_metric_family_is_on_the_dashboard_or_listed(default_docs):
    _, metrics = dashboard_metrics(default_docs)
    families = metric_families()
    shown = {name for name, kind in families.items() if sample_names({name: kind}) & metrics}
    missing = sorted(set(families) - shown - set(NOT_ON_DASHBOARD))
    assert missing == [], f"add these to the dashboard or to NOT_ON_DASHBOARD with a reason: {missing}"
    stale = sorted(set(NOT_ON_DASHBOARD) - set(families))
    assert stale == [], f"NOT_ON_DASHBOARD lists families nobody exports: {stale}"
    both = sorted(shown & set(NOT_ON_DASHBOARD))
    assert both == [], f"on the dashboard and listed as not: {both}"


def test_dashboard_has_peer_and_import_variables_and_value_mappings(default_docs):
    data, _ = dashboard_metrics(default_docs)
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert {"namespace", "peer", "import"} <= set(variables)
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    assert all('namespace=~"$namespace"' in e for e in exprs), [e for e in exprs if "$namespace" not in e]
    assert any('peer=~"$peer"' in e for e in exprs) and any('service=~"$import"' in e for e in exprs)
    reachability = [p for p in data["panels"] if any("peer_reachable" in t["expr"] for t in p.get("targets", []))]
    assert len(reachability) == 2
    for panel in reachability:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        assert {k: v["text"] for k, v in mapping["options"].items()} == {"0": "down", "1": "up"}
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))


# -- values: documented and schema-checked -------------------------------------------------------------


def leaf_paths(values, prefix=()):
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("labels", "annotations", "nodeSelector", "affinity",
                                                              "podAnnotations", "requests", "limits"):
            yield from leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


FREE_FORM = {"resources", "labels", "annotations", "podAnnotations", "nodeSelector", "affinity"}


def test_every_value_is_documented_in_values_yaml():
    """Every key has a comment line right above it (entries of free-form maps such as resources or
    labels excepted: the map itself is documented)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, stack = [], []  # stack: (indent, key) of the enclosing keys
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_resources = any(k in FREE_FORM for _, k in stack)
        stack.append((indent, key))
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if not inside_resources and not previous.strip().startswith("#"):
            undocumented.append(line.strip())
    assert undocumented == [], undocumented


def test_values_and_schema_describe_the_same_settings():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def lookup(path):
        node = schema
        for key in path:
            node = node["properties"][key]
        return node

    for path in leaf_paths(values):
        node = lookup(path)
        assert node.get("description"), f"{'.'.join(path)} has no description in values.schema.json"

    def schema_paths(node, prefix=()):
        for key, child in (node.get("properties") or {}).items():
            if child.get("properties") and key not in ("requests", "limits"):
                yield from schema_paths(child, prefix + (key,))
            else:
                yield prefix + (key,)

    value_paths = set(leaf_paths(values))
    extra = [p for p in schema_paths(schema) if p not in value_paths and p != ("global",)
             and p[-1] not in ("requests", "limits")]
    assert extra == [], f"values.schema.json describes settings values.yaml lacks: {extra}"


@pytest.mark.parametrize("bad, where", [
    ({"gateway": {"service": {"type": "Ingress"}}}, "type"),
    ({"gateway": {"servce": {}}}, "servce"),
    ({"gateway": {"service": {"type": "NodePort", "nodePort": 80}}}, "nodePort"),
    ({"controlplane": {"replicas": 0}}, "replicas"),
    ({"logLevel": "chatty"}, "logLevel"),
    ({"peer": {"name": "Not_A_DNS_Name"}}, "name"),
    ({"agent": {"cgroup": "relative/path"}}, "cgroup"),
    ({"gateway": {"sysctls": [{"name": "net.ipv4.tcp_tw_reuse", "value": 1}]}}, "value"),
    ({"gateway": {"sysctls": [{"name": "tcp_tw_reuse", "value": "1"}]}}, "name"),
    ({"mcs": {"enable": True}}, "enable"),
    ({"controlplane": {"dns": {"port": 53}}}, "port"),
])
def test_values_schema_rejects_mistakes(bad, where):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError, match=where):
            chart.validate_schema(merge(chart.values, merge(BASE, bad)))


def test_values_schema_accepts_every_variant():
    with helm.Chart.load(str(CHART)) as chart:
        for values in VARIANTS.values():
            chart.validate_schema(merge(chart.values, merge(BASE, values)))


# -- the commands accept what the chart passes ---------------------------------------------------------


@pytest.mark.parametrize("variant", ["defaults", "ha", "labels-and-pull-secrets", "privileged-agent-cgroupfs", "mcs"])
def test_every_component_parses_its_arguments(variant, monkeypatch):
    """The chart's args go through each command's real argument parser (a renamed flag fails here)."""
    from agent.main import build_parser as agent_parser
    from controlplane.gateway.config import build_parser as gateway_parser
    from controlplane.server.main import build_parser as controlplane_parser

    for name in [n for n in __import__("os").environ if n.startswith("CLUSTERLINK_")]:
        monkeypatch.delenv(name)
    docs = render(VARIANTS[variant])
    parsers = {"clusterlink-controlplane": controlplane_parser, "clusterlink-gateway": gateway_parser,
               "clusterlink-agent": agent_parser}
    seen = set()
    for workload in (d for d in docs if d["kind"] in ("Deployment", "DaemonSet")):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        command, *args = container["args"]
        parsers[command]().parse_args(args)  # SystemExit (exit 2) on an unknown flag or a bad value
        seen.add(command)
    assert seen == set(parsers)
