"""Announcing addresses a director has just taken (Piranha's send_arp): gratuitous ARP for IPv4,
unsolicited neighbour advertisement for IPv6, built and sent with scapy on the owning device.

A gratuitous ARP is an ARP request with sender IP = target IP; Linux neighbours update an existing
entry from it at once (it overrides the locktime), so clients and real servers switch to the new
active director's MAC.  scapy is imported once, ahead of any takeover (``warm_up``).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import time

log = logging.getLogger("lb.ha")

# the burst without [ha] (its garp_count and garp_interval defaults)
COUNT = 3
INTERVAL = 0.1

_scapy = None


def warm_up():
    """Import the parts of scapy an announcement needs, so that a takeover does not wait for
    them.  Not scapy.all, which loads every protocol it knows: 1.2 s here against 0.4, and in
    the IPVS test VM (emulated, a 9p root) 17-21 s against 7, which under load held READY
    back past two minutes."""
    global _scapy
    if _scapy is None:
        import types

        from scapy.config import conf
        from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
        from scapy.layers.l2 import ARP, Ether

        conf.verb = 0
        # conf.L2socket: the PF_PACKET socket class scapy.arch (imported by the layers) sets
        _scapy = types.SimpleNamespace(conf=conf, Ether=Ether, ARP=ARP, IPv6=IPv6,
                                       ICMPv6ND_NA=ICMPv6ND_NA, ICMPv6NDOptDstLLAddr=ICMPv6NDOptDstLLAddr)
    return _scapy


def warm_up_in_background() -> None:
    """warm_up in a thread of its own, so that the import runs beside other start-up work (the
    data plane's load) instead of before the first announcement; a failure shows at that
    announcement, which imports again."""
    import threading

    def warm():
        try:
            warm_up()
        except Exception as e:     # noqa: BLE001 - the announcement itself will say
            log.debug("importing scapy ahead: %s", e)
    threading.Thread(target=warm, name="announce-warm-up", daemon=True).start()


def _mac(ifname: str) -> str:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()[:15]))  # SIOCGIFHWADDR
    return ":".join(f"{b:02x}" for b in info[18:24])


_IPV6_CONF = "/proc/sys/net/ipv6/conf"
_GONE = (errno.ENETDOWN, errno.ENXIO, errno.ENODEV)     # the device refuses every frame: no more tries


def _router(ifname: str) -> int:
    """The R flag of our neighbour advertisements on ifname: its IPv6 forwarding setting, read
    at each announcement, as the kernel's own advertisements carry it (ndisc_recv_ns; keepalived's
    vrrp_ndisc the same).  A flag that flips between theirs and ours makes neighbours drop the
    director from their default router lists (RFC 4861 7.2.5).  0 when it cannot be read."""
    try:
        with open(f"{_IPV6_CONF}/{ifname}/forwarding") as f:
            return 1 if int(f.read().strip()) else 0
    except (OSError, ValueError):
        return 0


def frames(ifname: str, address, mac: str | None = None) -> list:
    """The frames announcing ``address`` (an ip address or interface) on ``ifname``."""
    sa = warm_up()
    mac = mac or _mac(ifname)
    ip = ipaddress.ip_interface(str(address)).ip
    if ip.version == 4:
        return [sa.Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") /
                sa.ARP(op=1, hwsrc=mac, psrc=str(ip), hwdst="00:00:00:00:00:00", pdst=str(ip))]
    return [sa.Ether(src=mac, dst="33:33:00:00:00:01") /
            sa.IPv6(src=str(ip), dst="ff02::1", hlim=255) /
            sa.ICMPv6ND_NA(tgt=str(ip), R=_router(ifname), S=0, O=1) /
            sa.ICMPv6NDOptDstLLAddr(lladdr=mac)]


def send_arp(ifname: str, address, count: int = 1, interval: float = 0.0) -> int:
    """`lb send-arp ADDR DEV` (Piranha's send_arp): announce one address on one device; returns
    the frames sent (0: nothing could be sent, the reason logged)."""
    from .addresses import OwnedAddress

    return announce([OwnedAddress(ifname, ipaddress.ip_interface(str(address)))], count, interval)


def announce(owned, count: int = 1, interval: float = 0.0, first_sent=None, going=None) -> int:
    """Send ``count`` rounds of announcements for every OwnedAddress; returns frames sent.
    ``first_sent()`` is called once the first round is out (or nothing could be sent), so a
    caller can go on while the repeats follow.  ``going()``, asked before each round, ends the
    burst when false (the director stepped down meanwhile).  Errors are logged, never raised
    (an announcement is best effort)."""
    called = False

    def first() -> None:
        nonlocal called
        if first_sent is not None and not called:
            called = True
            first_sent()
    try:
        return _announce(owned, count, interval, first, going)
    finally:
        first()


PAUSE_STEP = 0.1    # a burst's pause asks going() this often


def _pause(seconds: float, going) -> None:
    """A burst's garp_interval, cut short once going() is false: the burst runs in a worker
    thread of the event loop's executor, which a step-down should give back at once -- with
    garp_interval = 10 and garp_count = 10, each takeover held a thread 90 s after a step-down,
    and a few role changes filled the executor the next takeover's own steps wait for."""
    left = seconds
    while left > 0 and (going is None or going()):
        step = min(left, PAUSE_STEP)
        time.sleep(step)
        left -= step


def _announce(owned, count: int, interval: float, first_sent, going=None) -> int:
    sa = warm_up()
    by_dev: dict[str, list] = {}
    macs: dict[str, str | OSError] = {}
    for a in owned:
        if a.ifname not in macs:        # one look (and one line when it fails) per device
            try:
                macs[a.ifname] = _mac(a.ifname)
            except OSError as e:
                macs[a.ifname] = e
                n = sum(1 for b in owned if b.ifname == a.ifname)
                log.warning("cannot announce %d address%s on %s: %s", n, "" if n == 1 else "es", a.ifname, e)
        if isinstance(macs[a.ifname], OSError):
            continue
        by_dev.setdefault(a.ifname, []).extend(frames(a.ifname, a.address, macs[a.ifname]))
    sent = 0
    socks = {}
    failed: dict[str, tuple[int, OSError]] = {}     # device -> (frames not sent, the last error)
    try:
        for dev in by_dev:
            try:
                # send-only: protocol 0 receives nothing, and not scapy's default promiscuous
                # mode (each announcement, every garp_refresh, would toggle the VIP's interface
                # in and out of it -- a kernel log line each, foreign unicast let in meanwhile)
                socks[dev] = sa.conf.L2socket(iface=dev, type=0, promisc=False, nofilter=1)
            except OSError as e:
                log.warning("cannot open %s to announce: %s", dev, e)
        for i in range(max(1, count)):
            if i:
                first_sent()
                _pause(interval, going)
            if going is not None and not going():
                break               # stepped down: no more claims for what the peer holds now
            for dev, fs in by_dev.items():
                s = socks.get(dev)
                if s is None:
                    continue
                for j, f in enumerate(fs):
                    try:
                        s.send(f)
                        sent += 1
                    except OSError as e:
                        # one line per device and call, said at the end: a link that is down
                        # refuses every frame (and gets no more tries), and a thousand VIPs were
                        # a thousand lines at each garp_refresh
                        n, _ = failed.get(dev, (0, e))
                        failed[dev] = (n + 1, e)
                        if e.errno in _GONE:
                            socks.pop(dev).close()
                            failed[dev] = (n + len(fs) - j, e)
                            break
    finally:
        for s in socks.values():
            s.close()
        for dev, (n, e) in failed.items():
            log.warning("announce on %s: %d frame%s not sent: %s", dev, n, "" if n == 1 else "s", e)
    return sent
