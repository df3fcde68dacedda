"""lvs.cf files shaped like those of the Piranha documentation (tests/lvscf/piranha/) load as
written, or are refused with the reason; what lb accepts without carrying it out is a warning with
the file's line and key."""
from __future__ import annotations

import dataclasses
import socket
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from lb.cli.main import main
from lb.config import ConfigError, load, loads, lvscf
from lb.config.model import SERVICE_PORTS, service_port

DIR = Path(__file__).resolve().parent / "lvscf" / "piranha"
LOADABLE = ["rhhas-sample.cf", "rhl-virtual-server.cf", "rhel5-direct.cf", "rhel-ha-pair.cf", "rhcs3-ruptime.cf"]


def warnings_of(cfg) -> list[tuple[int | None, str]]:
    return [(w.line, w.field) for w in cfg.warnings]


def test_rhhas_sample_nat_pair_with_port_names_and_uptime() -> None:
    cfg = load(DIR / "rhhas-sample.cf")
    assert (cfg.network, cfg.public_interface, cfg.private_interface) == ("nat", "eth0", "eth1")
    assert cfg.nat_router == IPv4Interface("10.10.10.254/24")  # Piranha's default nat_nmask
    assert cfg.ha is not None and (cfg.ha.primary, cfg.ha.backup) == (IPv4Address("192.0.2.10"),
                                                                     IPv4Address("192.0.2.11"))
    assert (cfg.ha.heartbeat_port, cfg.ha.keepalive, cfg.ha.deadtime) == (1050, 6, 18)
    assert cfg.ha.key_file == Path("/etc/lb/ha.key")
    web, ftp = cfg.virtual_servers
    assert (web.name, web.port, web.persistent, web.pmask) == ("server1", 80, 60, "255.255.255.255")
    assert web.load_monitor is not None and web.load_monitor.program == "rsh %h uptime"
    assert (web.monitor.kind, web.monitor.send, web.monitor.timeout) == ("send_expect", "GET / HTTP/1.0\\r\\n\\r\\n", 5)
    assert (ftp.name, ftp.port, ftp.device) == ("server2", 21, None)  # eth0:2 is an alias of eth0
    assert warnings_of(cfg) == [(8, "backup_active")]
    assert cfg.warnings[0].message.startswith("lb_ha_key_file not given: the heartbeat key is /etc/lb/ha.key")


def test_virtual_server_form_default_port_and_device() -> None:
    cfg = load(DIR / "rhl-virtual-server.cf")
    assert cfg.public_interface == "eth0"  # named by the second virtual, not the first
    www, secure, dns = cfg.virtual_servers
    assert (www.name, www.port, www.protocol, www.device) == ("www", 80, "tcp", None)
    assert (secure.name, secure.port) == ("secure", 443)
    assert (dns.name, dns.port, dns.protocol) == ("dns", 53, "udp")
    # dns has no active line: Piranha's lvs never started it (active defaults to 0), nor does lb
    assert (www.active, secure.active, dns.active) == (True, True, False)
    assert warnings_of(cfg) == [(4, "primary"), (41, "virtual[dns].active")]
    assert cfg.warnings[0].message.startswith("no effect without backup_active = 1: this director runs alone")


def test_gui_written_single_director_warns_for_each_key_without_effect() -> None:
    cfg = load(DIR / "rhel5-direct.cf")
    assert cfg.ha is None and cfg.virtual_servers[0].real_servers[0].port == 80
    # serial_no is the configuration's version (the console's saves, the backup's push): no warning
    assert cfg.serial_no == 20
    assert warnings_of(cfg) == [(2, "primary"), (10, "debug_level"), (12, "syncdaemon"),
                                (16, "virtual[WWW].vip_nmask")]
    ha = cfg.warnings[0].message
    assert "(nor have backup, heartbeat, heartbeat_port, keepalive, deadtime, monitor_links)" in ha
    assert "connection sync needs a backup director" in cfg.warnings[2].message
    assert "not with netmask 255.255.255.0" in cfg.warnings[3].message


