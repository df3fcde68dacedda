"""The suite's own network namespace (tests/conftest.py): as root, every test runs in a namespace
that holds only what the tests make in it -- not the host's, no route out of it."""
import os

import pytest
from pyroute2 import IPRoute

from conftest import HOST_NETNS_ENV

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite makes its namespace only as root")


def test_the_suite_is_not_in_the_hosts_network_namespace():
    host = os.environ[HOST_NETNS_ENV]
    assert os.readlink("/proc/self/ns/net") != os.readlink(host)


def test_loopback_is_up_and_nothing_routes_out():
    with IPRoute() as ipr:
        (lo,) = ipr.link("get", index=ipr.link_lookup(ifname="lo")[0])
        assert lo.get_attr("IFLA_OPERSTATE") in ("UNKNOWN", "UP") and lo["flags"] & 1
        assert ipr.route("get", dst="127.0.0.1")
        for family in (2, 10):
            assert not ipr.get_default_routes(family=family), "a default route in the suite's namespace"


def test_a_child_process_inherits_it():
    import subprocess

    out = subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == os.readlink("/proc/self/ns/net")
