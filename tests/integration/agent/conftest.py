"""Fixtures of the agent's integration tests: a client netns joined by a veth, cgroups, a started
Datapath on them, and subprocess bookkeeping; each is torn down in its finalizer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import config as pyroute2_config

from agent.datapath import Datapath
from tests.integration.agent import kit

PRIVILEGED_SKIP = kit.skip_reason_privileged()


def require_privileges() -> None:
    if PRIVILEGED_SKIP is not None:
        pytest.skip(PRIVILEGED_SKIP)


@pytest.fixture(scope="session", autouse=True)
def pyroute2_children_die_on_sigterm() -> Iterator[None]:
    """pyroute2 does netns work in forks of this process and stops them with SIGTERM. A fork still
    has the session's SIGTERM handler (tests/conftest.py: SIGTERM -> KeyboardInterrupt), and if the
    signal lands after the fork answered but before it exits, the KeyboardInterrupt unwinds into
    pytest inside the fork, which then runs the fixture finalizers (deleting the client netns of
    the parent's tests). pyroute2's disable_mp_signal restores SIG_DFL in the fork first."""
    previous = pyroute2_config.disable_mp_signal
    pyroute2_config.disable_mp_signal = True
    yield
    pyroute2_config.disable_mp_signal = previous


@pytest.fixture
def processes() -> Iterator[kit.Processes]:
    procs = kit.Processes()
    yield procs
    procs.cleanup()


@pytest.fixture
def cgroups() -> Iterator[kit.Cgroups]:
    require_privileges()
    tree = kit.Cgroups()
    yield tree
    tree.cleanup()


@dataclass
class RedirectEnv:
    name: str
    net: kit.ClientNet
    root: str           # the cgroup the datapath is attached to
    pod_a: str          # a child cgroup where redirected clients run
    pod_b: str
    datapath: Datapath


@pytest.fixture(scope="module")
def redirect_env() -> Iterator[RedirectEnv]:
    """A started Datapath on cgroup <id>dp (children pod-a, pod-b) and a client netns <id>c."""
    require_privileges()
    name = kit.new_id()
    with contextlib.ExitStack() as stack:
        net = kit.ClientNet(name)
        stack.callback(net.cleanup)
        net.build()
        tree = kit.Cgroups()
        stack.callback(tree.cleanup)
        root = tree.make(f"{name}dp")
        pod_a = tree.make(f"{name}dp/pod-a")
        pod_b = tree.make(f"{name}dp/pod-b")
        datapath = Datapath(root, owner="clusterlink-agent-tests")
        datapath.start()
        stack.callback(datapath.stop)
        yield RedirectEnv(name, net, root, pod_a, pod_b, datapath)
