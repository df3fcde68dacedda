"""Tests of lb.config.lvscf: Piranha lvs.cf reading, writing, and `lb import`/`lb export`."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from lb.cli.main import main
from lb.config import (
    Config,
    ConfigError,
    RealServer,
    Tables,
    Timeouts,
    VirtualServer,
    load,
    loads,
    lvscf,
)
from lb.config.model import HA, Control, LoadMonitor, Metrics, Monitor, Web

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
FULL = HERE / "lvscf" / "full.cf"


def cf(text: str) -> str:
    return textwrap.dedent(text)


def nopath(cfg: Config) -> Config:
    return dataclasses.replace(cfg, path=None)


# --- the full fixture ----------------------------------------------------------------

EXPECTED_FULL = Config(
    instance="default",
    serial_no=42,
    public_interface="eth0",
    private_interface="eth1",
    network="nat",
    nat_router=IPv4Interface("10.0.0.254/24"),
    nat_router_device="eth1",
    tables=Tables(),
    timeouts=Timeouts(tcp=600, tcpfin=60, udp=120),
    virtual_servers=(
        VirtualServer(
            name="web", address=IPv4Address("192.168.1.10"), port=80, protocol="tcp", scheduler="wlc",
            persistent=300, pmask="255.255.255.0", active=True, device=None,
            sorry_server=(IPv4Address("10.0.0.99"), None),
            real_servers=(
                RealServer("web1", IPv4Address("10.0.0.11"), None, 2, True),
                RealServer("web2", IPv4Address("10.0.0.12"), None, 0, False),
            ),
            # send_program wins over send/expect (as in Piranha's nanny); send/expect are kept raw
            monitor=Monitor(kind="program", send="GET / HTTP/1.0\\r\\n\\r\\n", expect="HTTP", use_regex=False,
                            program="/usr/local/bin/check %h", timeout=6, reentry=15, quiesce=True),
            # quiesce_server = 1 (nanny -q: a failed server gets weight 0, Monitor.quiesce, and the
            # connection counts restart when one joins); load_monitor = uptime runs uptime over
            # rsh_command (ssh here)
            quiesce_server=True, load_monitor=LoadMonitor(kind="program", program="ssh %h uptime"),
        ),
        VirtualServer(
            name="dns", address=IPv4Address("192.168.2.53"), port=53, protocol="udp", scheduler="rr",
            active=False, device="eth2",
            real_servers=(RealServer("ns1", IPv4Address("10.0.0.21"), 5353, 1, True),),
        ),
    ),
    # backup_active = 1: Piranha's HA keys make the [ha] model
    ha=HA(primary=IPv4Address("192.168.1.1"), backup=IPv4Address("192.168.1.2"),
          key_file=Path("/etc/sysconfig/ha/lb-ha.key"), primary_private=IPv4Address("10.0.0.1"),
          backup_private=IPv4Address("10.0.0.2"), heartbeat_port=539, keepalive=6.0, deadtime=18.0,
          monitor_links=False),
)

EXPECTED_EXTRAS = {
    "global": {
        "service": "lvs",
        "debug_level": "NONE", "syncdaemon": True, "rsh_command": "ssh",
        "nat_router_alias": "eth1:1",
    },
    "virtual": {
        "web": {
            "vip_nmask": "255.255.255.0", "address_alias": "eth0:1",
        },
    },
}


def test_full_fixture_loads_to_the_expected_model() -> None:
    cfg, extras = lvscf.load_with_extras(FULL)
    assert cfg.path == FULL
    assert nopath(cfg) == EXPECTED_FULL
    assert extras == EXPECTED_EXTRAS
    assert cfg.vip_device(cfg.virtual_servers[1]) == "eth2"


def test_generic_load_dispatches_on_suffix_and_content(tmp_path: Path) -> None:
    assert nopath(load(FULL)) == EXPECTED_FULL
    assert load(str(FULL)).path == FULL
    no_suffix = tmp_path / "lvs"
    no_suffix.write_text(FULL.read_text())
    assert nopath(load(no_suffix)) == EXPECTED_FULL
    starts_primary = tmp_path / "lvs.conf"
    starts_primary.write_text("# c\n\nprimary = 1.2.3.4\nnetwork = direct\n" + "virtual v {\n address = 10.1.1.1 eth0\n port = 80\n}\n")
    assert load(starts_primary).public_interface == "eth0"
    # TOML files still take the TOML path
    assert load(CONFIGS / "lab-dr.toml").instance == "lab"


def test_looks_like_lvscf() -> None:
    assert lvscf.looks_like_lvscf("# x\nserial_no = 3\n")
    assert lvscf.looks_like_lvscf("virtual web {\n}\n")
    assert not lvscf.looks_like_lvscf("# x\n[global]\n")
    # Piranha's own keys lb does not take: still an lvs.cf, refused naming the key (not a TOML error)
    assert lvscf.looks_like_lvscf("hard_shutdown = 0\nnetwork = direct\n")
    assert lvscf.looks_like_lvscf("failover ftp {\n}\n")
    assert not lvscf.looks_like_lvscf("")


# --- round trips ------------------------------------------------------------------------


def test_lvscf_round_trip_keeps_model_and_extras() -> None:
    cfg, extras = lvscf.load_with_extras(FULL)
    text = lvscf.dumps(cfg, extras)
    cfg2, extras2 = lvscf.loads_with_extras(text)
    assert cfg2 == nopath(cfg)
    assert extras2 == extras
    assert lvscf.dumps(cfg2, extras2) == text  # a fixed point
    assert "nat_router = 10.0.0.254 eth1:1" in text
    assert "address = 192.168.1.10 eth0:1" in text
    assert 'send = "GET / HTTP/1.0\\r\\n\\r\\n"' in text


@pytest.mark.parametrize("name", ["lab-dr.toml", "lab-nat.toml", "example.toml"])
def test_toml_to_lvscf_round_trip(name: str) -> None:
    cfg = load(CONFIGS / name)
    back = lvscf.loads(lvscf.dumps(cfg))
    if any(vs.device == cfg.public_interface for vs in cfg.virtual_servers):
        # documented normalisation: a virtual's device equal to the public interface reads back as None
        cfg = dataclasses.replace(cfg, virtual_servers=tuple(
            dataclasses.replace(vs, device=None) if vs.device == cfg.public_interface else vs
            for vs in cfg.virtual_servers))
    if cfg.nat_router is not None and cfg.nat_router_device is None:
        # documented normalisation: lvs.cf's nat_router always names its device
        cfg = dataclasses.replace(cfg, nat_router_device=cfg.private_interface)
    assert back == nopath(cfg)
    if name == "example.toml":  # its http monitor: Piranha's keys plus lb_monitor_* for the rest
        text = lvscf.dumps(cfg)
        assert "lb_monitor_kind = http" in text and 'lb_monitor_path = "/healthz"' in text


def test_toml_round_trip_of_unusual_models() -> None:
    vs = VirtualServer(name="a", address=IPv4Address("10.9.0.1"), port=443, device="eth7", active=False,
                       real_servers=(RealServer("r", IPv4Address("10.9.1.1"), active=False),))
    cfg = Config(instance="x1", public_interface="eth0", tables=Tables(connections=2048, services=4),
                 timeouts=Timeouts(tcp=5), virtual_servers=(vs,))
    assert lvscf.loads(lvscf.dumps(cfg)) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    empty = Config(public_interface="eth3")
    assert lvscf.loads(lvscf.dumps(empty)) == empty
    assert loads(lvscf.dumps_toml(empty)) == empty


def test_the_global_keys_lb_added_survive_toml_and_tell_configurations_apart() -> None:
    """dataplane, expire_nodest_conn, lblc_expiration and lblcr_expiration: in the TOML that `lb
    import` and the console write (totoml.document); the last three in the configuration's identity
    too (two directors that differ there do not run the same configuration), the data plane not:
    it is each director's own (store.LOCAL_KEYS)"""
    from lb.config import store

    cfg = Config(public_interface="eth0", dataplane="ipvs", expire_nodest_conn=True, lblc_expiration=600,
                 lblcr_expiration=700)
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    assert lvscf.loads(lvscf.dumps(dataclasses.replace(cfg, dataplane="xdp"))) == dataclasses.replace(cfg, dataplane="xdp")
    plain = Config(public_interface="eth0")
    for key, value in (("expire_nodest_conn", True), ("lblc_expiration", 600), ("lblcr_expiration", 700)):
        assert store.identity(dataclasses.replace(plain, **{key: value})) != store.identity(plain), key
    assert store.identity(dataclasses.replace(plain, dataplane="ipvs")) == store.identity(plain)


def monitored(m: Monitor) -> Config:
    vs = VirtualServer(name="web", address=IPv4Address("10.9.0.1"), port=80, monitor=m,
                       real_servers=(RealServer("r", IPv4Address("10.9.1.1")),))
    return Config(public_interface="eth0", virtual_servers=(vs,))


@pytest.mark.parametrize(("m", "lb_keys"), [
    # a TCP connect on port 80: said, since no check there reads as nanny's HTTP request
    (Monitor(), {"kind"}),
    (Monitor(kind="send_expect", send="GET / HTTP/1.0\\r\\n\\r\\n", expect="HTTP"), set()),
    # reentry 0 (at once): lb_monitor_reentry, since Piranha's reentry = 0 reads as 180 s
    (Monitor(kind="send_expect", expect="^2[0-9]{2}", use_regex=True, timeout=3, reentry=0), {"reentry"}),
    (Monitor(kind="program", program="/bin/check %h %p", send="x"), set()),
    (Monitor(kind="send_expect"), {"kind"}),  # nothing sent, nothing expected
    (Monitor(kind="tcp", program="/bin/check %h", expect="x"), {"kind"}),
    (Monitor(kind="udp", send="ping", expect="pong", port=5353), {"kind", "port"}),
    (Monitor(kind="http", path="/t.jsp", digest="640205b7b0fc66c1ea91c463fac6334d"), {"kind", "path", "digest"}),
    (Monitor(kind="https", path="/h", host="", status=(200, 204), body_regex="ok\\s", tls_verify=False,
             interval=0.5, timeout=2.5, reentry=0.25, connect_timeout=1, quiesce=True),
     {"kind", "path", "host", "status", "body_regex", "tls_verify", "interval", "timeout", "reentry",
      "connect_timeout", "quiesce"}),
    # line breaks (a TOML send = "...\r\n") cannot sit on an lvs.cf line: escaped, flagged
    (Monitor(kind="none", send="a\\r\r\u2028\"q\" \\x", program="p %h", body_regex="a\nb"),
     {"kind", "body_regex", "escaped"}),
    # the user a program runs as, when not the global script_user
    (Monitor(kind="program", program="/bin/check %h", script_user="root"), {"script_user"}),
])
def test_monitor_round_trips(m: Monitor, lb_keys: set[str]) -> None:
    cfg = monitored(m)
    text = lvscf.dumps(cfg)
    assert lvscf.loads(text) == cfg
    assert lvscf.dumps(lvscf.loads(text)) == text
    assert {line.split()[0][len("lb_monitor_"):] for line in text.split("\n") if "lb_monitor_" in line} == lb_keys
    toml = lvscf.dumps_toml(cfg)
    assert loads(toml) == cfg
    assert ("[virtual_server.monitor]" in toml) == (m != Monitor())


