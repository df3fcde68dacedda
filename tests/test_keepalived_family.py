"""keepalived's ip_family was accepted and ignored: one the virtual server's address (or, for a
firewall-mark service, its lb_port_group addresses) does not have is an error naming its line
(keepalived ignores it there with a log line, or leaves out the other family's real servers)."""
from __future__ import annotations

import pytest

from lb.config import ConfigError, keepalived

HEAD = "global_defs {\n lb_public_interface eth0\n}\n"


def servers(text: str) -> dict[str, list[tuple[str, int]]]:
    cfg = keepalived.loads(HEAD + text, "k.conf", config_id="lb1")
    return {vs.name: [(str(r.address), r.weight) for r in vs.real_servers] for vs in cfg.virtual_servers}


def issues(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as e:
        keepalived.loads(HEAD + text, "k.conf", config_id="lb1")
    return [(i.path, i.line, i.message) for i in e.value.issues]


@pytest.mark.parametrize("vs, family, line, what", [
    ("198.18.0.10 80", "inet6", 6, "ip_family inet6, but the virtual server's address 198.18.0.10 (k.conf:4) is IPv4"),
    ("2001:2::10 80", "inet", 6, "ip_family inet, but the virtual server's address 2001:2::10 (k.conf:4) is IPv6"),
    ("fwmark 5", "inet6", 6, "ip_family inet6, but the lb_port_group address 198.18.0.10 (k.conf:7) is IPv4"),
    ("198.18.0.10 80", "ipx", 6, "'ipx' is not an address family: inet or inet6"),
])
def test_ip_family_must_match_the_virtual_servers_address(vs: str, family: str, line: int, what: str) -> None:
    rs = "2001:2::11" if ":" in vs else "198.18.1.1"
    text = (f"virtual_server {vs} {{\n lb_kind DR\n ip_family {family}\n lb_port_group tcp 198.18.0.10 80\n"
            f" real_server {rs} {{\n weight 1\n }}\n}}\n")
    if not vs.startswith("fwmark"):
        text = text.replace(" lb_port_group tcp 198.18.0.10 80\n", "")
    assert [(i[1], i[2].split(": make")[0]) for i in issues(text)] == [(line, what)]


def test_ip_family_of_the_address_family_is_accepted() -> None:
    assert servers("virtual_server 198.18.0.10 80 {\n lb_kind DR\n ip_family inet\n"
                   " real_server 198.18.1.1 80 {\n weight 1\n }\n}\n") == {"198.18.0.10:80": [("198.18.1.1", 1)]}
    assert servers("virtual_server fwmark 5 {\n lb_kind DR\n ip_family inet6\n lb_port_group tcp 2001:2::10 80\n"
                   " real_server 2001:2::11 {\n weight 1\n }\n}\n") == {"fwmark5": [("2001:2::11", 1)]}
