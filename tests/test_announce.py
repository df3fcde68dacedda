"""lb.ha.announce's frames, built and looked at; nothing is sent."""
from __future__ import annotations

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
