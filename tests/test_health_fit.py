"""A health verdict the data plane cannot hold keeps no other service's verdicts out of the table.

web has a sorry server, quiesces its dead servers and has tables.reals_per_service (4) real
servers, each holding a connection.  The last of them dying sends web to its sorry server while
the four drain at weight 0: five slots, which the table does not have.  That verdict cannot be
refused (the server is dead), and the whole table was applied or nothing: every later health
change -- cache's server dying -- failed with it, at every turn of the loop, and cache's dead
server kept taking new connections until one of web's came back.  Now the services whose change
fits are applied; web's waits (TableDoesNotFit names it) and is applied once it fits.  On a
loaded XDP data plane (fake next hops) with a fake address layer."""
from __future__ import annotations

import asyncio
import contextlib
import functools

import pytest

from lb import config as lbconfig
from lb import control
from lb import engine as lbengine
from lb.dataplane.errors import TableDoesNotFit
from lb.dataplane.xdp import Sizes
from lb.engine import Engine, real_key
from lb.ha import addresses
from packets_util import connect, lb_list, loaded_dataplane
from test_override import drive
import test_reload_rollback
from test_reload_rollback import PER_SERVICE, write

fake_addresses = test_reload_rollback.fake_addresses      # the fixture


def _key(eng, service, last_octet):
    vs = next(v for v in eng.cfg.virtual_servers if v.name == service)
    return real_key(vs, next(rs for rs in vs.real_servers if str(rs.address) == f"198.18.1.{last_octet}"))


def _rows(listing: str) -> dict:
    """{real server address: weight} of `lb list -n`'s real server lines."""
    out = {}
    for ln in listing.splitlines():
        parts = ln.split()
        if len(parts) > 3 and parts[0] == "->" and parts[1][0].isdigit():
            out[parts[1].rsplit(":", 1)[0]] = int(parts[3])
    return out


def _write(path, instance, **kw):
    """test_reload_rollback's config; web with a sorry server, quiescing its dead servers."""
    text = write(path, instance, **kw).read_text()
    text = text.replace('scheduler = "rr"', 'scheduler = "rr"\nsorry_server = "198.18.1.99"')
    path.write_text(text.replace('kind = "none"', 'kind = "none"\n  quiesce = true', 1))
    return path


@contextlib.contextmanager
def _engine(tmp_path, name):
    """An engine running _write's config on a loaded XDP data plane named ``name``, its
    addresses taken and its table applied."""
    with loaded_dataplane(name, Sizes(16, 64, PER_SERVICE, 4096)) as dp:
        eng = Engine(lbconfig.load(_write(tmp_path / "lb.toml", dp.instance)))
        eng.dp.close()
        eng.dp = dp
        eng.owned = addresses.wanted_addresses(eng.cfg)
        addresses.take(eng.owned)
        eng.apply_health()
        yield eng, dp


def test_a_health_verdict_that_does_not_fit_holds_back_only_its_own_service(tmp_path, fake_addresses, monkeypatch):
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    with _engine(tmp_path, "hfit") as (eng, dp):
        assert sorted(connect(dp, sport=40000 + i) for i in range(4)) == [f"198.18.1.{n}" for n in (11, 12, 13, 14)]
        for n in (11, 12, 13):
            eng._health_changed(_key(eng, "web", n), False, "connection refused")
        eng.apply_health()
        assert {a: w for a, w in _rows(lb_list(dp)).items() if a.endswith((".11", ".12", ".13", ".14"))} == \
            {"198.18.1.11": 0, "198.18.1.12": 0, "198.18.1.13": 0, "198.18.1.14": 1}

        # web's last server dies: sorry server + 4 draining > 4 slots
        eng._health_changed(_key(eng, "web", 14), False, "connection refused")
        with pytest.raises(TableDoesNotFit):
            eng.apply_health()
        # ... and then cache's 198.18.1.21: applied all the same
        eng._health_changed(_key(eng, "cache", 21), False, "connection refused")
        with pytest.raises(TableDoesNotFit) as err:
            eng.apply_health()
        assert "web" in str(err.value) and "tables.reals_per_service = 4" in str(err.value)
        rows = _rows(lb_list(dp))
        assert "198.18.1.21" not in rows and rows["198.18.1.22"] == 1, lb_list(dp)
        assert rows["198.18.1.14"] == 1 and "198.18.1.99" not in rows    # web: as it was
        assert eng.on_sorry == set()
        # the run loop's next turns: nothing new fits, nothing is written, web is still named
        writes = dp.txn.writes
        with pytest.raises(TableDoesNotFit, match="virtual service.s. web does not fit"):
            eng.apply_health()
        assert dp.txn.writes == writes and _rows(lb_list(dp)) == rows

        # a reload of another service's weight: the waiting change of web (whose config it leaves
        # as it is) does not refuse it (it did: "the data plane cannot hold the new table")
        _write(tmp_path / "lb.toml", dp.instance, cache_weight=2)
        eng._dirty = False
        reply = eng._reload_reply()
        assert reply["ok"] is True, reply
        assert "virtual service(s) web still does not fit the data plane and waits" in reply["message"], reply
        rows = _rows(lb_list(dp))
        assert rows["198.18.1.22"] == 2 and "198.18.1.21" not in rows and rows["198.18.1.14"] == 1, lb_list(dp)
        assert eng._dirty is True           # the run loop tries web's change again
        # a reload whose own change does not fit is still refused
        _write(tmp_path / "lb.toml", dp.instance, web=(11, 12, 13, 14, 15), cache_weight=2)
        reply = eng._reload_reply()
        assert reply["ok"] is False and "nothing changed" in reply["error"], reply
        _write(tmp_path / "lb.toml", dp.instance, cache_weight=2)

        # `lb weight` on cache's server: applied (it was refused, "the data plane cannot hold the
        # table with this override", for web's waiting change); one on web's is still refused
        reply = asyncio.run(eng.control({"cmd": "weight", "service": "cache", "server": "198.18.1.22", "weight": 3}))
        assert reply["ok"] is True, reply
        assert _rows(lb_list(dp))["198.18.1.22"] == 3, lb_list(dp)
        reply = asyncio.run(eng.control({"cmd": "weight", "service": "web", "server": "198.18.1.12", "weight": 5}))
        assert reply["ok"] is False and "nothing changed" in reply["error"], reply

        # web's change fits once a server of it is back: applied, with cache's state kept
        eng._health_changed(_key(eng, "web", 11), True, "connected")
        eng.apply_health()
        rows = _rows(lb_list(dp))
        assert rows["198.18.1.11"] == 1 and rows["198.18.1.14"] == 0 and "198.18.1.21" not in rows, lb_list(dp)
        assert rows["198.18.1.22"] == 3


