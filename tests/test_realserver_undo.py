"""`lb realserver setup [--undo]|check` and `lb decap attach|detach` against a faked host (no
namespace, nothing on the machine changes): the VIPs on lo, the sysctl files (under tmp_path),
arptables (its -L/-A/-D answered from a list), the XDP hook of each interface.  What a user sees:
the command's output and exit status, and what is left on the (fake) host and in the state file."""
from __future__ import annotations

import ipaddress
import types

import pytest

from lb import realserver
from lb.cli import main as cli
from lb.dataplane import bpfsys, decap
from lb.ha import addresses

VIP = "198.18.0.20"
DIRECTOR = "198.18.1.1"
RIP = "198.18.1.2"
OTHER_XDP = "xdp_lb_public"          # the director's own program, say


class Host:
    """The fake real server."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "proc/sys/net/ipv4/conf"
        self.lo: set[str] = set()
        self.rules: list[list[str]] = []
        self.xdp: dict[str, str | None] = {"eth1": None}
        self.attach_flags: list[bool] = []
        self.state = tmp_path / "realserver.json"
        self.lo_wide: dict[str, list[int]] = {}          # VIP -> the wider prefixes it is on lo under
        self.decap_from: dict[str, set] = {}             # dev -> the --from of its lb decap
        self.decap_vips: dict[str, set] = {}             # dev -> its --vip (decap.ANY: any address)
        self.loading: set = set()
        self.loading_vips: set = set()
        for dev in ("all", "lo", "eth1"):
            self.add_dev(dev)

    def add_dev(self, dev):
        d = self.root / dev
        d.mkdir(parents=True, exist_ok=True)
        for key, value in (("arp_ignore", 0), ("arp_announce", 0), ("rp_filter", 1)):
            (d / key).write_text(f"{value}\n")
        if dev not in ("all", "lo"):
            self.xdp.setdefault(dev, None)

    def remove_dev(self, dev):
        for f in (self.root / dev).iterdir():
            f.unlink()
        (self.root / dev).rmdir()
        del self.xdp[dev]

    def sysctl(self, dev, key):
        return int((self.root / dev / key).read_text())

    def arptables(self, cmd, **kw):
        assert cmd[0] == "arptables"
        op, rule = cmd[1], cmd[2:]
        out = types.SimpleNamespace(returncode=0, stdout="", stderr="")
        if op == "-L":
            for chain in ("INPUT", "OUTPUT", "FORWARD"):
                out.stdout += f"Chain {chain} (policy ACCEPT)\n"
                out.stdout += "".join(" ".join(r[1:]) + "\n" for r in self.rules if r[0] == chain)
        elif op == "-A":
            self.rules.append(list(rule))
        elif op == "-D":
            if list(rule) in self.rules:
                self.rules.remove(list(rule))
            else:
                out.returncode, out.stderr = 1, "arptables: Bad rule (does a matching rule exist in that chain?)"
        return out


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = Host(tmp_path)
    monkeypatch.setattr(realserver, "state_path", lambda: str(h.state))
    monkeypatch.setattr(realserver, "_sysctl_path", lambda dev, key: str(h.root / dev / key))
    monkeypatch.setattr(realserver, "ipv4_devices", lambda: sorted(d for d in h.xdp))
    monkeypatch.setattr(realserver, "default_device", lambda: "eth1")
    monkeypatch.setattr(addresses, "interface_exists", lambda dev: dev in h.xdp)
    monkeypatch.setattr(realserver, "device_address", lambda dev: RIP)
    monkeypatch.setattr(realserver, "lo_has", lambda vip: str(vip) in h.lo)
    monkeypatch.setattr(realserver, "lo_wider", lambda vip: h.lo_wide.get(str(vip), []))
    monkeypatch.setattr(realserver.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(realserver.subprocess, "run", h.arptables)

    def take(addrs):
        new = [a for a in addrs if str(a.address.ip) not in h.lo]
        h.lo.update(str(a.address.ip) for a in new)
        return new

    monkeypatch.setattr(addresses, "take", take)
    monkeypatch.setattr(addresses, "release", lambda addrs: h.lo.difference_update(str(a.address.ip) for a in addrs))

    # the XDP hook: a program's id is its name's index in NAMES
    names = [None, decap.PROGRAM, OTHER_XDP]

    def prog_id(dev):
        if dev not in h.xdp:
            raise decap.DataplaneError(f"interface {dev} does not exist")
        return names.index(h.xdp[dev]) or None

    def attach_xdp(dev, fn, mode="native", only_if_none=False):
        if only_if_none and h.xdp[dev] is not None:
            raise decap.DataplaneError(f"cannot attach XDP to {dev}: Device or resource busy (errno 16)")
        h.attach_flags.append(only_if_none)
        h.xdp[dev] = decap.PROGRAM
        h.decap_from[dev] = h.loading
        h.decap_vips[dev] = h.loading_vips
        return "native", 4

    def detach_xdp(dev, flags):
        h.xdp[dev] = None

    monkeypatch.setattr(decap, "attached_prog_id", prog_id)
    monkeypatch.setattr(bpfsys, "prog_name", lambda i: names[i])
    monkeypatch.setattr(decap, "attach_xdp", attach_xdp)
    monkeypatch.setattr(decap, "detach_xdp", detach_xdp)
    def load(addrs, sources, vips=()):
        h.loading = {ipaddress.ip_address(a) for a in sources}
        h.loading_vips = {ipaddress.ip_address(a) for a in vips} or {decap.ANY}
        return types.SimpleNamespace(close=lambda: None), None

    monkeypatch.setattr(decap, "load", load)
    monkeypatch.setattr(decap, "attached_sources",
                        lambda dev: h.decap_from[dev] if decap.attached(dev) == decap.PROGRAM else None)
    monkeypatch.setattr(decap, "attached_vips",
                        lambda dev: h.decap_vips[dev] if decap.attached(dev) == decap.PROGRAM else None)
    monkeypatch.setattr(decap, "local_addresses", lambda dev: [ipaddress.ip_address(RIP)])
    return h


def lb(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_undo_after_arptables_flushed_removes_the_vip(host, capsys):
    """Defect: the VIP's entry was dropped before its rules; a rule flushed by hand made -D fail
    and the VIP stayed on lo, the next undo saying "not set up"."""
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "dr", "--arp", "arptables", VIP)
    assert rc == 0, err
    assert VIP in host.lo and len(host.rules) == 2
    host.rules.clear()                                   # arptables -F
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "dr", VIP)
    assert rc == 0, err
    assert "already gone" in out and f"removed {VIP}/32 from lo" in out
    assert VIP not in host.lo
    assert not host.state.exists()


def test_undo_failing_keeps_what_is_left_to_undo(host, capsys, monkeypatch):
    """An arptables -D that fails while the rule is still there: the VIP stays in the state, so
    undo, run again once arptables works, takes it all back."""
    assert lb(capsys, "realserver", "setup", "--mode", "dr", "--arp", "arptables", VIP)[0] == 0
    real = host.arptables

    def broken(cmd, **kw):
        if cmd[1] == "-D":
            return types.SimpleNamespace(returncode=4, stdout="", stderr="arptables: Resource temporarily unavailable")
        return real(cmd, **kw)

    monkeypatch.setattr(realserver.subprocess, "run", broken)
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "dr", VIP)
    assert rc == 1 and "Resource temporarily unavailable" in err
    monkeypatch.setattr(realserver.subprocess, "run", real)
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "dr", VIP)
    assert rc == 0, err
    assert "not set up" not in out
    assert VIP not in host.lo and host.rules == [] and not host.state.exists()


def test_undo_with_interface_gone_restores_the_rest(host, capsys):
    """Defect: a sysctl of an interface removed since setup failed undo (ENOENT) on every run."""
    host.add_dev("eth2")
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "dr", VIP)
    assert rc == 0, err
    assert host.sysctl("eth2", "arp_announce") == 2 and host.sysctl("all", "arp_ignore") == 1
    host.remove_dev("eth2")
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "dr", VIP)
    assert rc == 0, err
    assert "net.ipv4.conf.eth2.arp_announce: the interface is gone: skipped" in out
    assert host.sysctl("all", "arp_ignore") == 0 and host.sysctl("eth1", "arp_announce") == 0
    assert not host.state.exists()


def test_tunnel_undo_with_interface_gone_forgets_decap(host, capsys):
    """Tunnel mode: eth1 gone, its sysctls and decap are skipped and reported, the rest undone."""
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "tunnel", "--dev", "eth1", "--from", DIRECTOR, VIP)
    assert rc == 0, err
    assert host.xdp["eth1"] == decap.PROGRAM
    host.remove_dev("eth1")
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "tunnel", VIP)
    assert rc == 0, err
    assert "interface eth1 does not exist: left as it is" in out
    assert host.sysctl("all", "rp_filter") == 1 and VIP not in host.lo
    assert not host.state.exists()


def test_decap_attach_refuses_another_program(host, capsys):
    """Defect: `lb decap attach` replaced any XDP program, the director's own included."""
    host.xdp["eth1"] = OTHER_XDP
    rc, out, err = lb(capsys, "decap", "attach", "eth1", "--from", DIRECTOR)
    assert rc == 1
    assert err == f"lb: decap: eth1 runs another XDP program ({OTHER_XDP}): not replaced\n"
    assert host.xdp["eth1"] == OTHER_XDP