def test_send_program_gives_a_program_monitor() -> None:
    text = GOOD_HEAD.replace("port = 80", 'port = 80\n     send_program = "/usr/local/bin/check-web %h %p"\n'
                                          "     timeout = 4\n     reentry = 30")
    cfg, extras = lvscf.loads_with_extras(text)
    assert cfg.virtual_servers[0].monitor == Monitor(kind="program", program="/usr/local/bin/check-web %h %p",
                                                     timeout=4, reentry=30)
    assert extras["virtual"] == {"web": {"address_alias": "eth0:1"}}
    out = lvscf.dumps(cfg, extras)
    assert 'send_program = "/usr/local/bin/check-web %h %p"' in out
    assert "timeout = 4" in out and "reentry = 30" in out and "lb_monitor" not in out
    # send/expect alone: Piranha's send/expect check; neither: nanny's HTTP request on port 80
    # (nanny.c's http_send_str / http_recv_str), a TCP connect on any other port
    se = lvscf.loads(GOOD_HEAD.replace("port = 80", 'port = 80\n     expect = "OK"\n     use_regex = 1'))
    assert se.virtual_servers[0].monitor == Monitor(kind="send_expect", expect="OK", use_regex=True)
    assert lvscf.loads(GOOD_HEAD).virtual_servers[0].monitor == Monitor(
        kind="send_expect", send="GET / HTTP/1.0\\r\\n\\r\\n", expect="HTTP")
    assert lvscf.loads(GOOD_HEAD.replace("port = 80", "port = 8080")).virtual_servers[0].monitor == Monitor()
    assert lvscf.loads(GOOD_HEAD.replace("port = 80", "port = 80\n     lb_monitor_kind = tcp")
                       ).virtual_servers[0].monitor == Monitor()
    assert lvscf.loads(GOOD_HEAD.replace("port = 80\n", "")).virtual_servers[0].monitor.expect == "HTTP"


def test_example_lvs_cf_is_lab_nat() -> None:
    cf_cfg = load(CONFIGS / "example-lvs.cf")
    toml_cfg = load(CONFIGS / "lab-nat.toml")
    # lab-nat.toml spells out port = 80 on each real server; the lvs.cf leaves it to the virtual's.
    unported = tuple(
        dataclasses.replace(vs, real_servers=tuple(dataclasses.replace(r, port=None) for r in vs.real_servers))
        for vs in toml_cfg.virtual_servers
    )
    # the lvs.cf has Piranha's send/expect check, lab-nat.toml the default TCP connect
    assert [vs.monitor for vs in cf_cfg.virtual_servers] == [
        Monitor(kind="send_expect", send="GET / HTTP/1.0\\r\\n\\r\\n", expect="HTTP", timeout=6, reentry=15)]
    cf_cfg = dataclasses.replace(cf_cfg, virtual_servers=tuple(
        dataclasses.replace(vs, monitor=Monitor()) for vs in cf_cfg.virtual_servers))
    # serial_no: the version number the lvs.cf carries (Piranha's count of saves)
    assert nopath(cf_cfg) == nopath(dataclasses.replace(toml_cfg, virtual_servers=unported,
                                                        serial_no=cf_cfg.serial_no))
    # and the file's comment says these three differences
    head = (CONFIGS / "example-lvs.cf").read_text().partition("# Equivalent to configs/lab-nat.toml")[2]
    said = " ".join(line.lstrip("# ") for line in head.partition("\n#\n")[0].splitlines())
    for words in ("port = 80", "send/expect", "timeout 6", "reentry 15", f"serial_no = {cf_cfg.serial_no}"):
        assert words in said, words


# --- CLI ---------------------------------------------------------------------------------------


def test_lb_import_output_loads_as_toml(capsys: pytest.CaptureFixture[str]) -> None:
    for path in (FULL, CONFIGS / "example-lvs.cf"):
        assert main(["import", str(path)]) == 0
        out = capsys.readouterr().out
        assert nopath(loads(out)) == nopath(lvscf.load(path))


def test_lb_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["export", "--config", str(CONFIGS / "lab-nat.toml")]) == 0
    out = capsys.readouterr().out
    assert lvscf.loads(out) == nopath(load(CONFIGS / "lab-nat.toml"))
    assert main(["export", "--config", str(FULL)]) == 0
    out = capsys.readouterr().out
    assert lvscf.loads_with_extras(out)[1] == EXPECTED_EXTRAS


EXPORT_TOML = """\
[global]
public_interface = "eth0"
dataplane = "ipvs"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [virtual_server.monitor]
  timeout = 0
  [[virtual_server.real_server]]
  address = "198.18.1.11"
"""