def test_ha_pair_with_sync_daemon_keys() -> None:
    cfg = load(DIR / "rhel-ha-pair.cf")
    assert cfg.ha is not None and cfg.ha.primary_private == IPv4Address("10.0.2.2") and cfg.ha.sync
    assert cfg.ha.monitor_links and cfg.virtual_servers[0].quiesce_server
    assert warnings_of(cfg) == [(5, "backup_active"), (15, "debug_level"), (17, "syncdaemon"),
                                (18, "syncd_iface"), (19, "syncd_id")]
    assert "over its own heartbeat channel" in cfg.warnings[2].message


def test_ruptime_and_clumanager_keys_are_warnings() -> None:
    cfg = load(DIR / "rhcs3-ruptime.cf")
    mail = cfg.virtual_servers[0]
    assert (mail.port, mail.load_monitor, mail.monitor.expect) == (25, None, "220")
    assert warnings_of(cfg) == [(4, "primary"), (6, "rsh_command"),
                                (8, "reservation_conflict_action"), (9, "debug_level"),
                                (16, "virtual[MAIL].load_monitor")]
    assert cfg.warnings[-1].message.startswith("ruptime has no effect: rwhod reports hosts by name")
    assert "load_monitor = ruptime" in lvscf.dumps(*lvscf.load_with_extras(DIR / "rhcs3-ruptime.cf"))


def test_fwmark_without_port_groups_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load(DIR / "ftp-fwmark.cf")
    [issue] = ei.value.issues
    assert (issue.line, issue.field) == (11, "virtual[FTP].lb_port_groups")
    assert "no iptables rule marks the packets" in issue.message
    assert "lb_port_groups = tcp 192.0.2.60 21, tcp 192.0.2.60 LOW-HIGH" in issue.message
    # with the ports listed, Piranha's address/port/protocol lines stay (a warning) and the device counts
    text = (DIR / "ftp-fwmark.cf").read_text().replace(
        "     protocol = tcp\n", "     protocol = tcp\n     lb_port_groups = tcp 192.0.2.60 21, tcp 192.0.2.60 10000-10100\n"
    ).replace("eth0:1", "eth2").replace("network = direct\n", "network = direct\nlb_public_interface = eth0\n")
    cfg, extras = lvscf.loads_with_extras(text)
    ftp = cfg.virtual_servers[0]
    assert (ftp.fwmark, ftp.device, [(g.low, g.high) for g in ftp.port_groups]) == (21, "eth2", [(21, 21), (10000, 10100)])
    assert cfg.warnings[-1].field == "virtual[FTP].address" and "no effect on a firewall-mark service" in \
        cfg.warnings[-1].message
    again = lvscf.loads(lvscf.dumps(cfg, extras))
    assert again == cfg and again.virtual_servers[0].device == "eth2"
    assert ftp.monitor.port is None  # port = 21 is the first group's: lb's checks take it anyway


def test_fwmark_port_is_where_the_checks_go(tmp_path: Path) -> None:
    # Piranha's lvs runs nanny -p PORT on a firewall-mark virtual: its checks went to `port`, whatever
    # order the operator lists lb_port_groups in (lb's checks take the first group's port otherwise,
    # here the passive range, where no FTP server listens)
    text = (DIR / "ftp-fwmark.cf").read_text().replace(
        "     protocol = tcp\n", "     protocol = tcp\n     lb_port_groups = tcp 192.0.2.60 10000-10100, tcp 192.0.2.60 21\n")
    cfg, extras = lvscf.loads_with_extras(text, "lvs.cf")
    ftp = cfg.virtual_servers[0]
    assert (ftp.port, ftp.monitor.port) == (10000, 21)
    assert [(w.field, w.message.split(":")[0]) for w in cfg.warnings if "firewall-mark" in w.message] == [
        ("virtual[FTP].address", "address, protocol")]
    # lb_monitor_port still wins; lb export / lb import keep the port
    assert lvscf.loads(text.replace("port = 21\n", "port = 21\n     lb_monitor_port = 2121\n")
                       ).virtual_servers[0].monitor.port == 2121
    assert lvscf.loads(lvscf.dumps(cfg, extras)).virtual_servers == cfg.virtual_servers
    toml = tmp_path / "lb.toml"
    toml.write_text(lvscf.dumps_toml(cfg, extras))
    assert load(toml).virtual_servers[0].monitor.port == 21
    # the console clears the monitor's port: the file written must not bring it back through port
    cleared = dataclasses.replace(cfg, virtual_servers=(dataclasses.replace(
        ftp, monitor=dataclasses.replace(ftp.monitor, port=None)),))
    assert lvscf.loads(lvscf.dumps(cleared, extras)).virtual_servers[0].monitor.port is None
    named = text.replace("port = 21\n", "port = ftp\n")  # a service name, the first group's port
    cfg, extras = lvscf.loads_with_extras(named.replace("10000-10100, tcp 192.0.2.60 21", "21, tcp 192.0.2.60 10000-10100"))
    assert cfg.virtual_servers[0].monitor.port is None and "port = ftp" in lvscf.dumps(cfg, extras)