def test_decap_attach_only_where_none(host, capsys):
    """Where no program is attached, attach asks the kernel for "only if none" (a program
    attached meanwhile is not replaced); over lb decap itself (new --from) it replaces."""
    assert lb(capsys, "decap", "attach", "eth1", "--from", DIRECTOR)[0] == 0
    assert lb(capsys, "decap", "attach", "eth1", "--from", "198.18.1.9")[0] == 0
    assert host.attach_flags == [True, False] and host.xdp["eth1"] == decap.PROGRAM


def test_decap_detach_leaves_another_program(host, capsys):
    """Defect: `lb decap detach` removed whatever program was on DEV and said "decap detached"."""
    host.xdp["eth1"] = OTHER_XDP
    rc, out, err = lb(capsys, "decap", "detach", "eth1")
    assert rc == 1 and out == ""
    assert err == f"lb: decap: eth1 runs another XDP program ({OTHER_XDP}), not lb decap: not removed\n"
    assert host.xdp["eth1"] == OTHER_XDP
    host.xdp["eth1"] = decap.PROGRAM
    assert lb(capsys, "decap", "detach", "eth1")[:2] == (0, "decap detached from eth1\n")
    assert host.xdp["eth1"] is None


def test_undo_leaves_another_program_in_decap_place(host, capsys):
    """undo reports, and leaves, a program that replaced lb decap since setup."""
    assert lb(capsys, "realserver", "setup", "--mode", "tunnel", "--dev", "eth1", "--from", DIRECTOR, VIP)[0] == 0
    host.xdp["eth1"] = OTHER_XDP
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "tunnel", VIP)
    assert rc == 0, err
    assert f"eth1 runs another XDP program ({OTHER_XDP}), not lb decap: not removed: left as it is" in out
    assert host.xdp["eth1"] == OTHER_XDP and not host.state.exists()


