"""keepalived.conf read as lb's configuration (lb.config.keepalived): the files of tests/keepalived/
(shaped like keepalived's own samples) load, `lb check` them clean, `lb import` gives TOML that
lb's loader reads back to the same model; what lb does differently is a warning with its line;
what it cannot do is an error naming file:line and keyword."""
from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from lb.cli.main import main
from lb.config import ConfigError, format_of, keepalived, load, loads, totoml
from fuzzseed import SEED, named

DIR = Path(__file__).resolve().parent / "keepalived"
REPO = DIR.parents[1]
FILES = ["nat-persistence.conf", "dr-checkers.conf", "tun-group.conf", "fwmark-ftp.conf", "vrrp-primary.conf",
         "vrrp-backup.conf", "includes.conf"]
LAB = [REPO / "configs" / "keepalived-lab-dr.conf", REPO / "configs" / "keepalived-lab-nat.conf"]


TIMING = "keepalived takes the real server down after "  # lb's checks cannot retry sooner: a warning


def warned(cfg) -> list[tuple[int | None, str]]:
    return [(w.line, w.field) for w in cfg.warnings]


def not_timing(cfg) -> list:
    return [w for w in cfg.warnings if not w.message.startswith(TIMING)]


def error_of(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as ei:
        keepalived.loads(text, "k.conf")
    return [(i.line, i.field, i.message) for i in ei.value.issues]


@pytest.mark.parametrize("path", [DIR / f for f in FILES] + LAB, ids=lambda p: p.name)
def test_each_file_loads_checks_and_imports_to_the_same_model(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert format_of(path) == "keepalived"
    cfg = keepalived.load(path, config_id="lb1")
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok (")
    assert main(["import", str(path), "--config-id", "lb1"]) == 0
    toml = capsys.readouterr().out
    assert toml.startswith(f"# Converted from {path} by `lb import`.\n")
    assert loads(toml) == dataclasses.replace(cfg, path=None)
    for w in cfg.warnings:  # every warning names its line in the TOML's header too
        assert f"#   {w.as_warning()}\n" in toml


def test_nat_persistence_digest_ssl_and_sorry_server() -> None:
    cfg = load(DIR / "nat-persistence.conf")
    assert (cfg.instance, cfg.network, cfg.public_interface, cfg.private_interface) == ("lvs_nat", "nat", "eth0",
                                                                                        "eth1")
    assert cfg.nat_router == IPv4Interface("10.10.10.254/24") and cfg.ha is None
    app, tls = cfg.virtual_servers
    assert (app.name, app.port, app.scheduler, app.persistent, app.pmask) == ("192.0.2.10:1358", 1358, "rr", 50,
                                                                              "255.255.255.0")
    assert app.sorry_server == (IPv4Address("10.10.10.200"), None)  # the service's own port
    m = app.monitor
    assert (m.kind, m.path, m.digest, m.status) == ("http", "/testurl/test.jsp", "640205b7b0fc66c1ea91c463fac6334d",
                                                    (200, 299))
    # every 6 s; keepalived: down after retry 3 + 1 failed checks 3 s apart, 15 s at the soonest: lb's
    # 2nd failed check (12 s after the last success started); back at the first success
    assert (m.interval, m.timeout, m.reentry, m.connect_timeout) == (6, 12, 0, 3)
    assert [r.weight for r in app.real_servers] == [1, 2]
    assert (tls.persistent, tls.monitor.kind, tls.monitor.tls_verify, tls.monitor.status) == (360, "https", False,
                                                                                             (200, 200))
    assert tls.real_servers[0].port == 8443
    assert warned(cfg) == [(6, "global_defs.notification_email"), (9, "global_defs.notification_email_from"),
                           (10, "global_defs.smtp_server"), (11, "global_defs.smtp_connect_timeout"),
                           (35, "virtual_server[192.0.2.10 1358].real_server[10.10.10.2 1358].HTTP_GET.retry"),
                           (63, "virtual_server[192.0.2.10 443].real_server[10.10.10.2 8443].SSL_GET"),
                           (68, "virtual_server[192.0.2.10 443].real_server[10.10.10.2 8443].SSL_GET.url")]
    assert cfg.warnings[4].message == (
        "keepalived takes the real server down after 4 failed checks, retried 3 s apart (at the soonest 15 s after "
        "the last success); lb checks every 6 s only, so it takes it down at the 2nd failed check in a row "
        "(timeout 12 s), never later than keepalived")
    # SSL_GET: keepalived's default retry 1 after 1 s; lb's next check comes 10 s later
    assert cfg.warnings[5].message.endswith("lb checks every 10 s only, so it takes it down at the first failed "
                                            "check (timeout 0), never later than keepalived")


def test_every_checker_kind() -> None:
    cfg = load(DIR / "dr-checkers.conf")
    assert (cfg.network, (cfg.timeouts.tcp, cfg.timeouts.tcpfin, cfg.timeouts.udp)) == ("direct", (7200, 60, 120))
    tcp, misc, smtp, udp, dns, http = cfg.virtual_servers
    # retry 2, 1 s apart: within delay_loop 5 s; lb takes it down at the first failed check
    assert (tcp.monitor.kind, tcp.monitor.quiesce, tcp.monitor.timeout) == ("tcp", True, 0)
    assert (tcp.real_servers[0].u_threshold, tcp.real_servers[0].l_threshold) == (500, 400)
    assert (misc.monitor.kind, misc.monitor.program, misc.monitor.connect_timeout) == (
        "program", "/etc/keepalived/check_pg.sh %h 5432", 4)
    assert misc.monitor.timeout == 0  # MISC_CHECK: no retry by default: down at the first failure
    assert (smtp.monitor.kind, smtp.monitor.expect, smtp.monitor.use_regex) == ("send_expect", "^220", True)
    assert (udp.protocol, udp.scheduler_flags) == ("udp", ("sh-port",))
    assert (udp.monitor.kind, udp.monitor.send, udp.monitor.expect) == ("udp", "ping\n", "\\Apong")
    assert (dns.monitor.kind, dns.monitor.timeout) == ("udp", 0)  # DNS_CHECK: retry 3, 1 s apart, in 6 s
    assert (http.monitor.host, http.monitor.status, http.monitor.body_regex) == ("www.example.org", (200, 204),
                                                                                 "ok|ready")
    assert (http.scheduler, http.scheduler_flags) == ("mh", ("mh-fallback",))
    assert [(w.line, w.field) for w in not_timing(cfg)] == [
        (65, "virtual_server[192.0.2.20 25].real_server[192.0.2.51 25].SMTP_CHECK.helo_name")]
    # each virtual server's checker retries (keepalived's default retry is 1): what lb does of it, once
    assert [(w.line, w.field) for w in cfg.warnings if w.message.startswith(TIMING)] == [
        (22, "virtual_server[192.0.2.20 80].real_server[192.0.2.31 80].TCP_CHECK.retry"),
        (63, "virtual_server[192.0.2.20 25].real_server[192.0.2.51 25].SMTP_CHECK"),
        (79, "virtual_server[192.0.2.20 1812].real_server[192.0.2.61 1812].UDP_CHECK"),
        (95, "virtual_server[192.0.2.20 53].real_server[192.0.2.71 53].DNS_CHECK"),
        (118, "virtual_server[192.0.2.21 80].real_server[192.0.2.31 80].HTTP_GET")]


def udp_check(vs, reply: bytes):
    """The imported check of vs's first real server, run against a server on 127.0.0.1 that
    answers each datagram with `reply`."""
    import asyncio

    from lb.engine import check_spec
    from lb.health import run_check

    class Answer(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(reply, addr)

    async def main():
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Answer, local_addr=("127.0.0.1", 0))
        try:
            spec = check_spec(vs, vs.real_servers[0])[0]
            return await run_check(dataclasses.replace(spec, host="127.0.0.1",
                                                       port=transport.get_extra_info("sockname")[1]))
        finally:
            transport.close()

    return asyncio.run(main())


def test_dns_check_sends_a_dns_query() -> None:
    from scapy.layers.dns import DNS

    from lb.health.checks import decode_escapes

    vs = load(DIR / "dr-checkers.conf").virtual_servers[4]
    q = DNS(decode_escapes(vs.monitor.send).encode("utf-8"))
    assert (q.id, q.rd, q.qdcount, q.qd[0].qname, q.qd[0].qtype) == (0x4C42, 1, 1, b"example.org.", 1)
    # as keepalived's check_dns: an answer with our id, QR set and RCODE 0 (NOERROR) passes;
    # another id, SERVFAIL, REFUSED or the query echoed back (QR clear) fails
    replies = {"answer": DNS(id=0x4C42, qr=1, rd=1, ra=1, qd=q.qd), "aa": DNS(id=0x4C42, qr=1, aa=1, qd=q.qd),
               "other id": DNS(id=7, qr=1, qd=q.qd), "servfail": DNS(id=0x4C42, qr=1, rcode=2, qd=q.qd),
               "refused": DNS(id=0x4C42, qr=1, rd=1, rcode=5, qd=q.qd), "echo": q}
    got = {name: udp_check(vs, bytes(reply)).ok for name, reply in replies.items()}
    assert [name for name, ok in got.items() if ok] == ["answer", "aa"], got


def test_tunnel_group_expands_to_virtual_servers() -> None:
    cfg = load(DIR / "tun-group.conf")
    assert cfg.network == "tunnel"
    assert [vs.name for vs in cfg.virtual_servers] == ["192.0.2.40:80", "192.0.2.41:80", "192.0.2.42:80",
                                                       "192.0.2.43:80", "192.0.2.40:8080"]
    assert all(vs.scheduler == "wrr" and [r.weight for r in vs.real_servers] == [2, 1] for vs in cfg.virtual_servers)
    assert cfg.virtual_servers[4].monitor.port == 80 and cfg.virtual_servers[0].monitor.port is None


def test_fwmark_service_with_lb_port_groups() -> None:
    [ftp] = load(DIR / "fwmark-ftp.conf").virtual_servers
    assert (ftp.fwmark, ftp.persistent, ftp.address) == (21, 900, IPv4Address("192.0.2.50"))
    assert [(g.protocol, g.low, g.high) for g in ftp.port_groups] == [("tcp", 21, 21), ("tcp", 10000, 10100)]
    assert ftp.monitor.port == 21 and all(r.port is None for r in ftp.real_servers)
    text = (DIR / "fwmark-ftp.conf").read_text().replace("    lb_port_group tcp 192.0.2.50 21\n", "").replace(
        "    lb_port_group tcp 192.0.2.50 10000-10100\n", "")
    [(line, fld, msg)] = error_of(text)
    assert (line, fld) == (8, "virtual_server[fwmark 21].lb_port_group")
    assert "list the ports your rules marked with 21 in this block" in msg


def test_vrrp_pair_maps_to_the_same_ha_on_both_directors() -> None:
    primary, backup = load(DIR / "vrrp-primary.conf"), load(DIR / "vrrp-backup.conf")
    assert primary.ha == backup.ha and primary.ha is not None
    ha = primary.ha
    assert (str(ha.primary), str(ha.backup), str(ha.primary_private), str(ha.backup_private)) == (
        "192.0.2.2", "192.0.2.3", "10.0.1.2", "10.0.1.3")
    assert (ha.keepalive, ha.deadtime, ha.monitor_links, ha.preempt, ha.sync) == (1, 3, True, False, True)
    assert ha.key_file == Path("/etc/lb/ha.key")
    assert (primary.nat_router, primary.nat_router_device) == (IPv4Interface("10.0.1.254/24"), "eth1")
    assert (primary.instance, backup.instance) == ("lvs_primary", "lvs_backup")
    assert warned(primary) == [(6, "global_defs.enable_script_security"), (16, "vrrp_instance[VI_PUB]"),
                               (16, "vrrp_instance[VI_PUB]"), (26, "vrrp_instance[VI_PUB].authentication"),
                               (38, "vrrp_instance[VI_PRIV]"),
                               (61, "virtual_server[192.0.2.100 80].real_server[10.0.1.11 80].TCP_CHECK")]
    mapped = primary.warnings[2].message
    assert mapped.startswith("mapped to [ha]: primary 192.0.2.2, backup 192.0.2.3")
    assert "lb's heartbeat is not VRRP" in mapped and "both directors move to lb together" in mapped


def test_includes_parameters_and_conditional_lines() -> None:
    one = keepalived.load(DIR / "includes.conf", config_id="lb1")
    two = keepalived.load(DIR / "includes.conf", config_id="lb2")
    assert (one.instance, two.instance) == ("director_one", "director_two")
    web, api = one.virtual_servers
    assert (web.name, [r.port for r in web.real_servers]) == ("192.0.2.90:80", [8080, 8080])
    assert (api.name, api.scheduler, api.monitor.kind) == ("192.0.2.90:443", "wlc", "none")  # no checker: always up
    [w] = one.warnings  # the TCP_CHECK's default retry, in conf.d/10-web.conf
    assert (Path(w.path).name, w.line, w.message.startswith(TIMING)) == ("10-web.conf", 6, True)


def test_errors_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "main.conf").write_text("global_defs {\n  lb_public_interface eth0\n}\ninclude conf.d/*.conf\n")
    (tmp_path / "conf.d" / "web.conf").write_text(
        "virtual_server 192.0.2.1 80 {\n  lb_kind DR\n  real_server 192.0.2.5 80 {\n    weight 70000\n  }\n"
        "  real_server 192.0.2.6 81 {\n  }\n}\n")
    with pytest.raises(ConfigError) as ei:
        load(tmp_path / "main.conf")
    shown = str(tmp_path / "main.conf")[: -len("main.conf")] + "conf.d/web.conf"
    assert [str(i) for i in ei.value.issues] == [
        f"{shown}:4: virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].weight: expected an integer "
        f"0..65535, got '70000'",
        f"{shown}:6: virtual_server[192.0.2.1 80].real_server[192.0.2.6 81].port: direct routing cannot change "
        f"the destination port (real server port 81, virtual server port 80); omit port or use network = \"nat\"",
    ]


HEAD = "global_defs {\n  lb_public_interface eth0\n}\n"  # lines 1-3
VS = "virtual_server 192.0.2.1 80 {\n  lb_kind DR\n  real_server 192.0.2.5 80 {\n  }\n}\n"  # lines 4-8


@pytest.mark.parametrize("text, expected", [
    # the sample of keepalived's documentation: VRRP by multicast, the peer unknown
    ("vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 50\n  virtual_ipaddress {\n    192.0.2.1\n  }\n}\n"
     + VS.replace("lb_kind DR", "lb_kind NAT"),
     [(1, "vrrp_instance[VI_1]", "lb's heartbeat goes between the two directors' addresses, and this VRRP instance "
                                 "advertises by multicast without naming its peer: give unicast_src_ip (this "
                                 "director's address) and unicast_peer { PEER } (keepalived accepts both)"),
      (8, "global_defs.nat_router", "NAT: lb owns the real servers' gateway (nat_router) and keepalived.conf does not say it: "
                         "with VRRP it is a virtual_ipaddress on the real servers' side (e.g. 10.0.0.254/24 dev "
                         "eth1); without, add `lb_nat_router ADDRESS/PREFIX IF` to global_defs (keepalived ignores "
                         "it, with a warning)")]),
    (VS, [(1, "global_defs.public_interface", "cannot tell the public interface (the one that carries the VIPs): keepalived.conf "
                             "names it only in a vrrp_instance holding the VIPs; add `lb_public_interface IF` to "
                             "global_defs (keepalived ignores it, with a warning)")]),
    (HEAD + VS + VS.replace("192.0.2.1 80", "192.0.2.2 80").replace("DR", "NAT"),
     [(10, "virtual_server[192.0.2.2 80].lb_kind", "lb forwards every virtual server the same way ([global] "
                                                   "network): this one is NAT, the first (k.conf:5) DR")]),
    (HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  protocol SCTP"),
     [(6, "virtual_server[192.0.2.1 80].protocol", "SCTP is not supported (lb balances TCP and UDP)")]),
    (HEAD + VS.replace("192.0.2.1 80 {", "192.0.2.1 {"),
     [(4, "virtual_server[192.0.2.1]", "a virtual server without a port (IPVS's persistent port-0 service) is not "
                                       "supported: give the port, or make it a firewall-mark service (fwmark N "
                                       "with lb_port_group lines)")]),
    (HEAD + VS.replace("lb_kind DR", "lvs_method TUN type gue port 6080"),
     [(5, "virtual_server[192.0.2.1 80].lvs_method", "lb tunnels with IPIP only (type gue and gre are not "
                                                     "supported)")]),
    (HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  lb_algo wlc\n  lb_algo rr"),
     [(7, "virtual_server[192.0.2.1 80].lb_algo", "lb_algo given twice (first at k.conf:6)")]),
    # keepalived takes a repeated keyword's last value, lb took the first: a weight or a timeout
    # other than keepalived's without a word
    (HEAD + VS.replace("80 {\n  }", "80 {\n    weight 1\n    weight 5\n  }"),
     [(8, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].weight", "weight given twice (first at k.conf:7)")]),
    (HEAD + VS.replace("80 {\n  }", "80 {\n    TCP_CHECK {\n      connect_timeout 3\n      connect_timeout 9\n"
                                    "    }\n  }"),
     [(9, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].TCP_CHECK.connect_timeout",
       "connect_timeout given twice (first at k.conf:8)")]),
    (HEAD + VS.replace("80 {\n  }", "80 {\n    HTTP_GET {\n      url {\n        path /a\n        path /b\n"
                                    "      }\n    }\n  }"),
     [(10, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].HTTP_GET.url.path", "path given twice (first at k.conf:9)")]),
    # lb_algo and lvs_sched (lb_kind and lvs_method) are one keyword's two names: keepalived ran rr
    # here, lb wlc
    (HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  lb_algo wlc\n  lvs_sched rr"),
     [(7, "virtual_server[192.0.2.1 80].lvs_sched", "lvs_sched given twice (as lb_algo, first at k.conf:6)")]),
    (HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  lvs_method NAT"),
     [(6, "virtual_server[192.0.2.1 80].lvs_method", "lvs_method given twice (as lb_kind, first at k.conf:5)")]),
    ("vrrp_instance VI_1 {\n  interface eth0\n  mcast_src_ip 192.0.2.2\n  unicast_src_ip 192.0.2.3\n"
     "  unicast_peer {\n    192.0.2.4\n  }\n}\n",
     [(4, "vrrp_instance[VI_1].unicast_src_ip", "unicast_src_ip given twice (as mcast_src_ip, first at k.conf:3)")]),
    ("global_defs {\n  lb_public_interface eth0\n  lb_public_interface eth1\n}\n" + VS,
     [(3, "global_defs.lb_public_interface", "lb_public_interface given twice (first at k.conf:2)")]),
    (HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  lb_algo fastest"),
     [(6, "virtual_server[192.0.2.1 80].lb_algo", "unknown scheduler 'fastest' (valid: rr, wrr, lc, wlc, sed, nq, "
                                                  "dh, sh, mh, fo, ovf, lblc, lblcr, twos)")]),
    (HEAD + 'virtual_server 192.0.2.1 80 {\n  lb_algo "rr\n}\n', [(5, "", "unterminated \"quoted\" string")]),
    (HEAD + VS[:-2], [(7, "", "missing '}': end of file inside virtual_server (opened at k.conf:4)")]),
    (HEAD + "}\n", [(4, "", "unexpected '}' (no block is open)")]),
    (HEAD + "{\n", [(4, "", "unexpected '{' (no keyword opens it)")]),
    ("a {" * 17 + "}" * 17 + "\n", [(1, "", "blocks nested deeper than 16")]),
    (HEAD + "include /nonexistent/lb-test/keepalived.conf\n",
     [(4, "", "cannot read /nonexistent/lb-test/keepalived.conf: no such file")]),
])
def test_errors_name_the_line_and_keyword(text: str, expected: list) -> None:
    assert error_of(text) == expected


NAT_ROUTER = "global_defs {\n  lb_public_interface eth0\n  lb_nat_router 10.0.0.254/24\n}\n" + VS.replace(
    "lb_kind DR", "lb_kind NAT").replace("192.0.2.5", "10.0.0.5")  # lb_nat_router: line 3


@pytest.mark.parametrize("text, expected", [
    # the gateway without the interface lb adds it to: said at its line, what is missing
    (NAT_ROUTER, [(3, "global_defs.lb_nat_router", "names no interface: NAT needs the director's interface toward "
                                                   "the real servers (where lb adds this gateway): write "
                                                   "`lb_nat_router ADDRESS/PREFIX IF` (e.g. `lb_nat_router "
                                                   "10.0.0.254/24 eth1`) or add `lb_private_interface IF` to "
                                                   "global_defs")]),
    # a malformed line: its own error alone, no line-less "private_interface: required" after it
    (NAT_ROUTER.replace("10.0.0.254/24", "10.0.0.254/24 eth1 1-3"),
     [(3, "global_defs.lb_nat_router", "expected 'lb_nat_router ADDRESS/PREFIX [IF]'")]),
], ids=["no-interface", "malformed"])
def test_lb_nat_router_errors_name_its_line(text: str, expected: list, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert error_of(text) == expected
    conf = tmp_path / "k.conf"
    conf.write_text(text)
    assert main(["check", "--config", str(conf)]) == 2
    assert capsys.readouterr().err == "".join(f"{conf}:{line}: {fld}: {msg}\n" for line, fld, msg in expected)


def test_lb_nat_router_takes_lb_private_interface() -> None:
    cfg = keepalived.loads(NAT_ROUTER.replace("  lb_nat_router", "  lb_private_interface eth1\n  lb_nat_router"),
                           "k.conf")
    assert (cfg.private_interface, cfg.nat_device, str(cfg.nat_router)) == ("eth1", "eth1", "10.0.0.254/24")


DUAL_STACK_NAT = """\
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 100
    unicast_src_ip 198.18.0.1
    unicast_peer {
        198.18.0.2
    }
    virtual_ipaddress {
        198.18.0.10/32 dev eth0
        2001:2::10/128 dev eth0
        198.18.1.254/24 dev eth1
        2001:2:0:1::fffe/64 dev eth1
    }
}
virtual_server 198.18.0.10 80 {
    lb_kind NAT
    protocol TCP
    real_server 198.18.1.11 80 { }
}
virtual_server 2001:2::10 80 {
    lb_kind NAT
    protocol TCP
    real_server 2001:2:0:1::11 80 { }
}
"""


def test_dual_stack_nat_keeps_one_gateway_and_says_so() -> None:
    """lb owns one nat_router: the second family's gateway address is not added (the warning
    said it was not a gateway at all), and that family's NAT service is warned about."""
    cfg = keepalived.loads(DUAL_STACK_NAT, "k.conf")
    assert str(cfg.nat_router) == "198.18.1.254/24"
    said = {(w.line, w.field): w.message for w in cfg.warnings}
    assert said[(14, "vrrp_instance[VI_1].virtual_ipaddress")] == (
        "2001:2:0:1::fffe/64: lb owns only one real servers' gateway (nat_router, of one address family): "
        "198.18.1.254/24 is it, this address is not added")
    assert said[(22, "virtual_server[2001:2::10 80]")].startswith(
        "NAT: this IPv6 virtual server's real servers have no gateway that moves with the active director")
    assert not any(f.startswith("virtual_server[198.18.0.10") for _, f in said)


def test_warnings_for_what_lb_does_not_do() -> None:
    text = HEAD + """\
vrrp_script chk {
  script "/bin/true"
}
virtual_server 192.0.2.1 80 {
  lb_kind DR
  quorum 2
  ha_suspend
  nonsense_keyword 1
  real_server 192.0.2.5 80 {
    notify_down /bin/alert
    PING_CHECK {
    }
  }
  real_server 192.0.2.6 80 {
    TCP_CHECK {
      bindto 192.0.2.9
    }
    HTTP_GET {
      url {
        path /
      }
    }
  }
}
"""
    cfg = keepalived.loads(text, "k.conf")
    assert [(w.line, w.field, w.message) for w in cfg.warnings] == [
        (4, "vrrp_script", "not part of lb's configuration: lb's HA runs no track scripts: a director fails over "
                           "when its heartbeats stop (or its public link goes down, [ha] monitor_links)"),
        (9, "virtual_server[192.0.2.1 80].quorum", "no effect: lb has no quorum; a sorry_server takes the "
                                                   "connections while no real server is up"),
        (10, "virtual_server[192.0.2.1 80].ha_suspend", "no effect: the active director holds every VIP, so its "
                                                        "checks always run"),
        (11, "virtual_server[192.0.2.1 80].nonsense_keyword", "unknown keyword (keepalived would report it too): "
                                                              "ignored"),
        (12, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80]", "this real server has no checker (always up "
                                                                       "in keepalived); lb checks it as the others "
                                                                       "(TCP_CHECK of virtual_server[192.0.2.1 80]"
                                                                       ".real_server[192.0.2.6 80])"),
        (13, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].notify_down",
         "no effect: lb runs no per-server scripts; each transition is logged and shown by `lb status`"),
        (14, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].PING_CHECK",
         "not supported: lb has no PING check; the real server is not checked"),
        (18, "virtual_server[192.0.2.1 80].real_server[192.0.2.6 80].TCP_CHECK",
         "keepalived takes the real server down after 2 failed checks, retried 1 s apart (at the soonest 61 s "
         "after the last success); lb checks every 60 s only, so it takes it down at the first failed check "
         "(timeout 0), never later than keepalived"),
        (19, "virtual_server[192.0.2.1 80].real_server[192.0.2.6 80].TCP_CHECK.bindto",
         "no effect: lb's checks leave from the director's own address toward the real server"),
        (21, "virtual_server[192.0.2.1 80].real_server[192.0.2.6 80].HTTP_GET",
         "no effect: lb runs one check per real server, its first (TCP_CHECK at line 18)"),
    ]
    assert cfg.virtual_servers[0].monitor.kind == "tcp"


def test_differing_checks_and_udp_hex_wildcards() -> None:
    text = HEAD + """\
virtual_server 192.0.2.1 5000 {
  lb_kind DR
  protocol UDP
  real_server 192.0.2.5 5000 {
    UDP_CHECK {
      payload 41 42
      require_reply 4X 43
    }
  }
  real_server 192.0.2.6 5000 {
    UDP_CHECK {
      payload 41 42
      require_reply 4X 43
      connect_timeout 9
    }
  }
}
"""
    cfg = keepalived.loads(text, "k.conf")
    m = cfg.virtual_servers[0].monitor
    assert (m.send, m.use_regex) == ("AB", True)
    assert m.expect == "\\A[" + "".join(f"\\x{v:02x}" for v in range(0x40, 0x50)) + "]C"
    [w] = not_timing(cfg)
    assert (w.line, w.field) == (14, "virtual_server[192.0.2.1 5000].real_server[192.0.2.6 5000].UDP_CHECK")
    assert w.message.endswith("this one differs in connect_timeout")


def test_udp_require_reply_is_matched_on_bytes() -> None:
    """keepalived compares require_reply byte by byte, X a nibble of any value: so does the
    imported check, whatever the reply's bytes are as UTF-8 (a two-byte sequence, a byte that
    starts a sequence left unfinished, exact bytes 80-ff)."""
    text = HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  protocol UDP").replace(
        "80 {\n  }", "80 {\n    UDP_CHECK {\n      payload 41\n      require_reply %s\n    }\n  }")
    cases = [("XX XX 41", b"\xc3\xa9A", True),      # "é" in UTF-8: two bytes, one character
             ("XX XX 41", b"\xc3\xa9B", False),
             ("eX 41", b"\xe2A", True),            # the start of a 3-byte sequence, cut short
             ("ff 4X", b"\xffC", True),             # exact bytes 80-ff are compared too
             ("ff 4X", b"\xfeC", False)]
    got, warnings = [], []
    for rr, reply, _ in cases:
        cfg = keepalived.loads(text % rr, "k.conf")
        warnings += not_timing(cfg)
        got.append(udp_check(cfg.virtual_servers[0], reply).ok)
    assert got == [ok for _, _, ok in cases]
    assert warnings == []
    assert loads(totoml.dumps(cfg)).virtual_servers[0].monitor.reply_encoding == "latin-1"


def test_tcp_check_of_a_udp_service_is_a_warning() -> None:
    cfg = keepalived.loads(HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  protocol UDP").replace(
        "80 {\n  }", "80 {\n    TCP_CHECK {\n    }\n  }"), "k.conf")
    [w] = not_timing(cfg)
    assert w.line == 8 and "not with a TCP connection" in w.message


RETRYING = HEAD + """\
virtual_server 192.0.2.1 80 {
  lb_kind DR
  delay_loop 2
  real_server 192.0.2.5 80 {
    TCP_CHECK {
      connect_timeout 1
      retry 3
    }
  }
}
"""  # the retry: line 10


def _down_after(m, ok_lasts: float, fail_lasts: float) -> float:
    """When lb's nanny takes a real server down: a success at 0, then a failed check every interval."""
    from lb.health.checks import CheckResult, CheckSpec
    from lb.health.monitor import Monitor, NannyPolicy

    mon = Monitor("rs", CheckSpec(kind="tcp", host="192.0.2.5", port=80), NannyPolicy(m.interval, m.timeout, m.reentry),
                  None, clock=lambda: 0.0)
    mon.observe(CheckResult(True, "ok", ok_lasts, 0.0), now=ok_lasts)
    k = 1
    while mon.observe(CheckResult(False, "refused", fail_lasts, 0.0), now=k * m.interval + fail_lasts) is None:
        k += 1
    return k * m.interval + fail_lasts


@pytest.mark.parametrize("text, retry, pause, line, key, timeout", [
    (RETRYING, 3, 1, 10, "TCP_CHECK.retry", 4),  # keepalived's default delay_before_retry: 1 s
    (RETRYING.replace("  delay_loop 2\n", "  delay_loop 2\n  delay_before_retry 3\n"), 3, 3, 11, "TCP_CHECK.retry", 10),
    (RETRYING.replace("      retry 3\n", ""), 1, 1, 8, "TCP_CHECK", 0),  # TCP_CHECK's default retry 1
], ids=["retry-3", "delay-before-retry-3", "default-retry"])
def test_keepalived_retries_never_detect_later_in_lb(text: str, retry: int, pause: float, line: int, key: str,
                                                     timeout: float) -> None:
    """keepalived retries a failed check after delay_before_retry, lb only at its next check: lb
    takes the server down at the last of its checks that fit into keepalived's soonest, and says so."""
    cfg = keepalived.loads(text, "k.conf")
    m = cfg.virtual_servers[0].monitor
    assert (m.interval, m.timeout, m.connect_timeout) == (2, timeout, 1)
    for ok_lasts, fail_lasts in ((0.001, 0.001), (1, 0.001), (0.001, 1), (1, 1)):
        # keepalived: the first failed check delay_loop after the success, then one each pause after the last
        keepalived_down = ok_lasts + 2 + (retry + 1) * fail_lasts + retry * pause
        assert _down_after(m, ok_lasts, fail_lasts) <= keepalived_down
    [w] = cfg.warnings
    assert (w.line, w.field) == (line, f"virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].{key}")
    checks = 1 + retry * pause // 2
    assert w.message == (
        f"keepalived takes the real server down after {retry + 1} failed checks, retried {pause} s apart (at the "
        f"soonest {2 + retry * pause} s after the last success); lb checks every 2 s only, so it takes it down at the "
        + ("first failed check (timeout 0)" if checks == 1 else f"{checks}{'nd' if checks == 2 else 'th'} failed "
                                                                f"check in a row (timeout {timeout} s)")
        + ", never later than keepalived")


@pytest.mark.parametrize("text, checks", [
    (RETRYING, 2),
    (RETRYING.replace("  delay_loop 2\n", "  delay_loop 2\n  delay_before_retry 3\n"), 5),
    (RETRYING.replace("      retry 3\n", ""), 1),
], ids=["retry-3", "delay-before-retry-3", "default-retry"])
def test_a_server_dead_from_the_start_goes_down_at_the_same_failed_check(text: str, checks: int) -> None:
    """The warning promises the n-th failed check in a row, never later than keepalived (which
    counts failed checks, not time): a real server that never answered from lb's start went down
    at the (n + 1)-th, the silence being counted from its first check."""
    from lb.health.checks import CheckResult, CheckSpec
    from lb.health.monitor import Monitor, NannyPolicy

    m = keepalived.loads(text, "k.conf").virtual_servers[0].monitor
    mon = Monitor("rs", CheckSpec(kind="tcp", host="192.0.2.5", port=80), NannyPolicy(m.interval, m.timeout, m.reentry),
                  None, clock=lambda: 0.0)
    k = 0
    while True:
        k += 1
        started = (k - 1) * m.interval            # the first check at 0, one each interval
        if mon.observe(CheckResult(False, "refused", 0.5, 0.0), now=started + 0.5) is not None:
            break
    assert (k, mon.state) == (checks, "down")


def test_no_retry_no_warning_and_the_first_failure_takes_it_down() -> None:
    cfg = keepalived.loads(RETRYING.replace("retry 3", "retry 0"), "k.conf")
    assert cfg.virtual_servers[0].monitor.timeout == 0 and cfg.warnings == ()


def test_a_checkers_own_nb_get_retry_wins_over_the_virtual_servers_retry() -> None:
    text = HEAD + """\
virtual_server 192.0.2.1 80 {
  lb_kind DR
  delay_loop 2
  retry 5
  real_server 192.0.2.5 80 {
    retry 4
    HTTP_GET {
      url {
        path /
      }
      connect_timeout 1
      nb_get_retry 2
    }
  }
}
"""
    cfg = keepalived.loads(text, "k.conf")
    # nb_get_retry 2, 1 s apart: keepalived's soonest 4 s, lb's 2nd failed check (not the 3rd of retry 4 or 5)
    assert cfg.virtual_servers[0].monitor.timeout == 4
    [w] = cfg.warnings
    assert (w.line, w.field) == (15, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].HTTP_GET.nb_get_retry")
    assert w.message.startswith("keepalived takes the real server down after 3 failed checks, retried 1 s apart")
    # without it the real server's retry, then the virtual server's
    cfg = keepalived.loads(text.replace("      nb_get_retry 2\n", ""), "k.conf")
    [w] = cfg.warnings
    assert (w.line, w.field) == (9, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].retry")
    assert (w.message.startswith("keepalived takes the real server down after 5 failed checks"),
            cfg.virtual_servers[0].monitor.timeout) == (True, 6)
    cfg = keepalived.loads(text.replace("      nb_get_retry 2\n", "").replace("    retry 4\n", ""), "k.conf")
    [w] = cfg.warnings
    assert (w.line, w.field) == (7, "virtual_server[192.0.2.1 80].retry")
    assert w.message.startswith("keepalived takes the real server down after 6 failed checks")


def test_what_keepalived_would_run_and_lb_would_not_is_a_warning_not_silence() -> None:
    """An empty virtual_server_group drops its virtual_server (and its real servers); delay_loop 0
    and misc_timeout 0 become lb's defaults: each one a warning with its line, not a clean check."""
    cfg = keepalived.loads(HEAD + "virtual_server_group G {\n}\n" + VS.replace("192.0.2.1 80", "group G"), "k.conf")
    assert cfg.virtual_servers == ()
    [w] = cfg.warnings
    assert w.line == 6 and "virtual_server_group G gives no 'ADDRESS PORT' entry" in w.message
    cfg = keepalived.loads(HEAD + VS.replace("lb_kind DR", "lb_kind DR\n  delay_loop 0").replace(
        "80 {\n  }", "80 {\n    MISC_CHECK {\n      misc_path /bin/true\n      misc_timeout 0\n    }\n  }"), "k.conf")
    assert [(w.line, w.field.rsplit(".", 1)[-1], w.message) for w in cfg.warnings] == [
        (6, "delay_loop", "0: lb checks every 60 s (its default), not without pause"),
        (10, "misc_timeout", "0: the program gets the check's interval, 60 s")]
    assert cfg.virtual_servers[0].monitor.interval == 60 and cfg.virtual_servers[0].monitor.connect_timeout == 60


def test_format_detection(tmp_path: Path) -> None:
    for name, text, fmt in (("a.conf", "! Configuration File for keepalived\n", "keepalived"),
                            ("b.conf", "# comment\nglobal_defs {\n}\n", "keepalived"),
                            ("c.conf", "virtual_server 192.0.2.1 80 {\n}\n", "keepalived"),
                            ("d.conf", "[global]\npublic_interface = \"eth0\"\n", "toml"),
                            ("e.conf", "network = direct\n", "lvscf")):
        (tmp_path / name).write_text(text)
        assert format_of(tmp_path / name) == fmt, name


def test_limits_and_fuzz_give_config_or_config_error() -> None:
    """Seeded mutations of the test files (LB_FUZZ_SEED, tests/fuzzseed.py): each gives a Config or a
    ConfigError, nothing else."""
    rng = random.Random(SEED)
    texts = [(DIR / f).read_text() for f in FILES if f != "includes.conf"]
    alphabet = list("{}\"'#!$@ \n\\") + ["virtual_server", "real_server", "fwmark", "group", "${X}", "$X=",
                                        "include /dev/null", "999999999999", "-", "/", ":"]
    with named():
        for _ in range(2000):
            text = list(rng.choice(texts))
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(text))
                if rng.random() < 0.5:
                    del text[i:i + rng.randint(1, 20)]
                else:
                    text[i:i] = rng.choice(alphabet)
            try:
                keepalived.loads("".join(text), "fuzz.conf", config_id="x")
            except ConfigError as e:
                assert e.issues and all(i.path for i in e.issues)
    # a parameter that expands itself stops, with a reason
    [(line, _, msg)] = error_of("$A=${A}${A}\nglobal_defs {\n  router_id ${A}\n}\n")
    assert line == 3 and msg.startswith("parameter substitution does not end")
    # an include of itself is refused
    with pytest.raises(ConfigError) as ei:
        keepalived.load(REPO / "tests" / "keepalived" / "self-include.conf")
    assert "includes itself" in str(ei.value)


def test_lb_import_of_each_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", str(LAB[1])]) == 0
    out, err = capsys.readouterr()
    assert "[ha]\nprimary = \"198.18.0.1\"\nbackup = \"198.18.0.3\"\n" in out
    assert err.count(": warning: ") == len(load(LAB[1]).warnings) == 4  # the last: TCP_CHECK's default retry
    assert totoml.dumps(load(LAB[0])).startswith("[global]\ninstance = \"lab\"\npublic_interface = \"pub0\"\n")


def test_script_user_and_misc_check_user_run_programs_as_that_user() -> None:
    """keepalived's `script_user USER` (global) and MISC_CHECK's `user USER` become lb's script_user."""
    text = ("global_defs {\n  lb_public_interface eth0\n  script_user nobody\n}\n"
            "virtual_server 192.0.2.1 80 {\n  lb_kind DR\n  real_server 192.0.2.5 80 {\n"
            "    MISC_CHECK {\n      misc_path \"/bin/true %h\"\n      user root\n    }\n  }\n}\n")
    cfg = keepalived.loads(text, "k.conf")
    assert cfg.script_user == "nobody"
    assert (cfg.virtual_servers[0].monitor.kind, cfg.virtual_servers[0].monitor.script_user) == ("program", "root")
    assert not [w for w in warned(cfg) if "user" in w[1]]


def test_misc_dynamic_exit_2_to_255_keeps_the_real_server_up() -> None:
    """keepalived's misc_dynamic reads exit 0 as up, 1 as down, 2-255 as up with weight status - 2:
    the imported check passes on 2-255 (lb keeps the configured weight, and says so)."""
    import asyncio

    from lb.engine import check_spec
    from lb.health import run_check

    text = HEAD + VS.replace("80 {\n  }", "80 {\n    MISC_CHECK {\n      misc_path \"/bin/sh -c 'exit $0' %s\"\n"
                             "      misc_dynamic\n    }\n  }")
    results = {}
    for status in (0, 1, 2, 102, 255):
        cfg = keepalived.loads(text % status, "k.conf")
        vs = cfg.virtual_servers[0]
        spec = dataclasses.replace(check_spec(vs, vs.real_servers[0])[0], user=None)
        results[status] = asyncio.run(run_check(spec))
    assert [s for s, r in results.items() if r.ok] == [0, 2, 102, 255], results
    assert results[102].detail.startswith("exit status 102 (misc_dynamic: up)"), results[102]
    assert results[1].detail.startswith("exit status 1;"), results[1]
    assert vs.monitor.misc_dynamic and loads(totoml.dumps(cfg)).virtual_servers[0].monitor.misc_dynamic
    [w] = not_timing(cfg)
    assert (w.line, w.field) == (9, "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].MISC_CHECK.misc_dynamic")
    assert "exit 2-255 keeps the real server up at its configured weight" in w.message, w.message


GROUP_OF_THREE = """\
global_defs {
  lb_public_interface pub0
}
virtual_server_group G {
  198.18.0.10-12 80
}
virtual_server group G {
  lb_algo rr
  lb_kind DR
  protocol TCP
  real_server 198.18.1.12 PORT {
    HTTP_GET {
      url {
        path /
      }
      url {
        path /b
      }
    }
  }
}
"""


def test_a_group_s_statement_is_warned_about_or_refused_once() -> None:
    """A virtual_server group's block is read once per member; what it says about one of its
    lines (a second url, a port direct routing cannot use) is said once, not once per member."""
    cfg = keepalived.loads(GROUP_OF_THREE.replace("PORT", "80"), "k.conf")
    assert len(cfg.virtual_servers) == 3
    assert [w.line for w in cfg.warnings if "lb checks one url" in w.message] == [16]
    issues = error_of(GROUP_OF_THREE.replace("PORT", "8080"))
    assert [(line, msg.split(" (")[0]) for line, _, msg in issues] == [(11, "direct routing cannot change the destination port")]


FWM_NAT = """global_defs {
  lb_public_interface eth0
  lb_private_interface eth1
  lb_nat_router 10.0.1.254/24
}
virtual_server fwmark 5 {
  lb_kind NAT
  lb_port_group tcp 10.0.0.1 80
  real_server 10.0.1.1 8080 {
  }
}
"""


def test_a_fwmark_real_servers_port_is_refused_in_nat_and_a_warning_in_dr() -> None:
    """IPVS NATs a firewall-mark service's connections to its real server's port; lb's take
    each connection's own port: refused, not silently sent to :80.  DR ignores it in both."""
    assert error_of(FWM_NAT) == [
        (9, "virtual_server[fwmark 5].real_server[10.0.1.1 8080]",
         "keepalived NATs this firewall-mark service's connections to port 8080; lb sends each to the port it "
         "came to (the lb_port_group ports): omit the port if the real server listens on those, else write a "
         "virtual_server ADDRESS PORT for it")]
    [vs] = keepalived.loads(FWM_NAT.replace(" 8080 {", " {"), "k.conf").virtual_servers
    assert vs.real_servers[0].port is None
    # (DR without vrrp has no gateway to own: lb_nat_router would be warned of too)
    cfg = keepalived.loads(FWM_NAT.replace("NAT", "DR").replace("  lb_nat_router 10.0.1.254/24", ""), "k.conf")
    assert cfg.virtual_servers[0].real_servers[0].port is None
    assert [(w.line, w.field, w.message) for w in cfg.warnings] == [
        (9, "virtual_server[fwmark 5].real_server[10.0.1.1 8080]",
         "port 8080: no effect: DR keeps each connection's own port (in keepalived too)")]


DNS_PAIR = """global_defs {
  lb_public_interface eth0
}
virtual_server 10.0.0.1 53 {
  lb_kind DR
  protocol TCP
  real_server 10.0.1.1 53 {
  }
}
virtual_server 10.0.0.1 53 {
  lb_kind DR
  protocol UDP
  real_server 10.0.1.1 53 {
  }
}
virtual_server 10.0.0.1 80 {
  lb_kind DR
  real_server 10.0.1.1 80 {
  }
}
"""


def test_tcp_and_udp_on_one_address_and_port_are_two_services() -> None:
    cfg = keepalived.loads(DNS_PAIR, "k.conf")
    assert [(vs.name, vs.protocol, vs.port) for vs in cfg.virtual_servers] == [
        ("tcp/10.0.0.1:53", "tcp", 53), ("udp/10.0.0.1:53", "udp", 53), ("10.0.0.1:80", "tcp", 80)]
    assert loads(totoml.dumps(cfg)) == dataclasses.replace(cfg, path=None)
    # the same protocol twice is still one service defined twice
    issues = error_of(DNS_PAIR.replace("protocol UDP", "protocol TCP"))
    assert [(line, msg) for line, _, msg in issues] == [
        (10, "duplicate virtual server tcp 10.0.0.1:53 (already defined by virtual_server[10.0.0.1 53])"),
        (10, "duplicate virtual server name '10.0.0.1:53' (already used by virtual_server[10.0.0.1 53])")]


def test_persistence_granularity_alone_is_persistent_for_360_seconds() -> None:
    """keepalived's pgr_handler sets persistence_timeout 360 when none is given."""
    text = DNS_PAIR.replace("protocol TCP", "persistence_granularity 255.255.255.0").replace(
        "10.0.0.1 53 {\n  lb_kind DR\n  protocol UDP",
        "10.0.0.2 53 {\n  lb_kind DR\n  persistence_timeout 60\n  persistence_granularity 255.255.255.0")
    cfg = keepalived.loads(text, "k.conf")
    assert [(vs.name, vs.persistent, vs.pmask) for vs in cfg.virtual_servers] == [
        ("10.0.0.1:53", 360, "255.255.255.0"), ("10.0.0.2:53", 60, "255.255.255.0"), ("10.0.0.1:80", 0, None)]
    assert cfg.warnings == ()


def test_lb_import_escapes_line_breaks_in_its_comment_lines(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A quoted word's \\n in a warning's field would end the comment line: the TOML did not load."""
    conf = tmp_path / "k.conf"
    conf.write_text(DNS_PAIR.replace("protocol UDP", 'protocol UDP\n  "x\\ny\\x01" 1'))
    assert main(["import", str(conf)]) == 0
    toml = capsys.readouterr().out
    assert f"#   {conf}:13: warning: virtual_server[10.0.0.1 53].x\\ny\\x01: unknown keyword" in toml
    assert loads(toml) == dataclasses.replace(keepalived.load(conf), path=None)


def test_every_smtp_check_host_block_is_warned_about_not_only_the_first() -> None:
    """SMTP_CHECK takes several host blocks; lb checks the real server itself, and says so for
    each host (the second block was passed over in silence)."""
    cfg = keepalived.loads(HEAD + VS.replace("80 {\n  }", "80 {\n    SMTP_CHECK {\n      host {\n"
                                             "        connect_ip 192.0.2.9\n      }\n      host {\n"
                                             "        connect_ip 192.0.2.10\n      }\n    }\n  }"), "k.conf")
    fld = "virtual_server[192.0.2.1 80].real_server[192.0.2.5 80].SMTP_CHECK.host"
    assert [w.line for w in cfg.warnings if w.field == fld] == [9, 12]
