"""Relative [ha] key_file and [web] password_file: relative to the config's directory, whatever
the current directory lb is run from, and `lb import` / `lb export` keep naming the same files."""
from __future__ import annotations

from pathlib import Path

from lb.config import load, lvscf, totoml
from lb.config.toml import loads

TOML = """\
[global]
public_interface = "eth0"

[ha]
primary = "198.18.0.1"
backup = "198.18.0.2"
key_file = "keys/ha.key"

[web]
password_file = "web.passwd"

[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80

  [[virtual_server.real_server]]
  name = "a"
  address = "198.18.1.1"
"""


def test_relative_files_from_another_directory(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "etc" / "lb"
    conf.mkdir(parents=True)
    (conf / "lb.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path)
    cfg = load("etc/lb/lb.toml")                      # a relative config path, as `lb import etc/lb/lb.toml`
    assert cfg.ha.key_file == conf / "keys" / "ha.key"
    assert cfg.web.password_file == conf / "web.passwd"
    # `lb import`'s TOML, saved anywhere, names the same files
    out = tmp_path / "elsewhere" / "lb.toml"
    out.parent.mkdir()
    out.write_text(totoml.dumps(cfg, []))
    again = load(out)
    assert again.ha.key_file == cfg.ha.key_file and again.web.password_file == cfg.web.password_file
    # `lb export` of it is not refused for the directory it was run from, and reads back the same
    text = lvscf.export(cfg)
    back = lvscf.loads(text)
    assert back.ha.key_file == cfg.ha.key_file and back.web.password_file == cfg.web.password_file
    assert loads(totoml.dumps(cfg, [])).ha.key_file == cfg.ha.key_file
