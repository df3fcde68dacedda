"""[ha] preempt_delay (keepalived's): a returning primary with preempt waited no time at all --
it took the addresses back about a keepalive after its start, before the active backup's
connection table had been synced to it and before its own health checks had run (established
connections broke; a primary crash-looping moved the addresses at each start).  With
preempt_delay it stays backup that long, hearing the active peer, first."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from lb.config import keepalived, loads
from lb.ha import heartbeat as hb
from lb.ha.pulse import ACTIVE, BACKUP, RoleMachine
from test_ha_unit import Pair

DIR = Path(__file__).parent / "keepalived"


def roles_of(acts):
    return [a[1] for a in acts if a[0] == "role"]


def test_a_returning_primary_waits_preempt_delay_as_backup():
    q = RoleMachine(True, 0.2, 1.0, preempt=True, now=10.0, preempt_delay=30.0)
    assert roles_of(q.heard(10.1, ACTIVE)) == [BACKUP]
    assert q.preempt_at(10.1) == 40.1
    for i in range(1, 150):                           # the active backup heard all along
        assert roles_of(q.heard(10.1 + i * 0.2, ACTIVE)) == [], i
    assert q.state == BACKUP
    acts = q.heard(40.2, ACTIVE)
    assert roles_of(acts) == [ACTIVE] and ("standdown",) in acts
    # default 0: today's behaviour, at the next tick
    r = RoleMachine(True, 0.2, 1.0, preempt=True, now=10.0)
    assert roles_of(r.heard(10.1, ACTIVE)) == [BACKUP]
    assert roles_of(r.tick(10.2)) == [ACTIVE]


def test_the_peer_dying_or_leaving_during_the_delay_is_a_takeover_without_waiting():
    q = RoleMachine(True, 0.2, 1.0, preempt=True, now=0.0, preempt_delay=300.0)
    q.heard(0.1, ACTIVE)
    q.heard(2.0, ACTIVE)
    assert q.state == BACKUP
    assert roles_of(q.tick(3.0)) == [ACTIVE]          # silent for a deadtime: dead
    q = RoleMachine(True, 0.2, 1.0, preempt=True, now=0.0, preempt_delay=300.0)
    q.heard(0.1, ACTIVE)
    assert roles_of(q.heard(0.5, hb.S_LEAVING)) == [ACTIVE]
    assert q.preempt_at(0.5) is None


def test_pulse_status_says_when_the_primary_takes_back(tmp_path):
    """The pair end to end: the backup active alone, the primary (preempt, preempt_delay 5 s)
    starts: backup for 5 s, `lb status` saying when it takes back, then active; the backup steps
    down on its stand-down."""
    pair = Pair(tmp_path)                             # keepalive 0.2 s, deadtime 1 s
    pair.ha = dataclasses.replace(pair.ha, preempt=True, preempt_delay=5.0)
    backup = pair.start(hb.NODE_BACKUP)
    pair.run(2.0)
    assert pair.roles() == {1: "active"}
    primary = pair.start(hb.NODE_PRIMARY)
    pair.run(1.5)
    assert pair.roles() == {0: "backup", 1: "active"}
    assert 3.0 <= primary.status()["preempt_in_s"] <= 4.0
    assert backup.status()["preempt_in_s"] is None
    pair.run(4.0)
    assert pair.roles() == {0: "active", 1: "backup"}
    assert primary.status()["preempt_in_s"] is None


HA = """[global]
public_interface = "pub0"
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
key_file = "/etc/lb/ha.key"
"""


def test_preempt_delay_is_read_and_warned_about_without_preempt():
    assert loads(HA).ha.preempt_delay == 0.0
    cfg = loads(HA + "preempt = true\npreempt_delay = 60\n", "w.toml")
    assert cfg.ha.preempt_delay == 60.0 and cfg.warnings == ()
    cfg = loads(HA + "preempt_delay = 60\n", "w.toml")
    assert [(w.line, w.field) for w in cfg.warnings] == [(7, "ha.preempt_delay")]
    assert cfg.warnings[0].message.startswith("no effect without preempt")
    from lb.config import ConfigError
    try:
        loads(HA + "preempt = true\npreempt_delay = -1\n", "w.toml")
    except ConfigError as e:
        assert "ha.preempt_delay" in str(e)
    else:
        raise AssertionError("a negative preempt_delay was taken")


def test_keepalived_preempt_delay_is_mapped():
    """keepalived's preempt_delay was dropped with "no effect"; it is [ha] preempt_delay now
    (preempt stays off in an import, so the loader says it has no effect until it is set)."""
    text = (DIR / "vrrp-primary.conf").read_text().replace("    advert_int 1\n", "    advert_int 1\n    preempt_delay 45\n", 1)
    cfg = keepalived.loads(text, "k.conf")
    assert cfg.ha.preempt_delay == 45.0
    [w] = [w for w in cfg.warnings if w.field.endswith("preempt_delay")]
    assert w.field == "vrrp_instance[VI_PUB].preempt_delay" and w.message.startswith("no effect without preempt")


def test_preempt_delay_round_trips_through_toml_and_lvs_cf():
    from lb.config import lvscf, totoml

    cfg = loads(HA + 'preempt = true\npreempt_delay = 60\n[[virtual_server]]\nname = "w"\naddress = "198.18.0.10"\n'
                'port = 80\n  [[virtual_server.real_server]]\n  address = "198.18.1.11"\n')
    assert "preempt_delay = 60" in totoml.dumps(cfg).splitlines()
    text = lvscf.dumps(cfg)
    assert "lb_ha_preempt_delay = 60" in text.splitlines()
    assert lvscf.loads(text).ha == cfg.ha
