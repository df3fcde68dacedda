"""`lb stop -c FILE` and `lb status --config FILE` need only the instance the file names: a file with
errors elsewhere (a typo in a real server's weight) still tells it, read alone, with a note; one
that cannot tell it says to name it with --instance."""
from __future__ import annotations

import pytest

from lb import control, instance
from lb.cli.main import main

TOML = """\
[global]
instance = "edge1"
public_interface = "pub0"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
  [[virtual_server.real_server]]
  address = "198.18.1.11"
  weight = "heavy"
"""

LVSCF = """\
network = direct
lb_instance = edge2
lb_public_interface = pub0

virtual web {
     address = 198.18.0.10 pub0
     port = 80
     scheduler = nope
     server rs1 {
          address = 198.18.1.11
     }
}
"""

KEEPALIVED = """\
global_defs {
    router_id EDGE3
    lb_public_interface pub0
}
virtual_server 198.18.0.10 80 {
    lb_algo nope
    lb_kind DR
    protocol TCP
    real_server 198.18.1.11 80 { }
}
"""


@pytest.fixture
def asked(monkeypatch):
    """The instances lb stop and lb status turned to (none runs)."""
    seen: list[tuple[str, str]] = []

    def pid(inst, *a, **k):
        seen.append(("stop", inst))
        raise instance.NotRunning(f"instance {inst!r} is not running")

    def request(inst, cmd, **k):
        seen.append((cmd, inst))
        raise control.NotRunning(f"instance {inst!r} is not running")
    monkeypatch.setattr(instance, "running_pid", pid)
    monkeypatch.setattr(control, "request", request)
    return seen


@pytest.mark.parametrize("name, text, inst, key", [
    ("lb.toml", TOML, "edge1", "[global] instance"),
    ("lvs.cf", LVSCF, "edge2", "lb_instance"),
    ("keepalived.conf", KEEPALIVED, "edge3", "global_defs router_id"),
])
def test_a_file_with_errors_still_names_its_instance(tmp_path, asked, capsys, name, text, inst, key):
    path = tmp_path / name
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 2
    capsys.readouterr()
    assert main(["stop", "--config", str(path)]) == 1
    assert main(["status", "--config", str(path)]) == 1
    assert asked == [("stop", inst), ("status", inst)]
    err = capsys.readouterr().err
    assert f"has errors (`lb check -c {path}`); instance {inst!r} read from its {key} alone" in err
    assert "Traceback" not in err


def test_a_file_that_cannot_tell_its_instance_says_use_instance(tmp_path, asked, capsys):
    path = tmp_path / "lb.toml"
    path.write_text(TOML.replace('instance = "edge1"', 'instance = "edge1'))   # not TOML
    assert main(["stop", "--config", str(path)]) == 2
    assert asked == []
    err = capsys.readouterr().err
    assert "its [global] instance cannot be read alone: name the instance with --instance" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('"edge1"', '"../edge1"'))
    assert main(["status", "--config", str(bad)]) == 2 and asked == []


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "-inf", "soon"])
def test_status_wait_takes_a_finite_number_of_seconds(asked, capsys, wait):
    """`lb status --wait nan` waited for ever (no deadline compares true with nan): refused by
    the command line, exit 2, before anything is asked."""
    with pytest.raises(SystemExit) as e:
        main(["status", "--instance", "edge1", f"--wait={wait}"])
    assert e.value.code == 2 and asked == []
    err = capsys.readouterr().err
    assert f"argument --wait: '{wait}'" in err and "Traceback" not in err
