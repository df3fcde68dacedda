"""Problems found after loading (an interface missing, a key file) are reported as the loader's
issues are: file:line: field, the field as the file's own format names it."""
from __future__ import annotations

import pytest

from lb import config as lbconfig
from lb import engine

TOML = """\
[global]
public_interface = "pub0"
private_interface = "priv0"
network = "nat"
nat_router = "198.18.1.254/24"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80

[[virtual_server]]
name = "dns"
address = "198.18.0.11"
port = 53
protocol = "udp"
device = "vlan7"
"""


@pytest.mark.parametrize("present, line, field", [
    ({"priv0", "vlan7"}, 2, "global.public_interface"),
    ({"pub0", "vlan7"}, 3, "global.private_interface"),
    ({"pub0", "priv0"}, 17, "virtual_server[1].device"),
])
def test_a_missing_interface_names_the_line_that_names_it(tmp_path, monkeypatch, present, line, field):
    path = tmp_path / "lb.toml"
    path.write_text(TOML)
    cfg = lbconfig.load(path)
    monkeypatch.setattr(engine.addresses, "interface_exists", lambda name: name in present)
    with pytest.raises(engine.StartupError) as ei:
        engine.check_interfaces(cfg)
    (missing,) = {"pub0", "priv0", "vlan7"} - present
    assert str(ei.value) == f"{path}:{line}: {field}: interface(s) not found: {missing}"


def test_an_lvs_cf_field_is_named_as_lvs_cf_names_it(tmp_path, monkeypatch):
    src = (lbconfig.__file__.rsplit("/lb/", 1)[0]) + "/configs/example-lvs.cf"
    path = tmp_path / "lvs.cf"
    path.write_text(open(src).read())
    cfg = lbconfig.load(path)
    monkeypatch.setattr(engine.addresses, "interface_exists", lambda name: name != "pub0")
    with pytest.raises(engine.StartupError) as ei:
        engine.check_interfaces(cfg)
    lines = path.read_text().splitlines()
    # the public interface comes from the first virtual's address line ("address = VIP DEVICE")
    at = next(i for i, t in enumerate(lines, 1) if t.strip().startswith("address = 198.18.0.10"))
    assert str(ei.value) == f"{path}:{at}: virtual[web].address: interface(s) not found: pub0"
    # the private interface from nat_router's line ("nat_router = ADDRESS DEVICE")
    monkeypatch.setattr(engine.addresses, "interface_exists", lambda name: name != "priv0")
    with pytest.raises(engine.StartupError) as ei:
        engine.check_interfaces(cfg)
    at = next(i for i, t in enumerate(lines, 1) if t.startswith("nat_router = "))
    assert str(ei.value) == f"{path}:{at}: nat_router: interface(s) not found: priv0"


def test_issue_at_without_a_file_names_the_field():
    issue = lbconfig.issue_at(None, ("ha", "key_file"), "gone")
    assert str(issue) == "<config>: ha.key_file: gone"