def test_tunnel_setup_refuses_before_changing_anything(host, capsys):
    """Defect: setup --mode tunnel added the VIP and set sysctls, then failed on DEV's program."""
    host.xdp["eth1"] = OTHER_XDP
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "tunnel", "--dev", "eth1", "--from", DIRECTOR, VIP)
    assert rc == 1
    assert f"eth1 runs another XDP program ({OTHER_XDP}): not replaced" in err
    assert out == "" and host.lo == set() and host.sysctl("all", "rp_filter") == 1
    assert host.xdp["eth1"] == OTHER_XDP and not host.state.exists()


def test_setup_without_arptables_refuses(host, capsys, monkeypatch):
    """--arp arptables where the command is missing: refused in words, before any change."""
    monkeypatch.setattr(realserver.shutil, "which", lambda name: None)
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "dr", "--arp", "arptables", VIP)
    assert rc == 1 and "apt-get install arptables" in err and "Traceback" not in err
    assert host.lo == set() and not host.state.exists()


@pytest.mark.parametrize("sources, want", [((), "--from DIRECTOR"), ((DIRECTOR, "198.18.1.9"),
                                          f"--from {DIRECTOR} --from 198.18.1.9")])
def test_check_suggests_a_tunnel_setup_that_runs(host, capsys, sources, want):
    """Defect: check's suggested setup command had no --from, so running it failed."""
    argv = ["--mode", "tunnel", "--dev", "eth1", *[x for a in sources for x in ("--from", a)], VIP]
    rc, out, err = lb(capsys, "realserver", "check", *argv)
    assert rc == 1
    line = out.splitlines()[-1]
    assert f"`lb realserver setup --mode tunnel --dev eth1 {want} {VIP}` makes them so" in line
    if sources:                              # the command as suggested does it
        cmd = line.split("`")[1].split()[1:]
        assert lb(capsys, *cmd)[0] == 0
        assert host.xdp["eth1"] == decap.PROGRAM and VIP in host.lo


