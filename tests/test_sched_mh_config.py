"""mh in the configuration: accepted (TOML and lvs.cf), with mh_size validated as a prime in
251..65521 that has room for the real servers; errors name file, line and field."""
from __future__ import annotations

import textwrap

import pytest

from lb.config import ConfigError, load, loads
from lb.dataplane.spec import service_spec

HEAD = '[global]\npublic_interface = "pub0"\n'


def _vs(extra: str, nreal: int = 2) -> str:
    reals = "".join(f'  [[virtual_server.real_server]]\n  address = "198.18.{1 + i // 200}.{11 + i % 200}"\n'
                    for i in range(nreal))
    return HEAD + "[tables]\nreals_per_service = 512\n" + textwrap.dedent(f'''\
        [[virtual_server]]
        name = "web"
        address = "198.18.0.10"
        port = 80
        {extra}
        ''') + reals


def test_mh_accepted_with_flags_and_default_size():
    cfg = loads(_vs('scheduler = "mh"\nscheduler_flags = ["mh-port", "mh-fallback"]'))
    (vs,) = cfg.virtual_servers
    assert (vs.scheduler, vs.scheduler_flags, vs.mh_size) == ("mh", ("mh-fallback", "mh-port"), 4093)
    spec = service_spec(vs, ())
    assert (spec.scheduler, spec.sched_flags, spec.mh_size) == ("mh", ("mh-fallback", "mh-port"), 4093)


def test_mh_size_any_prime_in_range():
    for size in (251, 1021, 8191, 4099, 65521):
        (vs,) = loads(_vs(f'scheduler = "mh"\nmh_size = {size}')).virtual_servers
        assert vs.mh_size == size


@pytest.mark.parametrize("extra, fragment", [
    ('scheduler = "mh"\nmh_size = 4000', "must be a prime (e.g. 4093, the kernel's default), got 4000"),
    ('scheduler = "mh"\nmh_size = 127', "must be between 251 and 65521, got 127"),
    ('scheduler = "mh"\nmh_size = 131071', "must be between 251 and 65521, got 131071"),
    ('scheduler = "mh"\nmh_size = "big"', "expected an integer, got"),
    ('scheduler = "sh"\nmh_size = 4093', "mh_size is the table size of scheduler 'mh', not 'sh'"),
])
def test_mh_size_errors_name_line_and_field(tmp_path, extra, fragment):
    path = tmp_path / "lb.toml"
    path.write_text(_vs(extra))
    with pytest.raises(ConfigError) as ei:
        load(path)
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (10, "virtual_server[0].mh_size"), str(ei.value)
    assert fragment in issue.message
    assert str(path) in str(ei.value)


def test_mh_size_needs_a_slot_per_real_server():
    with pytest.raises(ConfigError) as ei:
        loads(_vs('scheduler = "mh"\nmh_size = 251', nreal=252))
    (issue,) = ei.value.issues
    assert issue.field == "virtual_server[0].mh_size"
    assert "at least one slot per real server (252), got 251" in issue.message


def test_mh_flag_on_another_scheduler_still_refused():
    with pytest.raises(ConfigError) as ei:
        loads(_vs('scheduler = "sh"\nscheduler_flags = ["mh-port"]'))
    assert "flag 'mh-port' belongs to scheduler 'mh', not 'sh'" in str(ei.value)


LVSCF = """\
network = direct
virtual web {
     address = 192.168.1.10 eth0:1
     port = 80
     scheduler = mh
     lb_scheduler_flags = mh-fallback,mh-port
     lb_mh_size = SIZE
     server web1 {
         address = 10.0.0.11
         weight = 1
     }
}
"""


def test_lvscf_reads_and_writes_mh():
    from lb.config import lvscf

    cfg = lvscf.loads(LVSCF.replace("SIZE", "8191"), "lvs.cf")
    (vs,) = cfg.virtual_servers
    assert (vs.scheduler, vs.scheduler_flags, vs.mh_size) == ("mh", ("mh-fallback", "mh-port"), 8191)
    again = lvscf.loads(lvscf.dumps(cfg), "lvs.cf")
    assert again.virtual_servers[0].mh_size == 8191


def test_lvscf_bad_mh_size_names_line_and_field():
    from lb.config import lvscf

    with pytest.raises(ConfigError) as ei:
        lvscf.loads(LVSCF.replace("SIZE", "4092"), "lvs.cf")
    (issue,) = ei.value.issues
    assert (issue.line, issue.field) == (7, "virtual[web].lb_mh_size")
    assert "must be a prime" in issue.message
