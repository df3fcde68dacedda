"""keepalived's include takes csh-style {a,b} groups (glob with GLOB_BRACE, keepalived.conf(5)):
lb took the braces as the file's name, so `include rs/{web,api}/*.conf` read nothing (a glob
matching no file is no error) and the real servers in those files were silently missing."""
from __future__ import annotations

from pathlib import Path

import pytest

from lb.config import ConfigError, keepalived

HEAD = "global_defs {\n lb_public_interface eth0\n}\n"


def rs(path: Path, last: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"real_server 198.18.1.{last} 80 {{\n weight 1\n}}\n")


def test_include_expands_brace_groups_as_keepalived(tmp_path: Path) -> None:
    rs(tmp_path / "rs" / "web" / "1.conf", 1)
    rs(tmp_path / "rs" / "web" / "2.conf", 2)
    rs(tmp_path / "rs" / "api" / "3.conf", 3)
    rs(tmp_path / "a.conf", 4)
    rs(tmp_path / "b" / "c.conf", 5)
    rs(tmp_path / "b" / "d.conf", 6)
    (tmp_path / "k.conf").write_text(HEAD + "virtual_server 198.18.0.10 80 {\n lb_kind DR\n"
                                            " include rs/{web,api}/*.conf\n include {a,b/{d,c}}.conf\n}\n")
    cfg = keepalived.load(tmp_path / "k.conf", config_id="lb1")
    # each alternative's matches sorted, the alternatives in their order (glibc)
    assert [str(r.address) for r in cfg.virtual_servers[0].real_servers] == [
        "198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4", "198.18.1.6", "198.18.1.5"]


@pytest.mark.parametrize("pattern, message", [
    ("{a,b.conf", "{a,b.conf: a '{' without its '}'"),
    ("{a,missing}.conf", "missing.conf: no such file"),
    ("{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}.conf", "{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}.conf: a '{' without"),
])
def test_a_brace_pattern_keepalived_cannot_read_is_an_error_naming_the_line(tmp_path: Path, pattern: str,
                                                                             message: str) -> None:
    rs(tmp_path / "a.conf", 4)
    (tmp_path / "k.conf").write_text(HEAD + f"virtual_server 198.18.0.10 80 {{\n lb_kind DR\n include {pattern}\n}}\n")
    with pytest.raises(ConfigError) as e:
        keepalived.load(tmp_path / "k.conf", config_id="lb1")
    assert [(Path(i.path).name, i.line) for i in e.value.issues][:1] == [("k.conf", 6)]
    assert message in e.value.issues[0].message, e.value.issues[0].message
