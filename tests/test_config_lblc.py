"""The lblc, lblcr and twos schedulers and the lblc_expiration / lblcr_expiration options in
the TOML and lvs.cf configurations, and what the engine hands the data plane."""
from __future__ import annotations

import textwrap

import pytest

from lb.config import ConfigError, loads, lvscf
from lb.engine import build_table

TOML = """\
[global]
public_interface = "eth0"
{extra}
[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "{sched}"

  [[virtual_server.real_server]]
  address = "198.18.1.11"
"""

CF = """\
network = direct
{extra}
virtual web {{
     address = 198.18.0.10 eth0
     port = 80
     scheduler = {sched}
     server web1 {{
         address = 198.18.1.11
         weight = 1
     }}
}}
"""


@pytest.mark.parametrize("sched", ["lblc", "lblcr", "twos"])
def test_schedulers_accepted_in_toml_and_lvscf(sched):
    cfg = loads(TOML.format(sched=sched, extra=""))
    assert cfg.virtual_servers[0].scheduler == sched
    assert (cfg.lblc_expiration, cfg.lblcr_expiration) == (86400, 86400)   # the kernel's default
    assert lvscf.loads(CF.format(sched=sched, extra="")).virtual_servers[0].scheduler == sched
    # and back out to lvs.cf
    assert f"scheduler = {sched}\n" in lvscf.dumps(cfg)
    assert build_table(cfg).services[0].scheduler == sched


def test_expirations_in_toml_reach_the_data_plane():
    cfg = loads(TOML.format(sched="lblc", extra="lblc_expiration = 600\nlblcr_expiration = 7200\n"))
    assert (cfg.lblc_expiration, cfg.lblcr_expiration) == (600, 7200)
    t = build_table(cfg)
    assert (t.lblc_expiration, t.lblcr_expiration) == (600, 7200)


@pytest.mark.parametrize("value, fragment", [
    ("0", "must be between 1 and 2000000, got 0"),
    ('"1d"', "expected an integer, got"),
])
def test_bad_expiration_in_toml_names_line_and_field(value, fragment):
    with pytest.raises(ConfigError) as ei:
        loads(TOML.format(sched="lblc", extra=f"lblcr_expiration = {value}\n"), path="x.toml")
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (3, "global.lblcr_expiration")
    assert fragment in issue.message


def test_expirations_in_lvscf_round_trip():
    cfg = lvscf.loads(CF.format(sched="lblcr", extra="lb_lblc_expiration = 60\nlb_lblcr_expiration = 120\n"))
    assert (cfg.lblc_expiration, cfg.lblcr_expiration) == (60, 120)
    text = lvscf.dumps(cfg)
    assert "lb_lblc_expiration = 60\n" in text and "lb_lblcr_expiration = 120\n" in text
    assert (lvscf.loads(text).lblc_expiration, lvscf.loads(text).lblcr_expiration) == (60, 120)
    # defaults are not written
    assert "expiration" not in lvscf.dumps(lvscf.loads(CF.format(sched="lblc", extra="")))


def test_bad_expiration_in_lvscf_names_line_and_key():
    with pytest.raises(ConfigError) as ei:
        lvscf.loads(textwrap.dedent(CF.format(sched="lblc", extra="lb_lblc_expiration = soon\n")), path="x.cf")
    (issue,) = ei.value.issues
    assert issue.line == 2 and "lb_lblc_expiration" in issue.field
    assert "expected an integer" in issue.message
