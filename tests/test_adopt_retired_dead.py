"""A real server retired by a failed health check before its service is removed is not revived,
after a restart, by the service that reuses the removed one's id (as test_adopt_retired)."""
from __future__ import annotations

import ipaddress

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.xdp import XdpDataplane
from packets_util import fake_resolver, loaded_dataplane
from test_adopt_retired import rid_of

ip = ipaddress.ip_address


def svc(vip, *reals, dead=()):
    return ServiceSpec("tcp", ip(vip), 80, "wlc", tuple(RealSpec(ip(a), 80, 1, "dr") for a in reals),
                       dead=tuple((ip(a), 80) for a in dead))


def test_a_dead_server_of_a_removed_service_is_not_revived_after_a_restart():
    with loaded_dataplane("retireddead", table=TableSpec((svc("198.18.0.10", "198.18.1.11", "198.18.1.13"),))) as dp:
        old = rid_of(dp, "198.18.0.10", "198.18.1.11")
        k = L.U32.pack(old)
        counts = bytearray(dp.maps["lb_real_conns"].get(k))
        counts[0:4] = (7).to_bytes(4, "little")
        dp.maps["lb_real_conns"].set(k, bytes(counts))
        dp.apply(TableSpec((svc("198.18.0.10", "198.18.1.13", dead=("198.18.1.11",)),)))   # retired, revivable
        dp.apply(TableSpec((svc("198.18.0.30", "198.18.1.12"),)))     # A removed; C takes its id
        again = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
        again.load()
        try:
            assert again.adopted
            again.apply(TableSpec((svc("198.18.0.30", "198.18.1.12", "198.18.1.11"),)))
            new = rid_of(again, "198.18.0.30", "198.18.1.11")
            assert new != old and again.table.real_conns(new)[0] == 0
        finally:
            again.close()