def test_damaged_state_file_names_its_path(host, capsys):
    """Defect: `lb: realserver: Expecting property name ...` without the file."""
    host.state.write_text('{"vips": {\n  "198.18.0.20": {"added_address": true,}\n}}\n')
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "dr", VIP)
    assert rc == 1
    assert err.startswith(f"lb: realserver: {host.state}:2:")
    assert "damaged" in err and f"remove {host.state}" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ("check", "--mode", "dr"),
    ("check", "--mode", "tunnel", "--from", DIRECTOR),
    ("setup", "--mode", "dr"),
    ("setup", "--mode", "dr", "--arp", "arptables"),
])
def test_a_dev_that_is_no_interface_is_a_usage_error(host, capsys, argv):
    """--dev nosuchdev: one line naming it, exit 2 (a raw "[Errno 2] ... /proc/sys/net/ipv4/conf/
    nosuchdev/arp_ignore" and exit 1, the status of "points missing"), nothing printed or changed."""
    before = (set(host.lo), list(host.rules), dict(host.xdp))
    rc, out, err = lb(capsys, "realserver", *argv, "--dev", "nosuchdev", VIP)
    assert (rc, out, err) == (2, "", "lb: realserver: --dev: no such interface: nosuchdev\n")
    assert (host.lo, host.rules, host.xdp) == before and not host.state.exists()


@pytest.mark.parametrize("argv", [("attach", "eth1", "--from", DIRECTOR), ("detach", "eth1")])
def test_decap_without_root_says_it_needs_root(host, capsys, monkeypatch, argv):
    """`lb decap attach|detach` as a user who may not look at the program on DEV (its name:
    BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN): one line, exit 1 (an EPERM BpfError traceback)."""
    host.xdp["eth1"] = OTHER_XDP

    def prog_name(prog_id):
        raise bpfsys.BpfError(1, "Operation not permitted")
    monkeypatch.setattr(bpfsys, "prog_name", prog_name)
    rc, out, err = lb(capsys, "decap", *argv)
    assert (rc, out) == (1, "")
    assert err == ("lb: decap: eth1 has an XDP program (id 2); telling whether it is lb decap needs root "
                   "(CAP_SYS_ADMIN/CAP_BPF)\n")
    assert host.xdp["eth1"] == OTHER_XDP


