"""lb's tunnel real servers are ipip (Kernel._dest sends IPVS_DEST_ATTR_TUN_TYPE 0).  One of its
own that the kernel has with another tunnel type (ipvsadm -e ... --tun-type gre) is rewritten by
the next apply, as a drifted weight or forward method is; before, the type was not read and the
server went on encapsulating in GRE/GUE that the real server may not decapsulate."""
from __future__ import annotations

import ipaddress
import socket

from lb.dataplane.ipvs import IP_VS_CONN_F_TUNNEL, IpvsDataplane, KDest
from lb.dataplane.spec import RealSpec, ServiceSpec
from test_ipvs_ipv6 import RecordingKernel, kservice
from test_ipvs_owned import FakeKernel

ip = ipaddress.ip_address


def test_a_tunnel_of_another_type_is_rewritten_to_ipip(tmp_path):
    spec = ServiceSpec("tcp", ip("198.18.0.10"), 80, "rr", (RealSpec(ip("198.18.1.11"), 80, 1, "tunnel"),))
    ks = kservice(spec, "255.255.255.255")
    ks.dests = [KDest(ip("198.18.1.11"), 80, IP_VS_CONN_F_TUNNEL, 1, tun_type=2)]        # gre
    dp = IpvsDataplane("t", run_dir=str(tmp_path))
    k = RecordingKernel()
    dp._apply_service(k, spec, ks)
    assert [c[0] for c in k.calls] == ["set_dest"]
    ks.dests = [KDest(ip("198.18.1.11"), 80, IP_VS_CONN_F_TUNNEL, 1, tun_type=0)]        # ipip: left alone
    k = RecordingKernel()
    dp._apply_service(k, spec, ks)
    assert k.calls == []


def test_scheduler_flag_names_are_ipvsadm_s(monkeypatch):
    """ipvsadm 1.31's print_sched_flags names sh's and mh's first two flags only: a third one
    set on the kernel's service (ipvsadm -b flag-3) is left out, and so are the parentheses
    when it is alone; other schedulers' flags are flag-1..3.  lb's IPVS-mode listing printed
    "sh-flag-3"."""
    from lb import listing
    from lb.dataplane import ipvs
    kss = [ipvs.KService(socket.IPPROTO_TCP, ip("198.18.0.10"), 80, 0, socket.AF_INET, sched, flags, 0, None, [])
           for sched, flags in (("sh", ipvs.IP_VS_SVC_F_SCHED1 | ipvs.IP_VS_SVC_F_SCHED3),
                                ("mh", ipvs.IP_VS_SVC_F_SCHED2 | ipvs.IP_VS_SVC_F_SCHED3),
                                ("sh", ipvs.IP_VS_SVC_F_SCHED3),
                                ("rr", ipvs.IP_VS_SVC_F_SCHED1 | ipvs.IP_VS_SVC_F_SCHED3))]
    monkeypatch.setattr(FakeKernel, "services_now", dict(enumerate(kss)))
    monkeypatch.setattr(ipvs, "Kernel", FakeKernel)
    out = listing.format_services(ipvs.read_services())
    assert "TCP  198.18.0.10:80 sh (sh-fallback)" in out.splitlines()
    assert "TCP  198.18.0.10:80 mh (mh-port)" in out.splitlines()
    assert "TCP  198.18.0.10:80 sh" in out.splitlines()
    assert "TCP  198.18.0.10:80 rr (flag-1,flag-3)" in out
