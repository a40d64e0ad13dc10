"""ClusterLink's import/export scenarios: export host, export of a missing service, conflicting
target ports, import delete, import name length."""

from __future__ import annotations

import time

import pytest

from controlplane.api.client import APIError

from .fabricutil import ECHO_PORT, Access, allow_all, doc, import_doc


def test_export_host(clean):
    """An Export with spec.host (here: the echo pod's address) is valid without a local service."""
    w = clean
    cl0 = w.peers["cl0"]
    echo_ip = cl0.get("LocalService", "echo", "default")[0]["spec"]["host"]
    cl0.apply(doc("Export", "by-host", {"host": echo_ip, "port": ECHO_PORT}) + "---\n" + allow_all())
    cl0.wait_condition("Export", "by-host", "ExportValid")
    w.peers["cl1"].apply(allow_all() + "---\n" + import_doc("byhost", [("cl0", "by-host")]))
    Access(w.fab, w.peers["cl1"], w.clients["cl1"], "byhost").expect("cl0")


def test_export_of_a_missing_service(clean):
    w = clean
    cl0, cl1 = w.peers["cl0"], w.peers["cl1"]
    cl0.apply(doc("Export", "later", {"port": ECHO_PORT}) + "---\n" + allow_all())
    cond = cl0.wait_condition("Export", "later", "ExportValid", "False")
    assert cond["message"] == "export service 'default/later' does not exist"
    cl1.apply(allow_all() + "---\n" + import_doc("later", [("cl0", "later")]))
    access = Access(w.fab, cl1, w.clients["cl1"], "later")
    access.expect(None)
    echo_ip = cl0.get("LocalService", "echo", "default")[0]["spec"]["host"]
    cl0.apply(doc("LocalService", "later", {"host": echo_ip}))
    cl0.wait_condition("Export", "later", "ExportValid", "True")
    access.expect("cl0")
    cl0.delete("LocalService", "later")
    cl0.wait_condition("Export", "later", "ExportValid", "False")
    access.expect(None)


def test_conflicting_target_ports(clean):
    w = clean
    cl1 = w.peers["cl1"]
    w.peers["cl0"].apply(allow_all())
    cl1.apply(allow_all() + "---\n" + import_doc("imp1", [("cl0", "echo")], target_port=21234))
    cl1.wait_condition("Import", "imp1", "ImportTargetPortValid")
    cl1.apply(import_doc("imp2", [("cl0", "echo")], target_port=21234))
    cond = cl1.wait_condition("Import", "imp2", "ImportTargetPortValid", "False")
    assert cond["reason"] == "Error" and "default/imp1" in cond["message"]
    Access(w.fab, cl1, w.clients["cl1"], "imp1", via="target-port").expect("cl0")
    cl1.apply(import_doc("imp2", [("cl0", "echo")], target_port=21235))
    cl1.wait_condition("Import", "imp2", "ImportTargetPortValid", "True")
    Access(w.fab, cl1, w.clients["cl1"], "imp2", via="target-port").expect("cl0")


def test_import_delete_stops_the_redirect_and_frees_the_port(clean):
    w = clean
    cl1 = w.peers["cl1"]
    w.peers["cl0"].apply(allow_all())
    cl1.apply(allow_all() + "---\n" + import_doc("gone", [("cl0", "echo")], target_port=21300))
    access = Access(w.fab, cl1, w.clients["cl1"], "gone")
    access.expect("cl0")
    url = access.url()
    cl1.delete("Import", "gone")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = w.clients["cl1"].http_get(url, timeout=3)
        if out.returncode != 0:
            break
        time.sleep(0.2)
    assert out.returncode != 0, "the deleted import's VIP still answers"
    cl1.apply(import_doc("reuse", [("cl0", "echo")], target_port=21300))
    cl1.wait_condition("Import", "reuse", "ImportTargetPortValid", "True")
    Access(w.fab, cl1, w.clients["cl1"], "reuse", via="target-port").expect("cl0")


@pytest.mark.parametrize("length, ok", [(63, True), (64, False)])
def test_import_name_length(clean, length, ok):
    cl1 = clean.peers["cl1"]
    text = import_doc("i" * length, [("cl0", "echo")])
    if ok:
        cl1.apply(text)
    else:
        with pytest.raises(APIError, match="at most 63 characters"):
            cl1.apply(text)