def test_tunnel_setup_takes_a_new_director(host, capsys):
    """Defect: with lb decap already on DEV, setup and check said it was there whatever --from
    named: a director added (or moved) got "nothing to do", and its tunnels were dropped."""
    argv = ["--mode", "tunnel", "--dev", "eth1", "--from", DIRECTOR]
    assert lb(capsys, "realserver", "setup", *argv, VIP)[0] == 0
    assert host.decap_from["eth1"] == {ipaddress.ip_address(DIRECTOR)}
    two = [*argv, "--from", "198.18.1.3"]
    rc, out, err = lb(capsys, "realserver", "check", *two, VIP)
    assert rc == 1
    assert f"  missing  lb decap on eth1 from {DIRECTOR}, 198.18.1.3 to {VIP} (now from {DIRECTOR}): " in out
    rc, out, err = lb(capsys, "realserver", "setup", *two, VIP)
    assert rc == 0, err
    assert f"  lb decap attached to eth1 (native mode) for {RIP}" in out and "nothing to do" not in out
    assert host.decap_from["eth1"] == {ipaddress.ip_address(a) for a in (DIRECTOR, "198.18.1.3")}
    assert lb(capsys, "realserver", "setup", *two, VIP)[1].startswith("nothing to do\n")
    assert lb(capsys, "realserver", "check", *two, VIP)[0] == 0
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "tunnel", VIP)
    assert rc == 0 and "  lb decap detached from eth1\n" in out
    assert host.xdp["eth1"] is None and not host.state.exists()


def test_tunnel_setup_leaves_a_decap_it_did_not_attach_at_undo(host, capsys):
    """lb decap attached by hand, setup giving it the directors --from names: undo leaves it."""
    assert lb(capsys, "decap", "attach", "eth1", "--from", "198.18.1.9")[0] == 0
    assert lb(capsys, "realserver", "setup", "--mode", "tunnel", "--dev", "eth1", "--from", DIRECTOR, VIP)[0] == 0
    assert host.decap_from["eth1"] == {ipaddress.ip_address(DIRECTOR)}
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "tunnel", VIP)
    assert rc == 0 and "decap" not in out
    assert host.xdp["eth1"] == decap.PROGRAM


def test_tunnel_setup_restricts_decap_to_the_vips(host, capsys):
    """An lb decap that lets an inner packet in to any address (attached without --vip, or by an
    lb of before --vip): a forged director source could have the real server relay packets to
    any address.  check says so; setup attaches it again for the VIPs alone, from the directors
    it accepts now (no --from needed); a VIP added later is caught the same way."""
    rc, out, err = lb(capsys, "decap", "attach", "eth1", "--from", DIRECTOR)
    assert rc == 0 and out.endswith(f"from {DIRECTOR}, to any address (no --vip)\n"), err
    assert host.decap_vips["eth1"] == {decap.ANY}
    argv = ["--mode", "tunnel", "--dev", "eth1"]
    rc, out, err = lb(capsys, "realserver", "check", *argv, VIP)
    assert rc == 1
    assert f"  missing  lb decap on eth1 to {VIP} (now to any address): " in out
    assert f"fix: lb decap attach eth1 --from {DIRECTOR} --vip {VIP}\n" in out
    rc, out, err = lb(capsys, "realserver", "setup", *argv, VIP)
    assert rc == 0, err
    assert host.decap_vips["eth1"] == {ipaddress.ip_address(VIP)}
    assert host.decap_from["eth1"] == {ipaddress.ip_address(DIRECTOR)}
    assert lb(capsys, "realserver", "check", *argv, VIP)[0] == 0
    rc, out, err = lb(capsys, "realserver", "setup", *argv, VIP, "198.18.0.11")
    assert rc == 0, err
    assert host.decap_vips["eth1"] == {ipaddress.ip_address(a) for a in (VIP, "198.18.0.11")}
    rc, out, err = lb(capsys, "decap", "attach", "eth1", "--from", DIRECTOR, "--vip", VIP, "--vip", VIP)
    assert rc == 0 and out.endswith(f"from {DIRECTOR}, to {VIP}\n") and host.decap_vips["eth1"] == {ipaddress.ip_address(VIP)}


