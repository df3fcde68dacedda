"""IPv6 services in the kernel IPVS data plane, without a kernel: the netlink attributes lb
writes (address family, the persistence netmask as a prefix length), what it reads back, and
that a service read back equal to the wanted one is left alone (no rewrite on every apply).

The real kernel's side is tests/vm/guest/vmtest_ipvs_ipv6.py."""
from __future__ import annotations

import ipaddress
import socket
import sys

import pytest

from lb.dataplane.ipvs import (IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_MASQ, IP_VS_SVC_F_HASHED, IP_VS_SVC_F_PERSISTENT,
                               IpvsDataplane, IpvsError, KDest, Kernel, KService, _netmask_value, _spec_of)
from lb.dataplane.spec import PortGroup, RealSpec, ServiceSpec

ip = ipaddress.ip_address
VIP6 = ip("2001:2::1")


def attrs(spec: ServiceSpec, full: bool = True) -> dict:
    svc = Kernel._svc(spec, full)
    return dict((svc.dump_nla() if full else svc.dump_key())["attrs"])


def test_ipv6_service_attributes():
    a = attrs(ServiceSpec("tcp", VIP6, 80, "rr", persistent=360, pmask=64))
    assert a["IPVS_SVC_ATTR_AF"] == socket.AF_INET6
    assert a["IPVS_SVC_ATTR_ADDR"] == "2001:2::1"
    assert a["IPVS_SVC_ATTR_TIMEOUT"] == 360
    # the kernel keeps the attribute's four bytes: for IPv6 a host-order u32 prefix length
    assert socket.inet_aton(a["IPVS_SVC_ATTR_NETMASK"]) == (64).to_bytes(4, sys.byteorder)
    assert _netmask_value(a["IPVS_SVC_ATTR_NETMASK"], socket.AF_INET6) == 64


def test_ipv6_host_mask_is_128_not_an_ipv4_mask():
    for spec in (ServiceSpec("udp", VIP6, 53, "wlc"), ServiceSpec("tcp", VIP6, 80, "rr", persistent=60)):
        a = attrs(spec)
        assert _netmask_value(a["IPVS_SVC_ATTR_NETMASK"], socket.AF_INET6) == 128


def test_ipv4_netmask_unchanged():
    a = attrs(ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", persistent=300, pmask="255.255.255.0"))
    assert a["IPVS_SVC_ATTR_AF"] == socket.AF_INET and a["IPVS_SVC_ATTR_NETMASK"] == "255.255.255.0"
    assert attrs(ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr"))["IPVS_SVC_ATTR_NETMASK"] == "255.255.255.255"


def test_ipv6_fwmark_service_family_from_its_groups():
    spec = ServiceSpec("tcp", None, 0, "wlc", fwmark=61, persistent=100,
                       groups=(PortGroup("tcp", VIP6, 80, 80),))
    a = attrs(spec)
    assert a["IPVS_SVC_ATTR_AF"] == socket.AF_INET6 and a["IPVS_SVC_ATTR_FWMARK"] == 61
    assert "IPVS_SVC_ATTR_ADDR" not in a
    assert attrs(spec, full=False) == {"IPVS_SVC_ATTR_AF": socket.AF_INET6, "IPVS_SVC_ATTR_FWMARK": 61}


def test_ipv6_prefix_out_of_range_is_refused():
    with pytest.raises(IpvsError, match="1..128"):
        attrs(ServiceSpec("tcp", VIP6, 80, "rr", persistent=60, pmask=129))


def test_ipv6_dest_family():
    d = dict(Kernel._dest(RealSpec(ip("2001:2::11"), 80, 2, "nat")).dump_nla()["attrs"])
    assert d["IPVS_DEST_ATTR_ADDR_FAMILY"] == socket.AF_INET6 and d["IPVS_DEST_ATTR_ADDR"] == "2001:2::11"
    assert d["IPVS_DEST_ATTR_FWD_METHOD"] == IP_VS_CONN_F_MASQ


def kservice(spec: ServiceSpec, netmask) -> KService:
    """What the kernel's dump gives back for spec (as Kernel.services() builds it)."""
    v6 = spec.address is None or spec.address.version == 6
    flags = IP_VS_SVC_F_HASHED | (IP_VS_SVC_F_PERSISTENT if spec.persistent else 0)
    return KService(protocol=6 if spec.protocol == "tcp" else 17, address=None if spec.fwmark else spec.address,
                    port=0 if spec.fwmark else spec.port, fwmark=spec.fwmark,
                    af=socket.AF_INET6 if v6 else socket.AF_INET, sched=spec.scheduler, flags=flags,
                    timeout=spec.persistent, netmask=netmask,
                    dests=[KDest(r.address, r.port, IP_VS_CONN_F_DROUTE if r.forward == "dr" else IP_VS_CONN_F_MASQ,
                                 r.weight) for r in spec.reals])


class RecordingKernel:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, *a))