def test_lb_export_keeps_the_dataplane_and_a_zero_timeout(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    # a director moved to the exported lvs.cf runs the data plane and the checks the TOML said
    p = tmp_path / "lb.toml"
    p.write_text(EXPORT_TOML)
    assert main(["export", "--config", str(p)]) == 0
    out = capsys.readouterr().out
    assert "lb_dataplane = ipvs\n" in out and "lb_monitor_timeout = 0\n" in out
    again = lvscf.loads(out)
    assert (again.dataplane, again.virtual_servers[0].monitor.timeout) == ("ipvs", 0)
    assert again == nopath(load(p))
    assert one(GOOD_HEAD + "lb_dataplane = dpdk\n") == (
        10, "lb_dataplane", "unknown dataplane 'dpdk' (expected one of: xdp, ipvs, auto)")


def test_lb_export_refuses_what_the_lvs_cf_would_read_back_otherwise(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "lb.toml"
    p.write_text(EXPORT_TOML)
    written = lvscf.dumps

    def forgetful(cfg: Config, extras: dict | None = None) -> str:  # a writer that leaves a key out
        return written(cfg, extras).replace("lb_dataplane = ipvs\n", "")

    monkeypatch.setattr(lvscf, "dumps", forgetful)
    assert main(["export", "--config", str(p)]) == 2
    got = capsys.readouterr()
    assert got.out == ""
    assert got.err == (f"{p}:3: global.dataplane: lvs.cf cannot hold this exactly: the exported file would read back "
                       f"the default, not \"ipvs\"\n")


def test_lb_import_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "bad.cf"
    f.write_text("network = nat\n")
    assert main(["import", str(f)]) == 2
    assert f"{f}:1: nat_router: " in capsys.readouterr().err


# --- errors -------------------------------------------------------------------------------------

GOOD_HEAD = """\
network = direct
virtual web {
     address = 192.168.1.10 eth0:1
     port = 80
     server web1 {
         address = 10.0.0.11
         weight = 1
     }
}
"""


def issues(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(cf(text), "lvs.cf")
    return [(i.line, i.field, i.message) for i in ei.value.issues]


def one(text: str) -> tuple[int | None, str, str]:
    got = issues(text)
    assert len(got) == 1, got
    return got[0]


def test_good_head_is_good() -> None:
    assert lvscf.loads(GOOD_HEAD).virtual_servers[0].real_servers[0].name == "web1"


def test_unknown_key() -> None:
    assert one(GOOD_HEAD.replace("weight = 1", "wieght = 1")) == (
        7, "virtual[web].server[web1].wieght", "unknown key 'wieght' in a server block (did you mean 'weight'?)")
    line, fld, msg = one("colour = blue\n" + GOOD_HEAD)
    assert (line, fld) == (1, "colour") and msg.startswith("unknown key 'colour' in the global section")


def test_missing_closing_brace() -> None:
    line, fld, msg = one(GOOD_HEAD[:-2])
    assert (line, fld) == (8, "virtual[web]")
    assert msg == "missing '}': end of file inside virtual 'web' (opened at line 2)"
    # a server left open swallows the virtual's '}', so the next virtual starts inside it
    text = GOOD_HEAD.replace("     }\n}", "}") + "virtual b {\n address = 10.1.1.2 eth0\n port = 81\n}\n"
    line, fld, msg = issues(text)[0]
    assert (line, fld) == (9, "virtual[b]") and msg.startswith("missing '}': virtual 'b' starts inside virtual 'web'")


def test_unexpected_closing_brace() -> None:
    assert one(GOOD_HEAD + "}\n") == (10, "", "unexpected '}' (no block is open)")


def test_bad_ip() -> None:
    assert one(GOOD_HEAD.replace("10.0.0.11", "10.0.0.300")) == (
        6, "virtual[web].server[web1].address", "'10.0.0.300' is not a valid IP address")
    # inet_aton's short form: Piranha's 192.168.0.1, named, not taken
    line, fld, msg = one(GOOD_HEAD.replace("192.168.1.10", "192.168.1"))
    assert (line, fld) == (3, "virtual[web].address")
    assert msg.startswith("'192.168.1' is 192.168.0.1 as Piranha read it (inet_aton")
    # a host name that has no address (the tests' resolver knows none)
    assert one("primary = nope\n" + GOOD_HEAD) == (
        1, "primary", "'nope' is not an IP address, and this machine finds no address for it as a host name "
                      "(Piranha looked names up with gethostbyname: /etc/hosts, then DNS)")
    # neither an address nor a name: the TOML loader's message
    assert one(GOOD_HEAD.replace("10.0.0.11", "10.0.0.11/24")) == (
        6, "virtual[web].server[web1].address", "'10.0.0.11/24' is not a valid IP address")


def test_port_out_of_range() -> None:
    assert one(GOOD_HEAD.replace("port = 80", "port = 70000")) == (
        4, "virtual[web].port", "must be between 1 and 65535, got 70000")


def test_weight_not_a_number() -> None:
    assert one(GOOD_HEAD.replace("weight = 1", "weight = heavy")) == (
        7, "virtual[web].server[web1].weight", "expected an integer, got 'heavy'")


def test_active_not_0_or_1() -> None:
    assert one(GOOD_HEAD.replace("port = 80", "port = 80\n     active = yes")) == (
        5, "virtual[web].active", "expected 0 or 1, got 'yes'")


def test_unknown_scheduler() -> None:
    line, fld, msg = one(GOOD_HEAD.replace("port = 80", "port = 80\n     scheduler = fastest"))
    assert (line, fld) == (5, "virtual[web].scheduler") and msg.startswith("unknown scheduler 'fastest'")


def test_nat_without_nat_router() -> None:
    assert one(GOOD_HEAD.replace("network = direct", "network = nat")) == (
        1, "nat_router", "network = nat requires nat_router = IP DEVICE (e.g. nat_router = 10.0.0.254 eth1)")


def test_nat_nmask_shorter_than_8_is_refused() -> None:
    nat = GOOD_HEAD.replace("network = direct", "network = nat\nnat_router = 10.0.0.254 eth1\nnat_nmask = 0.0.0.0")
    line, fld, msg = one(nat)
    assert (line, fld) == (2, "nat_router") and msg.startswith("prefix length 0 (netmask 0.0.0.0) is shorter than /8")
    assert lvscf.loads(nat.replace("0.0.0.0", "255.0.0.0")).nat_router == IPv4Interface("10.0.0.254/8")


def test_a_wrong_fwmark_is_the_one_error() -> None:
    ftp = GOOD_HEAD.replace("port = 80", "fwmark = abc\n     lb_port_groups = tcp 192.168.1.10 21")
    assert one(ftp) == (4, "virtual[web].fwmark", "expected an integer, got 'abc'")
    assert one(ftp.replace("abc", "0"))[:2] == (4, "virtual[web].fwmark")


def test_unterminated_quoted_value() -> None:
    assert one(GOOD_HEAD.replace("port = 80", 'port = 80\n     send = "abc')) == (
        5, "virtual[web].send", "unterminated quoted value (no closing '\"' at the end of the line)")
    assert one('lb_ha_notify = "\n' + GOOD_HEAD)[:2] == (1, "lb_ha_notify")
    cfg = lvscf.loads(GOOD_HEAD.replace("port = 80", 'port = 80\n     send = "a "b" c"'))
    assert cfg.virtual_servers[0].monitor.send == 'a "b" c'


def test_not_supported_yet() -> None:
    assert one(GOOD_HEAD.replace("network = direct", "network = masq")) == (
        1, "network", "unknown network 'masq' (expected direct, nat or tunnel)")
    # a firewall-mark virtual lists its ports in lb_port_groups instead of address/port
    got = issues(GOOD_HEAD.replace("port = 80", "port = 80\n     fwmark = 3"))
    assert any("list the ports your iptables rules marked with fwmark 3 in lb_port_groups" in m for _, _, m in got)
    assert one("service = fos\n" + GOOD_HEAD) == (
        1, "service", "service = fos (failover services) is not supported yet")


def test_one_vip_on_two_devices() -> None:
    """The director would add and announce the VIP on both links; eth0:1 and eth0:2 are one device."""
    two = GOOD_HEAD + "virtual dns {\n     address = 192.168.1.10 eth1\n     port = 53\n}\n"
    assert one(two) == (11, "virtual[dns].address", "VIP 192.168.1.10 on eth1, but virtual[web] puts it on eth0 "
                                                    "(public_interface): a VIP is on one interface (lb would add "
                                                    "and announce it on both)")
    assert len(lvscf.loads(two.replace("eth1", "eth0:2")).virtual_servers) == 2


def test_missing_required_key_points_at_block() -> None:
    assert one(GOOD_HEAD.replace("     address = 192.168.1.10 eth0:1\n", "").replace("network = direct\n",
               "network = direct\nlb_public_interface = eth0\n")) == (
        3, "virtual[web].address", "required key is missing")


def test_duplicate_key_and_bad_extra_types() -> None:
    assert one(GOOD_HEAD.replace("port = 80", "port = 80\n     port = 81")) == (
        5, "virtual[web].port", "duplicate key 'port' (already set at line 4)")
    got = issues("heartbeat = 2\nkeepalive = x\nvip_nmask = 1\n" + GOOD_HEAD.replace(
        "port = 80", "port = 80\n     vip_nmask = 255.0.255.0\n     load_monitor = sar"))
    assert [(line, fld) for line, fld, _ in got] == [
        (1, "heartbeat"), (2, "keepalive"), (3, "vip_nmask"),
        (8, "virtual[web].vip_nmask"), (9, "virtual[web].load_monitor"),
    ]


def test_cross_checks_map_to_lines() -> None:
    text = GOOD_HEAD.replace("     }\n}", "     }\n     server web2 {\n         address = 10.0.0.11\n     }\n}")
    line, fld, msg = one(text)
    assert (line, fld) == (10, "virtual[web].server[web2].address") and msg.startswith("duplicate real server")


def test_no_device_anywhere() -> None:
    line, fld, msg = one(GOOD_HEAD.replace(" eth0:1", ""))
    assert (line, fld) == (2, "virtual[web].address") and msg.startswith("cannot tell the public interface")


def test_syntax_error_line() -> None:
    line, fld, msg = one(GOOD_HEAD.replace("port = 80", "port 80"))
    assert (line, fld) == (4, "") and msg.startswith("cannot parse line")


def test_file_errors_carry_path(tmp_path: Path) -> None:
    f = tmp_path / "lvs.cf"
    f.write_text("network = masq\n" + GOOD_HEAD.replace("network = direct\n", ""))
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert str(ei.value).startswith(f"{f}:1: network: ")
    with pytest.raises(ConfigError) as ei:
        load(tmp_path / "missing.cf")
    assert "cannot read file" in str(ei.value)


def test_bad_monitor_keys() -> None:
    def at(extra: str) -> tuple[int | None, str, str]:
        return one(GOOD_HEAD.replace("port = 80", "port = 80\n     " + extra))

    line, fld, msg = at("lb_monitor_kind = ping")
    assert (line, fld) == (5, "virtual[web].lb_monitor_kind") and msg.startswith("unknown monitor kind 'ping'")
    assert at("lb_monitor_interval = often") == (
        5, "virtual[web].lb_monitor_interval", "expected a number of seconds, got 'often'")
    assert at("lb_monitor_interval = 0") == (5, "virtual[web].lb_monitor_interval", "must be more than 0 seconds")
    assert at("lb_monitor_port = 70000") == (5, "virtual[web].lb_monitor_port", "must be between 1 and 65535, got 70000")
    assert at("lb_monitor_quiesce = yes") == (5, "virtual[web].lb_monitor_quiesce", "expected 0 or 1, got 'yes'")
    assert at("lb_monitor_status = 500-200") == (
        5, "virtual[web].lb_monitor_status", "expected LOWEST-HIGHEST HTTP status (100..599), e.g. 200-399, got '500-200'")
    assert at("timeout = soon") == (5, "virtual[web].timeout", "expected an integer, got 'soon'")
    line, fld, msg = at("reentry = -1")
    assert (line, fld) == (5, "virtual[web].reentry") and msg.startswith("must be between 0")
    line, fld, msg = at("use_regex = 1\n     expect = \"(\"")
    assert (line, fld) == (6, "virtual[web].expect") and msg.startswith("not a valid regular expression")
    line, fld, msg = at("lb_monitor_kind = program")
    assert (line, fld) == (2, "virtual[web].send_program") and "needs `program`" in msg
    line, fld, msg = at("lb_monitor_typo = 1")
    assert (line, fld) == (5, "virtual[web].lb_monitor_typo") and "unknown key" in msg


def test_send_program_the_checks_cannot_split_is_refused() -> None:
    def at(extra: str) -> tuple[int | None, str, str]:
        return one(GOOD_HEAD.replace("port = 80", "port = 80\n     " + extra))

    assert at("send_program = \"/usr/local/bin/check %h 'up\"") == (
        5, "virtual[web].send_program", "cannot be split into arguments (shell quoting): No closing quotation")
    line, fld, msg = at("lb_monitor_kind = program\n     send_program = \" \"")
    assert (line, fld) == (6, "virtual[web].send_program") and msg.startswith("names no program to run")
    assert at("load_monitor = none\n     lb_load_monitor_kind = program\n"
              "     lb_load_monitor_program = \"/usr/local/bin/load '%h\"") == (
        7, "virtual[web].lb_load_monitor_program", "cannot be split into arguments (shell quoting): "
                                                   "No closing quotation")


def test_fwmark_thresholds_and_flags_round_trip() -> None:
    from lb.config.model import PortGroup

    vs = VirtualServer(name="ftp", address=IPv4Address("10.9.0.1"), port=21, fwmark=21, persistent=300,
                       scheduler="sh", scheduler_flags=("sh-fallback", "sh-port"),
                       port_groups=(PortGroup(IPv4Address("10.9.0.1"), "tcp", 21, 21),
                                    PortGroup(IPv4Address("10.9.0.1"), "tcp", 30000, 30100)),
                       real_servers=(RealServer("r", IPv4Address("10.9.1.1"), u_threshold=10, l_threshold=5),))
    cfg = Config(instance="x1", public_interface="eth0", virtual_servers=(vs,))
    text = lvscf.dumps(cfg)
    assert "fwmark = 21" in text and "lb_port_groups = tcp 10.9.0.1 21, tcp 10.9.0.1 30000-30100" in text
    assert lvscf.loads(text) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg


# --- HA: Piranha's keys <-> the [ha] model, lb_ha_* for the rest ---------------------------

HA_CF = """\
primary = 198.18.0.1
primary_private = 198.18.1.1
backup_active = 1
backup = 198.18.0.3
backup_private = 198.18.1.3
heartbeat = 1
heartbeat_port = 1539
keepalive = 1
deadtime = 3
monitor_links = 1
lb_ha_key_file = "/etc/lb/ha.key"
lb_ha_preempt = 1
lb_ha_garp_count = 5
lb_ha_keepalive = 0.25
lb_ha_deadtime = 2.5
lb_ha_garp_interval = 0.05
lb_ha_garp_refresh = 0
lb_ha_sync_interval = 0.5
lb_ha_max_skew = 5
lb_ha_sync = 0
lb_ha_sync_rate = 1000
lb_ha_notify = "/usr/local/bin/a, /usr/local/bin/b"
""" + GOOD_HEAD

HA_MODEL = HA(primary=IPv4Address("198.18.0.1"), backup=IPv4Address("198.18.0.3"), key_file=Path("/etc/lb/ha.key"),
              primary_private=IPv4Address("198.18.1.1"), backup_private=IPv4Address("198.18.1.3"),
              heartbeat_port=1539, keepalive=0.25, deadtime=2.5, preempt=True, monitor_links=True, garp_count=5,
              garp_interval=0.05, garp_refresh=0.0, sync=False, sync_interval=0.5, sync_rate=1000, max_skew=5.0,
              notify=("/usr/local/bin/a", "/usr/local/bin/b"))


def test_ha_keys_make_the_ha_model_and_round_trip() -> None:
    cfg, extras = lvscf.loads_with_extras(HA_CF)
    assert cfg.ha == HA_MODEL
    assert extras["global"] == {}  # no HA key left as an extra
    text = lvscf.dumps(cfg, extras)
    cfg2, extras2 = lvscf.loads_with_extras(text)
    assert cfg2 == cfg and extras2 == extras
    assert lvscf.dumps(cfg2, extras2) == text  # a fixed point
    # Piranha's integer keys rounded up, lb's exact ones win
    assert "keepalive = 1\n" in text and "deadtime = 3\n" in text and "lb_ha_keepalive = 0.25" in text
    assert "backup_active = 1" in text and "heartbeat = 1" in text
    # and to native TOML and back
    assert loads(lvscf.dumps_toml(cfg)) == cfg


def test_ha_piranha_keepalive_is_checked_where_lb_ha_keepalive_wins() -> None:
    assert one(HA_CF.replace("keepalive = 1\n", "keepalive = abc\n")) == (
        8, "keepalive", "expected a number of seconds, got 'abc'")
    assert one(HA_CF.replace("deadtime = 3\n", "deadtime = 3s\n")) == (
        9, "deadtime", "expected a number of seconds, got '3s'")


def test_ha_piranha_defaults_and_toml_round_trip() -> None:
    plain = HA_CF.split("lb_ha_preempt")[0] + GOOD_HEAD   # Piranha's keys plus only the key file
    ha = lvscf.loads(plain).ha
    assert ha == HA(primary=IPv4Address("198.18.0.1"), backup=IPv4Address("198.18.0.3"),
                    key_file=Path("/etc/lb/ha.key"), primary_private=IPv4Address("198.18.1.1"),
                    backup_private=IPv4Address("198.18.1.3"), heartbeat_port=1539, keepalive=1.0, deadtime=3.0,
                    monitor_links=True)
    text = lvscf.dumps(lvscf.loads(plain))
    assert not [line for line in text.splitlines() if line.startswith("lb_ha_") and "key_file" not in line]
    # TOML -> lvs.cf -> model
    cfg = Config(public_interface="eth0", ha=HA_MODEL)
    assert lvscf.loads(lvscf.dumps(cfg)) == cfg
    one_channel = Config(public_interface="eth0", ha=HA(primary=IPv4Address("10.0.0.1"),
                                                        backup=IPv4Address("10.0.0.2"), key_file=Path("/k")))
    assert lvscf.loads(lvscf.dumps(one_channel)) == one_channel
    assert loads(lvscf.dumps_toml(one_channel)) == one_channel


def test_ha_without_backup_keeps_extras(tmp_path: Path) -> None:
    text = HA_CF.split("lb_ha_key_file")[0].replace("backup_active = 1", "backup_active = 0") + GOOD_HEAD
    cfg, extras = lvscf.loads_with_extras(text)
    assert cfg.ha is None
    assert extras["global"]["primary"] == "198.18.0.1" and extras["global"]["keepalive"] == 1
    assert lvscf.dumps(cfg, extras).count("primary = 198.18.0.1") == 1
    # a relative key file is relative to the lvs.cf, as in TOML
    f = tmp_path / "lvs.cf"
    f.write_text(HA_CF.replace('"/etc/lb/ha.key"', '"ha.key"'))
    assert load(f).ha.key_file == tmp_path / "ha.key"


def test_ha_errors() -> None:
    assert one("lb_ha_preempt = 1\n" + GOOD_HEAD) == (1, "lb_ha_preempt", "lb_ha_preempt needs backup_active = 1 "
                                                      "(a backup director)")
    no_key = HA_CF.split("lb_ha_key_file")[0] + GOOD_HEAD
    cfg = lvscf.loads(no_key)  # Piranha's files name no key: lb's default, with a warning
    assert cfg.ha is not None and cfg.ha.key_file == Path("/etc/lb/ha.key")
    [w] = [w for w in cfg.warnings if not w.field.endswith(".active")]  # GOOD_HEAD has no active lines
    assert (w.line, w.field) == (3, "backup_active") and w.message.startswith(
        "lb_ha_key_file not given: the heartbeat key is /etc/lb/ha.key")
    assert one(no_key.replace("heartbeat = 1", "heartbeat = 0") .replace(
        "monitor_links = 1\n", 'monitor_links = 1\nlb_ha_key_file = "/k"\n')) == (
        6, "heartbeat", "heartbeat = 0 with backup_active = 1: lb's failover needs heartbeats")
    line, fld, msg = one(HA_CF.replace("lb_ha_deadtime = 2.5", "lb_ha_deadtime = 0.3"))
    assert (line, fld) == (15, "lb_ha_deadtime") and "twice keepalive" in msg
    assert one(HA_CF.replace("heartbeat_port = 1539", "heartbeat_port = 70000"))[:2] == (7, "heartbeat_port")


def test_ha_without_timing_lines_has_pulses_defaults() -> None:
    # pulse's defaults (lvsconfig.c): keepalive 2, deadtime 5 -- not lb's [ha] deadtime of 6 s
    bare = "primary = 198.18.0.1\nbackup_active = 1\nbackup = 198.18.0.3\nlb_ha_key_file = \"/k\"\n" + GOOD_HEAD
    ha = lvscf.loads(bare).ha
    assert ha is not None and (ha.keepalive, ha.deadtime, ha.heartbeat_port) == (2, 5, 539)
    assert lvscf.loads(bare.replace("backup = ", "deadtime = 9\nbackup = ")).ha.deadtime == 9
    assert lvscf.loads(bare.replace("backup = ", "lb_ha_deadtime = 4.5\nbackup = ")).ha.deadtime == 4.5


def test_ha_timing_and_users_are_checked_and_round_trip() -> None:
    assert one(HA_CF.replace("lb_ha_max_skew = 5", "lb_ha_max_skew = 0")) == (
        19, "lb_ha_max_skew", "must be more than 0 seconds")
    assert one(HA_CF.replace("lb_ha_sync_interval = 0.5", "lb_ha_sync_interval = 0")) == (
        18, "lb_ha_sync_interval", "must be more than 0 seconds")
    assert one(HA_CF.replace("lb_ha_sync = 0", "lb_ha_sync = 0\nlb_ha_sync_port = 1539")) == (
        21, "lb_ha_sync_port", "must differ from heartbeat_port (1539): heartbeats have a socket of their own")
    assert one(HA_CF.replace("lb_ha_sync = 0", "lb_ha_sync = 0\nlb_ha_script_user = nosuchuser0")) == (
        21, "lb_ha_script_user", "no user 'nosuchuser0' on this machine (programs run as an existing account; "
                                 '"root" only where they need it)')
    text = HA_CF.replace("lb_ha_sync = 0", "lb_ha_sync = 0\nlb_ha_sync_port = 2000\nlb_ha_script_user = root")
    cfg = lvscf.loads("lb_script_user = root\n" + text)
    assert (cfg.script_user, cfg.ha.sync_port, cfg.ha.script_user) == ("root", 2000, "root")
    assert cfg.virtual_servers[0].monitor.script_user == "root"        # the global default
    out = lvscf.dumps(cfg)
    assert "lb_script_user = root" in out and "lb_ha_sync_port = 2000" in out
    assert "lb_ha_script_user" not in out and "lb_monitor_script_user" not in out   # = the global one
    assert lvscf.loads(out) == cfg and loads(lvscf.dumps_toml(cfg)) == cfg
    # the default sync port follows the heartbeat port (1539 here)
    assert lvscf.loads(HA_CF).ha.sync_port == 1540


def test_monitor_header_injection_is_refused_at_its_lvscf_line() -> None:
    head = GOOD_HEAD.replace("port = 80", "port = 80\n     lb_monitor_kind = http\n     lb_monitor_escaped = 1")
    assert one(head.replace("port = 80", 'port = 80\n     lb_monitor_host = "a.example\\r\\nX-Evil: 1"')) == (
        5, "virtual[web].lb_monitor_host", "the Host header must not contain '\\r' (no spaces or control characters)")
    assert one(head.replace("port = 80", 'port = 80\n     lb_monitor_path = "/x\\nHost: b"')) == (
        5, "virtual[web].lb_monitor_path", "the path must not contain '\\n' (no spaces or control characters)")
    assert one(GOOD_HEAD.replace("port = 80", "port = 80\n     lb_monitor_connect_timeout = 0")) == (
        5, "virtual[web].lb_monitor_connect_timeout", "must be more than 0 seconds")


@pytest.mark.parametrize("network, sorry, written", [
    ("direct", (IPv4Address("10.9.1.99"), None), "sorry_server = 10.9.1.99"),
    ("direct", (IPv4Address("10.9.1.99"), 80), "sorry_server = 10.9.1.99:80"),
    ("nat", (IPv4Address("10.9.1.99"), 8080), "sorry_server = 10.9.1.99:8080"),
])
def test_sorry_server_is_model_and_round_trips(network: str, sorry: tuple, written: str) -> None:
    nat = dict(private_interface="eth1", nat_router=IPv4Interface("10.9.1.254/24"), nat_router_device="eth1") \
        if network == "nat" else {}
    vs = VirtualServer(name="web", address=IPv4Address("10.9.0.1"), port=80, sorry_server=sorry,
                       real_servers=(RealServer("r", IPv4Address("10.9.1.1")),))
    cfg = Config(public_interface="eth0", network=network, virtual_servers=(vs,), **nat)
    text = lvscf.dumps(cfg)
    assert f"     {written}" in text.splitlines()
    back, extras = lvscf.loads_with_extras(text)
    assert back == cfg and "sorry_server" not in extras["virtual"].get("web", {})
    toml = lvscf.dumps_toml(cfg)
    assert "sorry_server = " in toml and "lb cannot use" not in toml
    assert loads(toml) == cfg


def test_sorry_server_errors_name_the_lvscf_line() -> None:
    text = cf("""\
        network = direct
        virtual web {
             address = 10.9.0.1 eth0
             port = 80
             sorry_server = 10.9.1.99:8080
        }
        """)
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(text)
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (5, "virtual[web].sorry_server")
    assert "direct routing cannot change the destination port" in issue.message
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(text.replace("10.9.1.99:8080", "nonsense"))
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (5, "virtual[web].sorry_server")


def test_network_tunnel_reads_and_writes_back() -> None:
    cfg = lvscf.loads(GOOD_HEAD.replace("network = direct", "network = tunnel"))
    assert cfg.network == "tunnel"
    assert "network = tunnel" in lvscf.dumps(cfg)
    # tunneling hands the packet on as it came: a real server's port cannot differ
    line, fld, msg = one(GOOD_HEAD.replace("network = direct", "network = tunnel")
                         .replace("weight = 1", "weight = 1\n         port = 8080"))
    assert "tunneling cannot change the destination port" in msg


def test_no_network_line_is_piranhas_nat_never_direct_routing() -> None:
    # Piranha's lvs forwards by NAT when the file has no network line (lvsconfig.c's default; its
    # console leaves the line out for NAT): lb must not take it as direct routing
    nat = GOOD_HEAD.replace("network = direct\n", "nat_router = 10.0.0.254 eth1:1\n")
    cfg = lvscf.loads(nat)
    assert (cfg.network, cfg.private_interface) == ("nat", "eth1")
    assert "network = nat" in lvscf.dumps(cfg)
    # without nat_router lb cannot run it as NAT: refused, naming the key, not quietly DR
    assert one(GOOD_HEAD.replace("network = direct\n", "")) == (
        1, "network", "no 'network' line: Piranha forwards by NAT then (its default), and lb's NAT needs "
                      "nat_router = IP DEVICE[:N]; add network = nat with nat_router, or network = direct or "
                      "network = tunnel, as the real servers are set up")


def test_no_active_line_is_off_as_in_piranha() -> None:
    # lvsconfig.c zeroes a new virtual or server block and lvs skips those whose isActive is 0:
    # without active = 1 Piranha never ran them, so lb must not send traffic there either
    text = GOOD_HEAD.replace("     port = 80\n", "     port = 80\n     active = 1\n").replace(
        "     }\n}", "     }\n     server web2 {\n         address = 10.0.0.12\n         active = 1\n     }\n}")
    cfg = lvscf.loads(text, "lvs.cf")
    vs = cfg.virtual_servers[0]
    assert vs.active and [(rs.name, rs.active) for rs in vs.real_servers] == [("web1", False), ("web2", True)]
    assert [(w.line, w.field, w.message) for w in cfg.warnings] == [
        (6, "virtual[web].server[web1].active", "no 'active' line: off, as in Piranha (lvs does not add a real "
                                                "server without active = 1); add active = 1 to run it")]
    off = lvscf.loads(GOOD_HEAD, "lvs.cf")
    assert not off.virtual_servers[0].active
    assert [(w.line, w.field) for w in off.warnings] == [(2, "virtual[web].active"),
                                                         (5, "virtual[web].server[web1].active")]
    # written back with the lines: read again, the same and no warning
    again = lvscf.loads(lvscf.dumps(cfg), "lvs.cf")
    assert again.virtual_servers == cfg.virtual_servers and again.warnings == ()
    # lb import keeps them off
    assert "active = false" in lvscf.dumps_toml(off)


def test_use_regex_posix_classes_match_as_nanny_matched_them() -> None:
    # Piranha's nanny compiled expect with regcomp: [[:digit:]] is a digit there; Python's re would
    # read a set of "[:digt" then a literal "]", and the check would never pass
    text = GOOD_HEAD.replace("     port = 80\n", '     port = 80\n     send = "GET / HTTP/1.0\\r\\n\\r\\n"\n'
                             '     expect = "HTTP/1\\.[01] [[:digit:]]{3} [^[:space:]]+"\n     use_regex = 1\n')
    mon = lvscf.loads(text).virtual_servers[0].monitor
    assert mon.expect == r"HTTP/1\.[01] [0-9]{3} [^ \t\n\r\f\v]+"
    assert re.search(mon.expect, "HTTP/1.1 200 OK\r\n") and not re.search(mon.expect, "HTTP/1.1 2x0 OK")
    # only with use_regex; and what is written back reads back the same
    assert lvscf.loads(text.replace("use_regex = 1", "use_regex = 0")).virtual_servers[0].monitor.expect == \
        "HTTP/1\\.[01] [[:digit:]]{3} [^[:space:]]+"
    assert lvscf.loads(lvscf.dumps(lvscf.loads(text))).virtual_servers[0].monitor == mon


def test_timeout_zero_is_ipvsadms_unchanged() -> None:
    # Piranha passes the three to ipvsadm --set, where 0 leaves the kernel's timeout: IPVS's default
    cfg = lvscf.loads("tcp_timeout = 0\ntcpfin_timeout = 0\nudp_timeout = 60\n" + GOOD_HEAD)
    assert (cfg.timeouts.tcp, cfg.timeouts.tcpfin, cfg.timeouts.udp) == (900, 120, 60)
    assert one("tcp_timeout = -1\n" + GOOD_HEAD)[:2] == (1, "tcp_timeout")


def test_import_lists_no_alias_labels_as_unused_keys() -> None:
    # eth0:1 / eth1:1 are labels of the device lb uses (address, nat_router): no lvs.cf keys
    cfg, extras = lvscf.loads_with_extras(GOOD_HEAD.replace("network = direct", "network = nat\n"
                                                            "nat_router = 10.0.0.254 eth1:1"))
    assert "_alias" not in lvscf.dumps_toml(cfg, extras) and "cannot use yet" not in lvscf.dumps_toml(cfg, extras)
    cfg, extras = lvscf.loads_with_extras("debug_level = NONE\n" + GOOD_HEAD)
    assert "lvs.cf keys lb cannot use yet (kept here for reference only):\n#   debug_level = NONE\n" in \
        lvscf.dumps_toml(cfg, extras)


def test_expect_star_is_nannys_any_reply() -> None:
    # nanny reads one byte when expect is "*" and takes any: not a literal '*' to find in the reply
    text = GOOD_HEAD.replace("     port = 80\n", '     port = 80\n     send = "quit\\r\\n"\n     expect = "*"\n')
    mon = lvscf.loads(text).virtual_servers[0].monitor
    assert (mon.kind, mon.use_regex) == ("send_expect", True)
    assert re.search(mon.expect, "220 ftp ready\r\n") and re.search(mon.expect, "\n")
    assert lvscf.loads(lvscf.dumps(lvscf.loads(text))).virtual_servers[0].monitor == mon
    # a program's expect is compared with its output as it is (no wildcard there)
    prog = lvscf.loads(text.replace('send = "quit\\r\\n"', 'send_program = "/bin/check %h"'))
    assert (prog.virtual_servers[0].monitor.expect, prog.virtual_servers[0].monitor.use_regex) == ("*", False)


def test_quiesce_server_quiesces_a_failed_server_as_nanny_did() -> None:
    # nanny -q (lvs passes it for quiesce_server = 1): a server failing its check gets weight 0
    # instead of being removed from the table -- lb's Monitor.quiesce
    text = GOOD_HEAD.replace("     port = 80\n", "     port = 80\n     quiesce_server = 1\n")
    vs = lvscf.loads(text).virtual_servers[0]
    assert vs.quiesce_server and vs.monitor.quiesce
    assert not lvscf.loads(GOOD_HEAD).virtual_servers[0].monitor.quiesce
    off = lvscf.loads(text.replace("quiesce_server = 1", "quiesce_server = 1\n     lb_monitor_quiesce = 0"))
    assert off.virtual_servers[0].quiesce_server and not off.virtual_servers[0].monitor.quiesce
    # both read back as they are: lvs.cf written by export / the console, and TOML by lb import
    for cfg in (lvscf.loads(text), off):
        assert lvscf.loads(lvscf.dumps(cfg)).virtual_servers == cfg.virtual_servers
        assert loads(lvscf.dumps_toml(cfg)).virtual_servers == cfg.virtual_servers
    assert "lb_monitor_quiesce" not in lvscf.dumps(lvscf.loads(text))


def test_reentry_zero_is_nannys_180_seconds() -> None:
    # lvs passes -a 0 and nanny takes 0 as its default, 180 s: not a server back at once
    cfg = lvscf.loads(GOOD_HEAD.replace("port = 80", "port = 80\n     reentry = 0"), "lvs.cf")
    assert cfg.virtual_servers[0].monitor.reentry == 180
    [w] = [w for w in cfg.warnings if w.field == "virtual[web].reentry"]
    assert (w.line, w.message) == (5, "reentry = 0 is 180 s, as in Piranha (nanny took 0 as its default); "
                                      "lb_monitor_reentry = 0 takes a server back at its first successful check")
    now = lvscf.loads(GOOD_HEAD.replace("port = 80", "port = 80\n     reentry = 0\n     lb_monitor_reentry = 0"))
    assert now.virtual_servers[0].monitor.reentry == 0 and lvscf.loads(lvscf.dumps(now)) == now


def test_web_console_keys_round_trip(tmp_path: Path) -> None:
    web = Web(enabled=True, address=IPv4Address("198.18.0.1"), port=8443, password_file=Path("/etc/lb/x.passwd"))
    cfg = Config(public_interface="eth0", web=web)
    text = lvscf.dumps(cfg)
    assert "lb_web_enabled = 1" in text and "lb_web_listen = 198.18.0.1:8443" in text
    assert 'lb_web_password_file = "/etc/lb/x.passwd"' in text
    assert lvscf.loads(text) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    assert "lb_web" not in lvscf.dumps(Config(public_interface="eth0"))
    # TLS, the Host allow-list, trusted proxies, the session's lifetime; the control socket's groups
    web = dataclasses.replace(web, tls_cert=Path("/etc/lb/w.crt"), tls_key=Path("/etc/lb/w.key"),
                              allowed_hosts=("lb.example.com", "198.18.0.1"),
                              trusted_proxies=(IPv4Network("198.18.0.5/32"), IPv4Network("10.0.0.0/8")),
                              session_lifetime=3600.0, hsts=True)
    cfg = Config(public_interface="eth0", web=web, serial_no=7,
                 control=Control(admin_group="lbweb", read_group="lbview"))
    text = lvscf.dumps(cfg)
    assert text.startswith("serial_no = 7\n")
    assert "lb_web_allowed_hosts = lb.example.com, 198.18.0.1" in text
    assert "lb_web_trusted_proxies = 198.18.0.5, 10.0.0.0/8" in text and 'lb_web_tls_key = "/etc/lb/w.key"' in text
    assert "lb_control_admin_group = lbweb" in text and "lb_control_read_group = lbview" in text
    assert "lb_web_hsts = 1" in text
    assert lvscf.loads(text) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    # a relative password file is relative to the lvs.cf, as in TOML
    f = tmp_path / "lvs.cf"
    f.write_text(GOOD_HEAD + 'lb_web_password_file = "lb.passwd"\n')
    assert load(f).web.password_file == tmp_path / "lb.passwd"
    assert one(GOOD_HEAD + "lb_web_listen = localhost:80\n") == (
        10, "lb_web_listen", "'localhost' is not an IP address (lb listens on an address, not a host name)")


def test_metrics_keys_round_trip() -> None:
    metrics = Metrics(enabled=True, address=IPv6Address("2001:2::1"), port=9100)
    cfg = Config(public_interface="eth0", metrics=metrics)
    text = lvscf.dumps(cfg)
    assert "lb_metrics_enabled = 1" in text and "lb_metrics_listen = [2001:2::1]:9100" in text
    assert lvscf.loads(text) == cfg
    assert loads(lvscf.dumps_toml(cfg)) == cfg
    assert "lb_metrics" not in lvscf.dumps(Config(public_interface="eth0"))
    assert one(GOOD_HEAD + "lb_metrics_listen = 198.18.0.1\n") == (
        10, "lb_metrics_listen", 'expected ADDRESS:PORT (e.g. "127.0.0.1:8080", or "[::1]:8080" for IPv6), '
                                 'got "198.18.0.1"')
    assert one(GOOD_HEAD + "lb_metrics_enabled = yes\n") == (10, "lb_metrics_enabled", "expected 0 or 1, got 'yes'")


def test_what_lvscf_cannot_say_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "lb.toml"
    f.write_text('[global]\npublic_interface = "eth0"\n[ha]\nprimary = "198.18.0.1"\nbackup = "198.18.0.3"\n'
                 'key_file = "/k"\nnotify = ["/usr/local/bin/a,b"]\n')
    with pytest.raises(ConfigError) as ei:
        lvscf.dumps(load(f))
    assert str(ei.value) == f"{f}: ha.notify: lvs.cf's lb_ha_notify is comma-separated: a notify path " \
                            "with ',' cannot be written"


# --- numbers and addresses as Piranha's lvsconfig.c read them ---------------------------------


def test_numbers_are_read_as_c_strtol_reads_them() -> None:
    """Piranha's getNum is strtol(tok, &end, 0) on the whole token: 0x50 is 80, 010 is 8 (octal),
    for every number of the file -- ports (getPort: a number first, then a service name), weights,
    timeouts, booleans (getBoolean: a number, 0 or 1), serial_no.  lb read 010 as 10 and refused
    0x50."""
    text = GOOD_HEAD.replace("port = 80", "port = 0x50\n     active = 01\n     persistent = 010\n"
                                          "     timeout = 0xa").replace("weight = 1", "weight = 010\n         active = 0x1")
    cfg = lvscf.loads("serial_no = 0x10\ntcp_timeout = 0100\n" + text)
    vs = cfg.virtual_servers[0]
    rs = vs.real_servers[0]
    assert (vs.port, vs.active, vs.persistent, vs.monitor.timeout) == (80, True, 8, 10)
    assert (rs.weight, rs.active) == (8, True)
    assert (cfg.serial_no, cfg.timeouts.tcp) == (16, 64)
    # a sign, as strtol takes it: -0 is 0
    assert lvscf.loads(GOOD_HEAD.replace("weight = 1", "weight = -0")).virtual_servers[0].real_servers[0].weight == 0


def test_numbers_piranha_refused_are_errors_at_their_line() -> None:
    # 08: strtol stops at 8 (no octal digit), and Piranha's getNum refused what it left
    line, fld, msg = one(GOOD_HEAD.replace("weight = 1", "weight = 08"))
    assert (line, fld) == (7, "virtual[web].server[web1].weight")
    assert msg.startswith("expected an integer, got '08': lvs.cf numbers are read as Piranha's (C's strtol), where "
                          "a leading 0 makes an octal number (010 is 8)")
    assert one(GOOD_HEAD.replace("weight = 1", "weight = 0x")) == (
        7, "virtual[web].server[web1].weight", "expected an integer, got '0x'")
    assert one(GOOD_HEAD.replace("port = 80", "port = 80\n     active = 0x2")) == (
        5, "virtual[web].active", "expected 0 or 1, got '0x2'")
    # the range is the value's, as read
    assert one(GOOD_HEAD.replace("port = 80", "port = 0x10000")) == (
        4, "virtual[web].port", "must be between 1 and 65535, got 65536")


def test_heartbeat_port_takes_a_service_name_and_c_numbers() -> None:
    """heartbeat_port is getPort in Piranha: a number or a (tcp) service name."""
    ha = ("backup_active = 0x1\nprimary = 198.18.0.1\nbackup = 198.18.0.2\nheartbeat_port = {}\n"
          "keepalive = 0x2\ndeadtime = 012\nlb_ha_key_file = /etc/lb/ha.key\n")
    cfg = lvscf.loads(ha.format("0x21b") + GOOD_HEAD)
    assert (cfg.ha.heartbeat_port, cfg.ha.keepalive, cfg.ha.deadtime) == (539, 2, 10)
    assert lvscf.loads(ha.format("http") + GOOD_HEAD).ha.heartbeat_port == 80
    # one director: kept for writing back, checked all the same
    _, extras = lvscf.loads_with_extras("heartbeat_port = 0x21b\n" + GOOD_HEAD)
    assert extras["global"]["heartbeat_port"] == 539
    assert one("heartbeat_port = 0x10000\n" + GOOD_HEAD) == (1, "heartbeat_port", "must be between 1 and 65535, got 65536")


@pytest.mark.parametrize("written, piranha", [
    ("010.0.0.1", "8.0.0.1"), ("192.168.001.010", "192.168.1.8"), ("0x0a000001", "10.0.0.1"),
    ("10.1", "10.0.0.1"), ("167772161", "10.0.0.1"),
])
def test_inet_aton_forms_of_an_address_are_refused_naming_piranhas(written, piranha) -> None:
    """Piranha read addresses with inet_aton (then gethostbyname): a zero-padded address was octal
    to it.  lb says which address Piranha used, at the line, rather than guess the author's."""
    line, fld, msg = one(GOOD_HEAD.replace("10.0.0.11", written))
    assert (line, fld) == (6, "virtual[web].server[web1].address")
    assert msg.startswith(f"'{written}' is {piranha} as Piranha read it (inet_aton") and f"write {piranha} if" in msg


def test_host_names_are_looked_up_as_piranha_did(monkeypatch, tmp_path) -> None:
    """Piranha's getHostname took a host name where an address goes (gethostbyname) in primary,
    backup, their _private, a virtual's and a server's address and nat_router: lb looks it up at
    each load too (the resolver is the test's: no lookup leaves this machine)."""
    from lb import config as lbconfig

    names = {"web1.example": "198.18.1.11", "vip.example": "198.18.0.10", "gw.example": "198.18.1.254",
             "lb1.example": "198.18.0.1", "lb2.example": "198.18.0.2"}
    asked = []
    monkeypatch.setattr(lvscf, "resolve_host", lambda name: asked.append(name) or names.get(name))
    text = ("network = nat\nnat_router = gw.example eth1\nbackup_active = 1\nprimary = lb1.example\n"
            "backup = lb2.example\nlb_ha_key_file = /etc/lb/ha.key\n"
            + GOOD_HEAD.replace("network = direct\n", "").replace("192.168.1.10", "vip.example")
            .replace("10.0.0.11", "web1.example"))
    cfg = lvscf.loads(text, "lvs.cf")
    vs = cfg.virtual_servers[0]
    assert (vs.address, vs.real_servers[0].address) == (IPv4Address("198.18.0.10"), IPv4Address("198.18.1.11"))
    assert cfg.nat_router == IPv4Interface("198.18.1.254/24")
    assert (cfg.ha.primary, cfg.ha.backup) == (IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))
    assert sorted(asked) == sorted(names)          # addresses are never looked up
    w = {(i.line, i.field): i.message for i in cfg.warnings}
    assert w[(11, "virtual[web].server[web1].address")] == (
        "host name 'web1.example' is 198.18.1.11: looked up at each load, as Piranha did at each start (a reload "
        "looks it up again); lb export and the console's saves write the address")
    assert {(2, "nat_router"), (4, "primary"), (5, "backup"), (8, "virtual[web].address")} <= set(w)
    # the export writes the addresses
    assert "address = 198.18.1.11" in lvscf.dumps(cfg)
    # an issue found after loading names its line without looking anything up
    path = tmp_path / "lvs.cf"
    path.write_text(text)
    asked.clear()
    issue = lbconfig.issue_at(path, ("virtual_server", 0, "real_server", 0, "address"), "unreachable")
    assert (issue.line, issue.field, asked) == (11, "virtual[web].server[web1].address", [])
    # a name without an address is an error at its line
    names.pop("web1.example")
    assert one(text) == (11, "virtual[web].server[web1].address",
                         "'web1.example' is not an IP address, and this machine finds no address for it as a "
                         "host name (Piranha looked names up with gethostbyname: /etc/hosts, then DNS)")


def test_inet_aton_and_c_integer() -> None:
    assert [str(lvscf.inet_aton(t)) for t in ("1.2.3.4", "0x7f.1", "127.1", "0", "0x0", "255.0xffffff")] == [
        "1.2.3.4", "127.0.0.1", "127.0.0.1", "0.0.0.0", "0.0.0.0", "255.255.255.255"]
    # "0x" without a hex digit is no number to glibc's inet_aton (strtoul reads the 0, the x is left)
    assert [lvscf.inet_aton(t) for t in ("256.1.1.1", "1.2.3.256", "1.2.65536", "08.1.1.1", "1..2", "a.b.c.d",
                                         "1.2.3.4.5", "-1.2.3.4", "", "0x", "0x.0.0.1", "1.2.3.0x")] == [None] * 12
    assert [lvscf.c_integer(t) for t in ("010", "0x50", "0X1f", "-0x10", "+7", "0", "00")] == [8, 80, 31, -16, 7, 0, 0]
    assert [lvscf.c_integer(t) for t in ("08", "0x", "12a", "-", "", "1 ", "0b1")] == [None] * 7


# inet_aton's forms as this machine's C library reads them (glibc, as Piranha's); no blanks: an
# lvs.cf token has none, and lb refuses what follows one (see below)
ATON_FORMS = ["10.1", "10.1.2", "167772161", "0x0a.0.0.1", "012.0.0.1", "0X0A.0.0.1", "10.0.0.0x1", "0xa.1",
              "10.256", "1.2.65535", "0xffffffff", "4294967295", "0377.0377.0377.0", "0", "00", "0x0",
              "4294967296", "1.2.65536", "1.2.3.256", "256.1", "0400.0.0.0", "08.0.0.1", "0x.0.0.1", "1.2.3.0x",
              "10..1", "10.0.0.1.", ".10.0.0.1", "+10.0.0.1", "-1", "0xg", "1e3", "1.2.3.4.5", ""]


@pytest.mark.parametrize("text", ATON_FORMS)
def test_inet_aton_reads_as_the_c_library_does(text: str) -> None:
    import socket

    try:
        libc = str(IPv4Address(socket.inet_aton(text)))
    except OSError:
        libc = None
    got = lvscf.inet_aton(text)
    assert (str(got) if got is not None else None) == libc


# Piranha read these four keys with inet_aton alone (lvsconfig.c: no gethostbyname): each of
# its forms is the address Piranha took, written back in dotted form, with a warning at its line
ATON_GOOD = [("10.1", "10.0.0.1"), ("10.1.2", "10.1.0.2"), ("167772161", "10.0.0.1"),
             ("0x0a.0.0.1", "10.0.0.1"), ("012.0.0.1", "10.0.0.1"), ("0x0a000063", "10.0.0.99")]
# refused by inet_aton, hence by Piranha (LVS_ERROR_BADHOSTNAME / BADNETMASK, or extra words after
# the value): a part out of range, 8 or 9 in an octal part, 0x without a digit, trailing text
ATON_BAD = ["10.0.0.256", "1.2.65536", "4294967296", "08.0.0.1", "0x.0.0.1", "10..1", "10.0.0.1.",
            "10.0.0.1 junk", "10.1 x"]


def read_as(cfg: Config) -> list:
    """The warnings of a load but GOOD_HEAD's own (its blocks have no active line)."""
    return [w for w in cfg.warnings if not w.field.endswith(".active")]


def _sorry(value: str) -> str:
    return GOOD_HEAD.replace("port = 80", f"port = 80\n     sorry_server = {value}")  # line 5


def _cf_error(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(text, "lvs.cf")
    assert len(ei.value.issues) == 1, str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize("written, address", ATON_GOOD)
def test_sorry_server_takes_inet_atons_forms_as_piranha_did(written: str, address: str) -> None:
    cfg, extras = lvscf.loads_with_extras(_sorry(written), "lvs.cf")
    assert cfg.virtual_servers[0].sorry_server == (IPv4Address(address), None)
    assert [(w.line, w.field, w.message) for w in read_as(cfg)] == [
        (5, "virtual[web].sorry_server",
         f"'{written}' is {address} as Piranha read it (inet_aton: a leading 0 makes a part octal, 0x "
         f"hexadecimal, and fewer than four parts fill the last one: 10.1 is 10.0.0.1); lb export and the "
         f"console's saves write {address}")]
    assert f"     sorry_server = {address}" in lvscf.dumps(cfg, extras).splitlines()


@pytest.mark.parametrize("written", ATON_BAD + ["10.1:80", "sorry.example"])
def test_sorry_server_refuses_what_piranha_refused(written: str) -> None:
    """Piranha's sorry_server was the address alone (ADDR:PORT is lb's), never a host name."""
    assert _cf_error(_sorry(written)).startswith("lvs.cf:5: virtual[web].sorry_server: ")


def _pmask(value: str) -> str:
    return GOOD_HEAD.replace("port = 80", f"port = 80\n     persistent = 300\n     pmask = {value}")  # line 6


# netmasks in inet_aton's forms (lb still needs a contiguous one where it did before)
MASK_GOOD = [("0xffffff00", "255.255.255.0"), ("4294967040", "255.255.255.0"), ("255.255.0xff00", "255.255.255.0"),
             ("0377.0377.0377.0", "255.255.255.0"), ("255.16776960", "255.255.255.0"), ("0xffff0000", "255.255.0.0")]
# read by inet_aton, but no contiguous mask: 255.255.255 is 255.255.0.255, 24 is 0.0.0.24
MASK_NOT_CONTIGUOUS = [("255.255.255", "255.255.0.255"), ("24", "0.0.0.24"), ("0xffffff01", "255.255.255.1")]


@pytest.mark.parametrize("written, mask", MASK_GOOD)
def test_pmask_takes_inet_atons_forms(written: str, mask: str) -> None:
    cfg, extras = lvscf.loads_with_extras(_pmask(written), "lvs.cf")
    assert cfg.virtual_servers[0].pmask == mask
    assert [(w.line, w.field) for w in read_as(cfg)] == [(6, "virtual[web].pmask")]
    assert read_as(cfg)[0].message.startswith(f"'{written}' is {mask} as Piranha read it (inet_aton")
    assert f"     pmask = {mask}" in lvscf.dumps(cfg, extras).splitlines()


@pytest.mark.parametrize("written, piranha", MASK_NOT_CONTIGUOUS)
def test_pmask_in_inet_atons_form_must_still_be_contiguous(written: str, piranha: str) -> None:
    assert _cf_error(_pmask(written)) == (
        f"lvs.cf:6: virtual[web].pmask: '{written}' is {piranha} as Piranha read it (inet_aton: a leading 0 "
        f"makes a part octal, 0x hexadecimal, and fewer than four parts fill the last one: 10.1 is 10.0.0.1), "
        f"not a contiguous IPv4 netmask (e.g. 255.255.255.0 or /24)")


@pytest.mark.parametrize("written", ATON_BAD)
def test_pmask_refuses_what_inet_aton_refused(written: str) -> None:
    assert _cf_error(_pmask(written)).startswith("lvs.cf:6: virtual[web].pmask: ")


@pytest.mark.parametrize("written", ["0.0.0.0", "0", "0x0", "0.0"])
def test_zero_pmask_is_one_template_per_client_as_piranha_ran_it(written: str) -> None:
    """Piranha's lvs passed ipvsadm -M only for a non-zero pmask (lvsd.c startVirtualServer): 0.0.0.0
    was ipvsadm's default, 255.255.255.255, each client its own template -- not every client pinned
    to one real server.  lb's one template for all clients is pmask = /0, which export writes."""
    from lb.dataplane.ipvs import _mask
    cfg, extras = lvscf.loads_with_extras(_pmask(written), "lvs.cf")
    web = cfg.virtual_servers[0]
    assert (web.persistent, web.pmask, _mask(web.pmask, False)) == (300, None, "255.255.255.255")
    assert [(w.line, w.field) for w in read_as(cfg)] == [(6, "virtual[web].pmask")]
    assert read_as(cfg)[0].message.startswith(f"'{written}' is one persistence template per client, as in Piranha")
    assert "pmask" not in lvscf.dumps(cfg, extras)
    # lb's /0 (Piranha's inet_aton refused it) is one template for all clients, and stays so
    shared = lvscf.loads(_pmask("/0"), "lvs.cf")
    assert shared.virtual_servers[0].pmask == "0.0.0.0" and not read_as(shared)
    assert "     pmask = /0" in lvscf.export(shared).splitlines()
    assert lvscf.loads(lvscf.export(shared), "lvs.cf").virtual_servers[0].pmask == "0.0.0.0"


def test_weight_zero_warns_that_piranha_ran_the_server_at_weight_one() -> None:
    """nanny started a server that passed its check at weight >> 5, never below 1: weight = 0 took
    connections in Piranha; lb keeps the weight written (no new connections) and says so."""
    text = GOOD_HEAD.replace("weight = 1", "weight = 0\n         active = 1")
    cfg = lvscf.loads(text, "lvs.cf")
    assert cfg.virtual_servers[0].real_servers[0].weight == 0
    assert [(w.line, w.field) for w in read_as(cfg)] == [(7, "virtual[web].server[web1].weight")]
    assert "Piranha's nanny still added this server, at weight 1" in read_as(cfg)[0].message
    # a server Piranha did not start (no active = 1) has no such difference
    assert not read_as(lvscf.loads(GOOD_HEAD.replace("weight = 1", "weight = 0"), "lvs.cf"))


def test_server_block_before_the_virtuals_port_line_warns() -> None:
    """lvsconfig.c gave a server block the virtual's port as read so far (80 before its port line):
    nanny checked the server there and NAT sent its connections there; lb uses the virtual's port."""
    text = GOOD_HEAD.replace("     port = 80\n", "").replace("weight = 1\n     }\n", "weight = 1\n"
                                                                "         active = 1\n     }\n     port = 8080\n")
    cfg = lvscf.loads(text, "lvs.cf")
    web = cfg.virtual_servers[0]
    assert (web.port, web.real_servers[0].effective_port(web)) == (8080, 8080)
    assert [(w.line, w.field) for w in read_as(cfg)] == [(4, "virtual[web].server[web1].port")]
    assert read_as(cfg)[0].message.startswith("this server block comes before the virtual's port line (line 9): "
                                              "Piranha gave it port 80")
    # port line first (Piranha's console writes it so), or port 80 anyway: nothing to say
    assert not read_as(lvscf.loads(text.replace("     port = 8080\n", "").replace(
        "eth0:1\n", "eth0:1\n     port = 8080\n"), "lvs.cf"))
    assert not read_as(lvscf.loads(text.replace("port = 8080", "port = 80"), "lvs.cf"))


def test_ipv6_pmask_stays_a_prefix_length() -> None:
    """An IPv6 service's pmask is a prefix length (lb's, Piranha had no IPv6): 64 is not 0.0.0.64."""
    text = (HERE / "lvscf" / "ipv6.cf").read_text()
    web6, ftp6, web4 = lvscf.loads(text).virtual_servers
    assert (web6.pmask, ftp6.pmask, web4.pmask) == (64, 56, "255.255.255.0")
    # a firewall-mark service's family is its port groups'
    assert lvscf.loads(text.replace("pmask = /56", "pmask = 64")).virtual_servers[1].pmask == 64


def _nat(value: str) -> str:
    return GOOD_HEAD.replace("network = direct", f"network = nat\nnat_router = 10.0.0.254 eth1\nnat_nmask = {value}")


@pytest.mark.parametrize("written, mask", MASK_GOOD)
def test_nat_nmask_takes_inet_atons_forms(written: str, mask: str) -> None:
    cfg, extras = lvscf.loads_with_extras(_nat(written), "lvs.cf")
    assert cfg.nat_router == IPv4Interface(f"10.0.0.254/{mask}")
    assert [(w.line, w.field) for w in read_as(cfg)] == [(3, "nat_nmask")]
    assert read_as(cfg)[0].message.startswith(f"'{written}' is {mask} as Piranha read it (inet_aton")
    assert f"nat_nmask = {mask}" in lvscf.dumps(cfg, extras).splitlines()


@pytest.mark.parametrize("written, piranha", MASK_NOT_CONTIGUOUS)
def test_nat_nmask_in_inet_atons_form_must_still_be_contiguous(written: str, piranha: str) -> None:
    assert _cf_error(_nat(written)).startswith(
        f"lvs.cf:3: nat_nmask: '{written}' is {piranha} as Piranha read it (inet_aton")
    assert _cf_error(_nat(written)).endswith("not a contiguous IPv4 netmask (e.g. 255.255.255.0 or /24)")


@pytest.mark.parametrize("written", ATON_BAD)
def test_nat_nmask_refuses_what_inet_aton_refused(written: str) -> None:
    assert _cf_error(_nat(written)).startswith("lvs.cf:3: nat_nmask: ")


@pytest.mark.parametrize("written, mask", [("0xffffffff", "255.255.255.255"), ("4294967295", "255.255.255.255"),
                                           ("255.0xffff00", "255.255.255.0")])
def test_vip_nmask_takes_inet_atons_forms(written: str, mask: str) -> None:
    text = GOOD_HEAD.replace("port = 80", f"port = 80\n     vip_nmask = {written}")  # line 5
    cfg, extras = lvscf.loads_with_extras(text, "lvs.cf")
    assert extras["virtual"]["web"]["vip_nmask"] == mask
    warned = read_as(cfg)
    assert (warned[0].line, warned[0].field) == (5, "virtual[web].vip_nmask")
    assert warned[0].message.startswith(f"'{written}' is {mask} as Piranha read it (inet_aton")
    # and, as a vip_nmask in any form, it has no effect unless a host mask
    assert [w.message.startswith("no effect") for w in warned[1:]] == ([] if mask == "255.255.255.255" else [True])
    assert f"     vip_nmask = {mask}" in lvscf.dumps(cfg, extras).splitlines()
    for bad in ("255.255.255", "10.0.0.1 junk", "0x.0.0.0"):
        assert _cf_error(text.replace(written, bad)).startswith("lvs.cf:5: virtual[web].vip_nmask: ")


def test_lb_import_names_file_line_and_field_of_a_refused_inet_aton_form(capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path) -> None:
    f = tmp_path / "lvs.cf"
    f.write_text(_pmask("255.255.255"))
    assert main(["import", str(f)]) == 2
    assert f"{f}:6: virtual[web].pmask: '255.255.255' is 255.255.0.255 as Piranha read it" in capsys.readouterr().err
    f.write_text(_sorry("10.1"))
    assert main(["import", str(f)]) == 0
    out = capsys.readouterr()
    assert 'sorry_server = "10.0.0.1"' in out.out


# Red Hat Piranha's keys lb has no equivalent for (Red Hat's lvsconfig.c, piranha 0.8.6: parsed
# there, each did what the warning says): accepted, kept for writing back, a warning at its line
PIRANHA_NO_EFFECT_GLOBAL = """\
hard_shutdown = 0
active_cmd = "/usr/local/sbin/up.sh eth0"
inactive_cmd = /usr/local/sbin/down.sh
ipvsadm = /sbin/ipvsadm
sync = 0
primary_shared = /dev/sdb
backup_shared = /dev/sdc
"""
PIRANHA_NO_EFFECT_VIRTUAL = """\
     client_monitor = /usr/local/sbin/mynanny
     master = 198.18.0.7
     dirs = [ /srv/www:/srv/www /etc/httpd/conf:/etc/httpd/conf ]
     start_cmd = "/etc/init.d/httpd start"
     stop_cmd = "/etc/init.d/httpd stop"
"""


def test_piranha_keys_without_an_lb_equivalent_are_kept_with_a_warning() -> None:
    text = PIRANHA_NO_EFFECT_GLOBAL + GOOD_HEAD.replace("     port = 80\n", "     port = 80\n" + PIRANHA_NO_EFFECT_VIRTUAL)
    cfg, extras = lvscf.loads_with_extras(text)
    assert {k: extras["global"][k] for k in ("hard_shutdown", "active_cmd", "inactive_cmd", "ipvsadm", "sync",
                                             "primary_shared", "backup_shared")} == {
        "hard_shutdown": False, "active_cmd": "/usr/local/sbin/up.sh eth0", "inactive_cmd": "/usr/local/sbin/down.sh",
        "ipvsadm": "/sbin/ipvsadm", "sync": False, "primary_shared": "/dev/sdb", "backup_shared": "/dev/sdc"}
    assert extras["virtual"]["web"] == {
        "address_alias": "eth0:1", "client_monitor": "/usr/local/sbin/mynanny", "master": "198.18.0.7",
        "dirs": "[ /srv/www:/srv/www /etc/httpd/conf:/etc/httpd/conf ]",
        "start_cmd": "/etc/init.d/httpd start", "stop_cmd": "/etc/init.d/httpd stop"}
    warned = {(w.line, w.field): w.message for w in cfg.warnings}
    for line, fld, words in [
            (1, "hard_shutdown", "nanny"), (2, "active_cmd", "became active"), (3, "inactive_cmd", "inactive"),
            (4, "ipvsadm", "netlink"), (5, "sync", "never used"), (6, "primary_shared", "SCSI"),
            (7, "backup_shared", "SCSI"), (12, "virtual[web].client_monitor", "/usr/local/sbin/mynanny"),
            (13, "virtual[web].master", "never used"), (14, "virtual[web].dirs", "never used"),
            (15, "virtual[web].start_cmd", "failover"), (16, "virtual[web].stop_cmd", "failover")]:
        assert warned[(line, fld)].startswith("no effect: ") and words in warned[(line, fld)], (fld, warned)
    assert "lb_ha_notify" in warned[(2, "active_cmd")]
    # lb export / dumps (the console's saves) write them back, quoted where the value has a blank
    # (Piranha took one word after '='); the file reads back the same
    out = lvscf.dumps(cfg, extras)
    written = {x.strip() for x in out.splitlines()}
    for line in ("hard_shutdown = 0", 'active_cmd = "/usr/local/sbin/up.sh eth0"',
                 "inactive_cmd = /usr/local/sbin/down.sh", "sync = 0", "primary_shared = /dev/sdb",
                 "client_monitor = /usr/local/sbin/mynanny", "master = 198.18.0.7",
                 "dirs = [ /srv/www:/srv/www /etc/httpd/conf:/etc/httpd/conf ]",
                 'start_cmd = "/etc/init.d/httpd start"', 'stop_cmd = "/etc/init.d/httpd stop"'):
        assert line in written, (line, out)
    cfg2, extras2 = lvscf.loads_with_extras(out)
    assert extras2 == extras and cfg2 == nopath(cfg)
    assert lvscf.export(cfg, extras) == out
    # lb import lists them as kept for reference
    toml = lvscf.dumps_toml(cfg, extras)
    assert '#   active_cmd = "/usr/local/sbin/up.sh eth0"\n' in toml and "#   virtual web: dirs = [ /srv/www" in toml


def test_piranha_no_effect_keys_are_type_checked() -> None:
    assert one("hard_shutdown = 2\n" + GOOD_HEAD)[:2] == (1, "hard_shutdown")
    assert one("sync = yes\n" + GOOD_HEAD)[:2] == (1, "sync")
    # Piranha's getList: '[', the entries, ']', each a word of its own
    line, fld, msg = one(GOOD_HEAD.replace("     port = 80\n", "     port = 80\n     dirs = /srv/www\n"))
    assert (line, fld) == (5, "virtual[web].dirs") and "[" in msg
