"""ClusterLink's policy scenarios: TestPolicyLabels, TestPodAttributes, TestPrivilegedPolicies,
TestPeerLabels."""

from __future__ import annotations

from .fabricutil import Access, Prober, allow_all, import_doc, policy

SVC = "export.clusterlink.net/name"
PEER = "peer.clusterlink.net/name"
ENV = "export.clusterlink.net/labels.env"
SA = "client.clusterlink.net/service-account"
APP = "client.clusterlink.net/labels.app"


def setup(w):  # type: ignore[no-untyped-def]
    cl0, cl1 = w.peers["cl0"], w.peers["cl1"]
    cl1.apply(import_doc("echo", [("cl0", "echo")]))
    return cl0, cl1, Access(w.fab, cl1, w.clients["cl1"], "echo")


def test_policy_labels(clean):
    cl0, cl1, access = setup(clean)
    cl0.apply(allow_all())
    cl1.apply(allow_all())
    access.expect("cl0")
    for side, name, text in [
        (cl1, "deny-svc", policy("deny-svc", "deny", dst={SVC: "echo"})),  # egress, service name
        (cl1, "deny-peer", policy("deny-peer", "deny", dst={PEER: "cl0"})),  # egress, peer
        (cl0, "deny-src", policy("deny-src", "deny", src={PEER: "cl1"})),  # ingress, source peer
    ]:
        side.apply(text)
        access.expect(None)
        side.delete("AccessPolicy", name)
        access.expect("cl0")
    # an allow with the wrong service name or the wrong label value does not allow
    cl1.delete("AccessPolicy", "allow-all")
    cl1.apply(policy("allow-wrong-svc", "allow", dst={SVC: "other"}))
    access.expect(None)
    cl1.delete("AccessPolicy", "allow-wrong-svc")
    cl0.delete("AccessPolicy", "allow-all")
    cl1.apply(allow_all())
    cl0.apply(policy("allow-prod", "allow", dst={ENV: "prod"}))
    access.expect(None)
    cl0.apply(policy("allow-test", "allow", dst={ENV: "test"}))
    access.expect("cl0")


def test_pod_attributes_on_egress_and_ingress(clean):
    w = clean
    cl0, cl1, access = setup(w)
    other = Access(w.fab, cl1, w.others["cl1"], "echo")
    cl0.apply(allow_all())
    cl1.apply(allow_all())
    access.expect("cl0")
    other.expect("cl0")
    cl1.apply(policy("deny-non-default", "deny", src={SA: "non-default"}))
    access.expect("cl0")  # the default service account still passes
    other.expect(None)  # the other pod's service account is denied
    cl1.delete("AccessPolicy", "deny-non-default")
    # on ingress only: the client attributes travel to the exporting peer
    cl0.apply(policy("deny-default-sa", "deny", src={SA: "default"}))
    access.expect(None)
    other.expect("cl0")
    cl0.delete("AccessPolicy", "deny-default-sa")
    # NotIn: deny everyone whose app label is not echo-client
    cl1.apply(policy("deny-not-client", "deny", src_expr=[{"key": APP, "operator": "NotIn",
                                                         "values": ["echo-client"]}]))
    access.expect("cl0")
    other.expect(None)


def test_privileged_over_regular(clean):
    cl0, cl1, access = setup(clean)
    cl0.apply(allow_all())
    cl1.apply(policy("p-deny", "deny", privileged=True) + "---\n" + policy("p-allow", "allow", privileged=True)
              + "---\n" + policy("r-deny", "deny") + "---\n" + policy("r-allow", "allow"))
    access.expect(None)
    cl1.delete("PrivilegedAccessPolicy", "p-deny", "")
    access.expect("cl0")
    cl1.delete("PrivilegedAccessPolicy", "p-allow", "")
    access.expect(None)
    cl1.delete("AccessPolicy", "r-deny")
    access.expect("cl0")
    cl1.delete("AccessPolicy", "r-allow")
    access.expect(None)  # default deny


def test_peer_labels_learned_by_heartbeat(clean):
    cl0, cl1, access = setup(clean)
    peer = cl1.get("Peer", "cl0", "clusterlink-system")[0]
    assert peer["status"]["labels"] == {"cluster": "cl0"}
    cl1.apply(allow_all())
    # ingress deny on the requesting peer's label
    cl0.apply(policy("deny-cl1", "deny", src={"peer.clusterlink.net/labels.cluster": "cl1"}) + "---\n" + allow_all())
    access.expect(None)
    cl0.apply(policy("p-allow-cl1", "allow", privileged=True, src={"peer.clusterlink.net/labels.cluster": "cl1"}))
    access.expect("cl0")
    cl0.delete("AccessPolicy", "deny-cl1")
    cl0.delete("PrivilegedAccessPolicy", "p-allow-cl1", "")
    # egress deny on a label the remote peer does not have: no effect; on its label: blocks
    cl1.apply(policy("deny-other", "deny", dst={"peer.clusterlink.net/labels.cluster": "cl9"}))
    access.expect("cl0")
    cl1.apply(policy("deny-cl0", "deny", dst={"peer.clusterlink.net/labels.cluster": "cl0"}))
    access.expect(None)


def test_a_policy_change_is_in_force_when_apply_and_delete_return(clean):
    """The very next connection after `apply`/`delete` returned sees the change, on the exporting
    peer (ingress) and on the importing one (egress); each returned because the peer's gateway
    workers and agents confirmed it (before, connections started 5-14 ms after a delete returned
    still succeeded)."""
    cl0, cl1, access = setup(clean)
    cl0.apply(allow_all())
    cl1.apply(allow_all())
    access.expect("cl0")
    outcomes = []
    with Prober(access) as probe:
        for side, name, text in [(cl0, "deny-src", policy("deny-src", "deny", src={PEER: "cl1"})),
                                 (cl1, "deny-svc", policy("deny-svc", "deny", dst={SVC: "echo"}))]:
            for _ in range(4):
                side.apply(text)
                assert side.last_rollout.complete and side.last_rollout.confirmed >= 2, side.last_rollout
                outcomes.append((side.name, "denied", probe.once()))
                side.delete("AccessPolicy", name)
                assert side.last_rollout.complete, side.last_rollout
                outcomes.append((side.name, "allowed", probe.once()))
    wrong = [(peer, want, got) for peer, want, got in outcomes
             if (want == "allowed") != (got == (0, "cl0"))]
    assert not wrong, f"{wrong}\n{clean.fab.logs()}"
