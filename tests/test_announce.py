"""lb.ha.announce's frames, built and looked at; nothing is sent."""
from __future__ import annotations

import errno
import os

import pytest

from lb.ha import announce

MAC = "02:00:00:00:00:01"


@pytest.mark.parametrize("forwarding, r", [("1\n", 1), ("0\n", 0), (None, 0)],
                         ids=["forwarding", "not-forwarding", "unreadable"])
def test_an_unsolicited_neighbour_advertisement_says_router_as_the_kernels_own_do(tmp_path, monkeypatch,
                                                                                   forwarding, r):
    """The kernel's solicited advertisements carry R = the interface's IPv6 forwarding setting; ours
    carry the same, read at each announcement (a flag flipping between the two makes neighbours
    drop the director from their default router lists, RFC 4861 7.2.5); 0 when it cannot be read."""
    monkeypatch.setattr(announce, "_IPV6_CONF", str(tmp_path), raising=False)
    if forwarding is not None:
        (tmp_path / "pub0").mkdir()
        (tmp_path / "pub0" / "forwarding").write_text(forwarding)
    sa = announce.warm_up()
    (na,) = announce.frames("pub0", "2001:2::10/128", mac=MAC)
    adv = na[sa.ICMPv6ND_NA]
    assert (adv.tgt, adv.R, adv.S, adv.O) == ("2001:2::10", r, 0, 1)
    assert na[sa.ICMPv6NDOptDstLLAddr].lladdr == MAC

    if forwarding is not None:           # read at each announcement, not once
        (tmp_path / "pub0" / "forwarding").write_text("0\n" if r else "1\n")
        (na,) = announce.frames("pub0", "2001:2::10/128", mac=MAC)
        assert na[sa.ICMPv6ND_NA].R == 1 - r


def test_a_takeover_burst_stops_when_the_director_steps_down(monkeypatch, caplog):
    """[ha] garp_count = 5: the takeover's burst of gratuitous ARPs goes on round after round
    only while the director is active; stepped down during the first interval (the peer was
    active after all), it sends no more claims for an address the peer now holds.  (The burst
    sent all its rounds whatever the role.)"""
    import ipaddress
    import types

    from lb import engine as lbengine
    from lb.ha.addresses import OwnedAddress

    sent = []

    class Socket:                         # the send-only packet socket: what goes on the wire
        def __init__(self, **_kw):
            pass

        def send(self, frame):
            sent.append(frame)

        def close(self):
            pass
    sa = announce.warm_up()
    monkeypatch.setattr(sa.conf, "L2socket", Socket)
    monkeypatch.setattr(announce, "frames", lambda ifname, address, mac=None: [f"garp {address} on {ifname}"])
    monkeypatch.setattr(announce, "_mac", lambda ifname: MAC)
    ha = types.SimpleNamespace(garp_count=5, garp_interval=0.5)
    eng = types.SimpleNamespace(cfg=types.SimpleNamespace(ha=ha), active=True, _stop=None,
                                owned=[OwnedAddress("pub0", ipaddress.ip_interface("198.18.0.10/32"))])
    monkeypatch.setattr(announce.time, "sleep", lambda s: None)
    caplog.set_level("INFO", "lb")
    lbengine.Engine.announce(eng, True)
    assert sent == ["garp 198.18.0.10/32 on pub0"] * 5          # active all along: the whole burst
    sent.clear()

    def step_down(s):                     # the peer's stand-down lands during the first interval
        eng.active = False
    monkeypatch.setattr(announce.time, "sleep", step_down)
    lbengine.Engine.announce(eng, True)
    assert sent == ["garp 198.18.0.10/32 on pub0"]
    assert "announced 1 addresses (1 frames)" in caplog.text


