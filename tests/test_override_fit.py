"""An operator override the data plane cannot hold is refused, and changes nothing.

web has a sorry server and tables.reals_per_service (4) real servers, each holding a connection.
Quiescing the last usable one sends web to its sorry server while the four drain: five slots,
which the table does not have.  That `lb quiesce` was recorded (and kept in the overrides file)
although the table could not take it, and the whole table stopped fitting: every later change
-- another override, a health check taking a dead server out -- failed with it, at every turn
of the loop, until the operator undid it.  On a loaded XDP data plane (fake next hops) with a
fake address layer, through the daemon's control socket."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from lb import config as lbconfig
from lb import control
from lb import engine as lbengine
from lb.dataplane.xdp import Sizes
from lb.engine import Engine
from lb.ha import addresses
from packets_util import connect, lb_list, loaded_dataplane
from test_override import drive
from test_reload_rollback import PER_SERVICE, fake_addresses, write  # noqa: F401  (fixture)


def test_an_override_the_table_cannot_hold_is_refused_and_changes_nothing(tmp_path, monkeypatch, fake_addresses):
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    with loaded_dataplane("ovrfit", Sizes(16, 64, PER_SERVICE, 4096)) as dp:
        path = write(tmp_path / "lb.toml", dp.instance)
        path.write_text(path.read_text().replace('scheduler = "rr"', 'scheduler = "rr"\nsorry_server = "198.18.1.99"'))
        eng = Engine(lbconfig.load(path))
        eng.dp.close()
        eng.dp = dp
        eng._overrides_file = lbengine.overrides_file(dp.instance)
        eng.owned = addresses.wanted_addresses(eng.cfg)
        addresses.take(eng.owned)
        eng.apply_health()
        assert sorted(connect(dp, sport=40000 + i) for i in range(4)) == [f"198.18.1.{n}" for n in (11, 12, 13, 14)]

        async def body(call):
            def weight(server, w):
                return call(lambda: control.request(dp.instance, "weight", service="web", server=server, weight=w))
            for n in (11, 12, 13):
                assert (await weight(f"198.18.1.{n}", 0))["ok"]
            before = lb_list(dp)
            reply = await weight("198.18.1.14", 0)
            assert reply["ok"] is False, reply
            assert "nothing changed" in reply["error"] and "tables.reals_per_service = 4" in reply["error"], reply
            assert lb_list(dp) == before and "198.18.1.99" not in before
            status = (await call(lambda: control.request(dp.instance, "status")))["status"]
            rs14 = next(r for r in status["services"][0]["real_servers"] if r["address"] == "198.18.1.14")
            assert (rs14["override"], rs14["weight"]) == (None, 1)
            kept = json.loads(Path(eng._overrides_file).read_text())
            assert sorted(e["server"][3] for e in kept) == ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
            # the table still takes the next change
            reply = await weight("198.18.1.11", None)
            assert reply["ok"], reply
            return lb_list(dp)

        listing = drive(eng, str(tmp_path), body)
        line = next(ln for ln in listing.splitlines() if "198.18.1.11:80" in ln)
        assert line.split()[3] == "1", listing        # back at its configured weight
