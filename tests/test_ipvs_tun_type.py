"""lb's tunnel real servers are ipip (Kernel._dest sends IPVS_DEST_ATTR_TUN_TYPE 0).  One of its
own that the kernel has with another tunnel type (ipvsadm -e ... --tun-type gre) is rewritten by
the next apply, as a drifted weight or forward method is; before, the type was not read and the
server went on encapsulating in GRE/GUE that the real server may not decapsulate."""
from __future__ import annotations

import ipaddress

from lb.dataplane.ipvs import IP_VS_CONN_F_TUNNEL, IpvsDataplane, KDest
from lb.dataplane.spec import RealSpec, ServiceSpec
from test_ipvs_ipv6 import RecordingKernel, kservice

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