def test_a_step_down_during_a_long_interval_ends_the_burst_at_once(monkeypatch):
    """garp_interval = 30: the burst's worker thread used to sleep the whole 30 s before it asked
    whether the director was still active, holding one of the event loop's few executor threads
    long after a step-down (a few role changes filled them).  It now asks every PAUSE_STEP."""
    import ipaddress

    from lb.ha.addresses import OwnedAddress

    class Socket:
        def __init__(self, **_kw):
            pass

        def send(self, frame):
            pass

        def close(self):
            pass
    sa = announce.warm_up()
    monkeypatch.setattr(sa.conf, "L2socket", Socket)
    monkeypatch.setattr(announce, "frames", lambda ifname, address, mac=None: ["garp"])
    monkeypatch.setattr(announce, "_mac", lambda ifname: MAC)
    slept, active = [], [True]

    def sleep(s):                         # the step-down lands during the first pause
        slept.append(s)
        active[0] = False
    monkeypatch.setattr(announce.time, "sleep", sleep)
    owned = [OwnedAddress("pub0", ipaddress.ip_interface("198.18.0.10/32"))]
    assert announce.announce(owned, count=5, interval=30.0, going=lambda: active[0]) == 1
    assert sum(slept) <= 0.1                   # one PAUSE_STEP, not 30 s


@pytest.mark.parametrize("err, tries", [(errno.ENETDOWN, 1), (errno.ENOBUFS, 3 * 200)], ids=["down", "queue-full"])
def test_a_device_that_refuses_the_frames_is_one_line_per_announcement(monkeypatch, caplog, err, tries):
    """200 VIPs on a link that is down (or whose queue is full): one round used to log a warning
    per frame -- 200 lines at every garp_refresh, 600 for a takeover's burst.  Now one line per
    device and announcement saying how many frames were not sent; a link that is down gets no
    more tries in that announcement, a full queue each frame still.  The other device's
    addresses go out all the same, and a device that does not exist is one line too."""
    import ipaddress

    from lb.ha.addresses import OwnedAddress

    tried = []

    class Socket:
        def __init__(self, iface, **_kw):
            self.iface = iface

        def send(self, frame):
            tried.append((self.iface, frame))
            if self.iface == "pub0":
                raise OSError(err, os.strerror(err))

        def close(self):
            pass
    sa = announce.warm_up()
    monkeypatch.setattr(sa.conf, "L2socket", Socket)
    monkeypatch.setattr(announce, "frames",
                        lambda ifname, address, mac=None: [f"garp {address} from {mac or announce._mac(ifname)}"])

    def mac(ifname):
        if ifname == "gone0":
            raise OSError(errno.ENODEV, "No such device")
        return MAC
    monkeypatch.setattr(announce, "_mac", mac)
    monkeypatch.setattr(announce.time, "sleep", lambda s: None)
    owned = [OwnedAddress(dev, ipaddress.ip_interface(f"198.18.{n}.{i}/32"))
             for n, dev in enumerate(("pub0", "priv0", "gone0")) for i in range(1, 201)]
    caplog.set_level("WARNING", "lb")
    sent = announce.announce(owned, count=3)
    assert [r.getMessage() for r in caplog.records] == [
        "cannot announce 200 addresses on gone0: [Errno 19] No such device",
        f"announce on pub0: {200 if err == errno.ENETDOWN else 600} frames not sent: [Errno {err}] {os.strerror(err)}"]
    assert sent == 3 * 200                                          # priv0's, each round
    assert sum(1 for dev, _ in tried if dev == "pub0") == tries


@pytest.mark.parametrize("refresh, ok", [(0, True), (1, True), (10.5, True), (0.5, False), (0.001, False)])
def test_garp_refresh_is_never_or_at_least_a_second(tmp_path, refresh, ok):
    """garp_refresh = 0.001 was taken: one broadcast frame per address a millisecond, the
    announcements back to back for as long as the director is active (0.5 meant for
    garp_interval, the same).  Now 0 (never) or at least 1 second, as keepalived's."""
    from lb.config import ConfigError, load

    text = open("configs/example.toml").read()
    assert "garp_refresh = 10 " in text
    path = tmp_path / "lb.toml"
    path.write_text(text.replace("garp_refresh = 10 ", f"garp_refresh = {refresh} ", 1))
    if ok:
        assert load(str(path)).ha.garp_refresh == refresh
        return
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert f"ha.garp_refresh: must be 0 (never) or at least 1 second, got {refresh:g}" in str(e.value)
