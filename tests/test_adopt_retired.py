"""A real server retired with its removed service is not revived by the service that reuses its
id after a restart: adopting the pins must give the same answer as the daemon that removed it
(a fresh slot, no connection counts of another VIP's) -- whether it left with its service, or
earlier, by a failed health check (retired then as revivable in that service)."""
from __future__ import annotations

import ipaddress

import pytest

from lb.dataplane import RealSpec, ServiceSpec, TableSpec
from lb.dataplane import layout as L
from lb.dataplane.xdp import XdpDataplane
from packets_util import fake_resolver, loaded_dataplane

ip = ipaddress.ip_address


def svc(vip: str, *reals: str, dead: tuple[str, ...] = ()) -> ServiceSpec:
    return ServiceSpec("tcp", ip(vip), 80, "wlc", tuple(RealSpec(ip(a), 80, 1, "dr") for a in reals),
                       dead=tuple((ip(a), 80) for a in dead))


def rid_of(dp: XdpDataplane, vip: str, real: str) -> int:
    [rid] = [rid for st in dp.table.services.values() if str(st.key.addr) == vip
             for rkey, rid in st.dests if str(rkey[0]) == real]
    return rid


@pytest.mark.parametrize("health_failed_first", [False, True], ids=["with-its-service", "dead-before"])
def test_a_removed_services_real_server_is_not_revived_by_its_ids_next_service_after_a_restart(health_failed_first):
    a = svc("198.18.0.10", "198.18.1.11", "198.18.1.13")
    with loaded_dataplane("retired", table=TableSpec((a,))) as dp:
        old = rid_of(dp, "198.18.0.10", "198.18.1.11")
        k = L.U32.pack(old)
        counts = bytearray(dp.maps["lb_real_conns"].get(k))
        counts[0:4] = (7).to_bytes(4, "little")             # 7 active connections of service A
        dp.maps["lb_real_conns"].set(k, bytes(counts))
        assert dp.table.real_conns(old)[0] == 7
        if health_failed_first:                             # retired, revivable in A
            dp.apply(TableSpec((svc("198.18.0.10", "198.18.1.13", dead=("198.18.1.11",)),)))
        dp.apply(TableSpec((svc("198.18.0.30", "198.18.1.12"),)))    # A removed; C takes its id
        again = XdpDataplane(dp.instance, dp.sizes, resolver=fake_resolver)
        again.load()
        try:
            assert again.adopted
            again.apply(TableSpec((svc("198.18.0.30", "198.18.1.12", "198.18.1.11"),)))
            new = rid_of(again, "198.18.0.30", "198.18.1.11")
            assert new != old and again.table.real_conns(new)[0] == 0
        finally:
            again.close()