REALS = (RealSpec(ip("2001:2::11"), 80, 1, "dr"), RealSpec(ip("2001:2::12"), 80, 2, "dr"))


@pytest.mark.parametrize("spec, netmask", [
    (ServiceSpec("tcp", VIP6, 80, "rr", REALS, persistent=360, pmask=64), 64),
    (ServiceSpec("tcp", VIP6, 80, "rr", REALS, persistent=360), 128),
    (ServiceSpec("tcp", VIP6, 80, "rr", REALS, persistent=360, pmask=128), 128),
    (ServiceSpec("udp", VIP6, 53, "wlc", REALS), 128),
    (ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1),), persistent=300,
                 pmask="255.255.255.0"), "255.255.255.0"),
    (ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1),), persistent=300,
                 pmask="255.255.255.255"), "255.255.255.255"),
])
def test_service_read_back_equal_is_not_rewritten(tmp_path, spec, netmask):
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    k = RecordingKernel()
    dp._apply_service(k, spec, kservice(spec, netmask))
    assert k.calls == [] and dp.writes == 0


def test_changed_prefix_is_rewritten(tmp_path):
    spec = ServiceSpec("tcp", VIP6, 80, "rr", REALS, persistent=360, pmask=48)
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    k = RecordingKernel()
    dp._apply_service(k, spec, kservice(spec, 64))
    assert [c[0] for c in k.calls] == ["set_service"]


def test_spec_of_ipv6_round_trip():
    spec = ServiceSpec("tcp", VIP6, 80, "rr", REALS, persistent=360, pmask=64)
    back = _spec_of(kservice(spec, 64))
    assert (back.address, back.pmask, back.persistent, back.reals) == (VIP6, 64, 360, REALS)
    assert _spec_of(kservice(ServiceSpec("tcp", VIP6, 80, "rr", persistent=60), 128)).pmask is None
    fwm = _spec_of(kservice(ServiceSpec("tcp", None, 0, "wlc", fwmark=61), 128))
    assert attrs(fwm, full=False) == {"IPVS_SVC_ATTR_AF": socket.AF_INET6, "IPVS_SVC_ATTR_FWMARK": 61}


def test_a_refused_read_is_a_sentence_not_a_traceback(monkeypatch, capsys):
    """Every IPVS netlink command is an admin one: `lb list --dataplane ipvs` without
    CAP_NET_ADMIN got EPERM from the dump as a NetlinkError and printed a traceback.  Now the
    reads raise IpvsError, which `lb list` prints in one line with exit 1."""
    import pyroute2
    from pyroute2.netlink.exceptions import NetlinkError

    from lb.cli.main import main
    from lb.dataplane import ipvs

    class RefusingIPVS:
        def __init__(self, *a, **k):
            pass

        def service(self, cmd, **kw):
            raise NetlinkError(1, "Operation not permitted")

        def close(self):
            pass

    monkeypatch.setattr(pyroute2, "IPVS", RefusingIPVS)
    monkeypatch.setattr(ipvs, "ensure_module", lambda: None)
    monkeypatch.setattr(ipvs, "read_info", lambda proc=None: ("1.2.1", 4096))
    with pytest.raises(IpvsError, match="cannot read the services of kernel IPVS: Operation not permitted "
                                         r"\(it needs root: CAP_NET_ADMIN\)"):
        ipvs.read_services()
    assert main(["list", "-n", "--dataplane", "ipvs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lb: cannot read the services of kernel IPVS") and "Traceback" not in err