def test_two_virtual_blocks_of_one_fwmark_are_refused_with_the_way_out() -> None:
    # Piranha's way to persist a client across 80 and 443: two virtual blocks with one fwmark (one
    # IPVS service); lb has one block per service and says so, naming both blocks
    block = (DIR / "ftp-fwmark.cf").read_text().split("virtual FTP {")[1]
    one = block.replace("     protocol = tcp\n", "     protocol = tcp\n     lb_port_groups = tcp 192.0.2.60 21\n")
    text = "network = direct\nvirtual FTP {" + one + "virtual FTPS {" + one.replace("port = 21", "port = 990").replace(
        "192.0.2.60 21\n", "192.0.2.60 990\n")
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(text, "lvs.cf")
    assert [(i.line, i.field, i.message) for i in ei.value.issues] == [
        (21, "virtual[FTPS].fwmark", "fwmark 21 is also virtual[FTP]'s (line 2): Piranha ran one IPVS service for "
                                     "a mark, whatever the blocks; in lb write one virtual block for it with every "
                                     "port in its lb_port_groups (e.g. tcp 192.0.2.60 80, tcp 192.0.2.60 443)")]


@pytest.mark.parametrize("name", LOADABLE)
def test_each_shape_round_trips_through_lvscf_and_toml(name: str) -> None:
    cfg, extras = lvscf.load_with_extras(DIR / name)
    plain = dataclasses.replace(cfg, path=None)
    assert lvscf.loads(lvscf.dumps(cfg, extras)) == plain
    assert loads(lvscf.dumps_toml(cfg, extras)) == plain


def test_lb_check_prints_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(DIR / "rhel5-direct.cf")
    assert main(["check", "--config", path]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok (1 virtual server, 2 real servers, 4 warnings)\n"
    lines = err.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{path}:2: warning: primary: no effect without backup_active = 1")


def test_port_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert service_port("http") == 80 and service_port("domain", "udp") == 53
    assert service_port("no-such-service") is None and service_port("") is None
    head = "network = direct\nvirtual web {\n     address = 192.0.2.1 eth0\n     port = %s\n}\n"
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(head % "no-such-service")
    assert str(ei.value) == ("<string>:4: virtual[web].port: unknown service name 'no-such-service' "
                             "(not in /etc/services): give the port number")

    def no_services(name, proto):  # a host without /etc/services: the built-in table answers
        raise OSError("service/proto not found")

    monkeypatch.setattr(socket, "getservbyname", no_services)
    assert service_port("https") == 443 == SERVICE_PORTS["https"]
    assert lvscf.loads(head % "https").virtual_servers[0].port == 443


def test_malformed_virtual_line() -> None:
    with pytest.raises(ConfigError) as ei:
        lvscf.loads("network = direct\nvirtual web extra {\n}\n")
    assert str(ei.value) == ("<string>:2: expected 'virtual NAME {' or 'virtual server NAME {', "
                             "got 'virtual web extra {'")