def test_lb_weight_through_the_run_loop_while_a_change_waits(tmp_path, fake_addresses, monkeypatch):
    """The same wait, with the daemon's run loop and control socket: `lb weight` on cache's
    server is applied and its caller told so -- not "the override is recorded but applying the
    table failed" for web's change, which keeps waiting."""
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(control, "request", functools.partial(control.request, run_dir=str(tmp_path)))
    with _engine(tmp_path, "hfitrun") as (eng, dp):
        for i in range(4):
            connect(dp, sport=40000 + i)
        for n in (11, 12, 13, 14):
            eng._health_changed(_key(eng, "web", n), False, "connection refused")

        async def body(call):
            reply = await call(lambda: control.request(dp.instance, "weight", service="cache",
                                                       server="198.18.1.22", weight=3))
            return reply, lb_list(dp), dict(eng.housekeeping_errors)

        reply, listing, errors = drive(eng, str(tmp_path), body)
        assert reply["ok"] is True, reply
        rows = _rows(listing)
        assert rows["198.18.1.22"] == 3 and rows["198.18.1.14"] == 1 and "198.18.1.99" not in rows, listing
        assert errors.get("apply", 0) >= 1          # web's change: tried at each turn, counted


def test_lb_status_says_which_change_waits_and_the_weights_the_data_plane_keeps(tmp_path, fake_addresses,
                                                                                 monkeypatch):
    """While web's verdict waits, `lb status` showed web's last server down at weight 0 (the
    wanted table) though the data plane still forwarded to it at weight 1, and nothing on it
    said a change waits: only the log did.  Now the service says WAITING and why, and each
    server the data plane holds otherwise says what the data plane has; both go once it fits."""
    from lb.cli.main import _status_lines
    monkeypatch.setattr(lbengine, "RUN_DIR", str(tmp_path))
    with _engine(tmp_path, "hfits") as (eng, dp):
        assert sorted(connect(dp, sport=40000 + i) for i in range(4)) == [f"198.18.1.{n}" for n in (11, 12, 13, 14)]
        for n in (11, 12, 13):
            eng._health_changed(_key(eng, "web", n), False, "connection refused")
        eng.apply_health()
        st = eng.status(counters=False)
        assert all(s["waiting"] is None for s in st["services"])
        assert not any("dataplane_weight" in r for s in st["services"] for r in s["real_servers"])
        assert not any("WAITING" in ln or "waiting:" in ln for ln in _status_lines(st))

        eng._health_changed(_key(eng, "web", 14), False, "connection refused")   # does not fit
        with pytest.raises(TableDoesNotFit):
            eng.apply_health()
        st = eng.status(counters=False)
        web = next(s for s in st["services"] if s["name"] == "web")
        cache = next(s for s in st["services"] if s["name"] == "cache")
        assert web["waiting"].startswith("does not fit the data plane: ") and "reals_per_service" in web["waiting"]
        assert cache["waiting"] is None
        r14 = next(r for r in web["real_servers"] if r["address"] == "198.18.1.14")
        assert (r14["weight"], r14["weight_source"], r14["dataplane_weight"]) == (0, "down_quiesced", 1)
        lines = _status_lines(st)
        i = next(i for i, ln in enumerate(lines) if ln.startswith("  -> 198.18.1.14"))
        assert any(ln.startswith("  WAITING: a health, weight or override change does not fit the data plane")
                   for ln in lines)
        assert "waiting: the data plane still has weight 1" in "\n".join(lines[i:i + 4])
        assert sum("waiting:" in ln for ln in lines) == 1           # web's others: as in the data plane

        eng._health_changed(_key(eng, "web", 11), True, "connected")               # fits now
        eng.apply_health()
        st = eng.status(counters=False)
        assert all(s["waiting"] is None for s in st["services"])
        assert not any("WAITING" in ln or "waiting:" in ln for ln in _status_lines(st))