@pytest.mark.parametrize("plen", [24, 8])
def test_vip_on_lo_under_a_network_prefix_is_reported(host, capsys, plen):
    """Defect: the VIP on lo as /24 (or the /8 of `ifconfig lo:0 10.x.y.z` without a netmask)
    makes the whole network local to the real server -- its replies to clients there go to
    itself --; check said only that the /32 was missing, and setup added it beside the /24."""
    host.lo_wide[VIP] = [plen]
    net = ipaddress.ip_interface(f"{VIP}/{plen}").network
    rc, out, err = lb(capsys, "realserver", "check", "--mode", "dr", VIP)
    assert rc == 1
    assert f"  missing  {VIP}/{plen} on lo: every address of {net} is taken as this host's own" in out
    assert f"           fix: ip addr del {VIP}/{plen} dev lo\n" in out
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "dr", VIP)
    assert (rc, out) == (1, "")
    assert err == (f"lb: realserver: {VIP}/{plen} on lo makes every address of {net} this host's own: "
                   f"remove it (ip addr del {VIP}/{plen} dev lo) and run setup again\n")
    assert host.lo == set() and host.sysctl("all", "arp_ignore") == 0 and not host.state.exists()
    del host.lo_wide[VIP]                      # removed by hand: setup goes ahead
    assert lb(capsys, "realserver", "setup", "--mode", "dr", VIP)[0] == 0 and VIP in host.lo


def test_lo_wider_finds_the_vip_under_a_network_prefix():
    """lo_wider on the real lo (the suite's own network namespace): the prefixes wider than a
    host's under which the VIP is there, none for the /32 and /128 setup adds."""
    from pyroute2 import IPRoute

    vip6 = "2001:2::20"
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for a, plen in ((VIP, 24), (VIP, 32), (vip6, 64)):
            ipr.addr("add", index=lo, address=a, prefixlen=plen)
    try:
        assert realserver.lo_wider(ipaddress.ip_address(VIP)) == [24]
        assert realserver.lo_wider(ipaddress.ip_address(vip6)) == [64]
        assert realserver.lo_wider(ipaddress.ip_address("198.18.0.21")) == []
    finally:
        with IPRoute() as ipr:
            for a, plen in ((VIP, 24), (VIP, 32), (vip6, 64)):
                ipr.addr("del", index=lo, address=a, prefixlen=plen)


@pytest.mark.parametrize("arp", ["sysctl", "arptables"])
def test_the_vip_is_on_lo_only_while_arp_for_it_is_off(host, capsys, monkeypatch, arp):
    """Defect: setup put the VIP on lo before setting arp_ignore/arp_announce (or adding the
    arptables rules), and undo deleted the rules before taking the VIP off: in between, the real
    server answered ARP for the VIP, and a router caching that answer sent the clients' traffic
    to it instead of the director.  What ARP sees each time the VIP comes and goes:"""
    def arp_off():
        if arp == "sysctl":
            return host.sysctl("all", "arp_ignore") == 1 and host.sysctl("eth1", "arp_announce") == 2
        return len(host.rules) == 2
    seen = []
    take, release = addresses.take, addresses.release
    monkeypatch.setattr(addresses, "take", lambda addrs: (seen.append(("add", arp_off())), take(addrs))[1])
    monkeypatch.setattr(addresses, "release", lambda addrs: (seen.append(("del", arp_off())), release(addrs))[1])
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "dr", "--arp", arp, VIP)
    assert rc == 0, err
    rc, out, err = lb(capsys, "realserver", "setup", "--undo", "--mode", "dr", VIP)
    assert rc == 0, err
    assert seen == [("add", True), ("del", True)]
    assert VIP not in host.lo and host.rules == [] and host.sysctl("all", "arp_ignore") == 0


def test_tunnel_setup_on_a_dev_without_address_refuses_before_changing_anything(host, capsys, monkeypatch):
    """Defect: decap found DEV without an address only once the VIP was on lo and the sysctls
    changed, and said "give --address", an option `lb realserver` does not have."""
    monkeypatch.setattr(decap, "local_addresses", lambda dev: [])
    rc, out, err = lb(capsys, "realserver", "setup", "--mode", "tunnel", "--dev", "eth1", "--from", DIRECTOR, VIP)
    assert (rc, out) == (1, "")
    assert err == ("lb: realserver: eth1 has no address to receive tunnels on: attach lb decap yourself "
                   "(lb decap attach eth1 --address ADDR --from DIRECTOR), then run setup again\n")
    assert host.lo == set() and host.sysctl("all", "rp_filter") == 1 and not host.state.exists()
