"""keepalived's ~SEQ lines (keepalived >= 2.1: `~SEQ(VAR, [START,] [STEP,] END) TEXT`, TEXT once
per value with $VAR set) were skipped with a warning: the real servers they make were missing in
lb, a pool silently smaller than keepalived's.  They expand now as keepalived's read_line does,
bounded; what keepalived refuses is an error naming file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from lb.config import ConfigError, keepalived

HEAD = "global_defs {\n lb_public_interface eth0\n}\n"


def servers(text: str, config_id: str = "lb1") -> dict[str, list[tuple[str, int]]]:
    cfg = keepalived.loads(HEAD + text, "k.conf", config_id=config_id)
    assert not [w for w in cfg.warnings if "SEQ" in w.message]
    return {vs.name: [(str(r.address), r.weight) for r in vs.real_servers] for vs in cfg.virtual_servers}


def issues(text: str, path: str = "k.conf") -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as e:
        keepalived.loads(HEAD + text, path, config_id="lb1")
    return [(i.path, i.line, i.message) for i in e.value.issues]


def test_seq_lines_make_the_real_servers_keepalived_makes() -> None:
    text = """$RS=real_server 198.18.1.$i 80 { \\
   weight $i \\
 }
virtual_server 198.18.0.10 80 {
 lb_kind DR
 ~SEQ(i, 1, 3) $RS
 ~SEQ(i, 10, -3, 4) real_server 198.18.2.$i 80 { weight 2 }
 ~SEQ(n, 2) real_server 198.18.3.$n 80 { weight 5 }
}
"""
    assert servers(text) == {"198.18.0.10:80": [
        ("198.18.1.1", 1), ("198.18.1.2", 2), ("198.18.1.3", 3),        # START, END with a multi-line $RS
        ("198.18.2.10", 2), ("198.18.2.7", 2), ("198.18.2.4", 2),       # START, STEP, END, downwards
        ("198.18.3.1", 5), ("198.18.3.2", 5)]}                          # END alone: 1..END


def test_seqx_parameters_in_the_numbers_nesting_and_conditionals() -> None:
    text = """$STEP=3
virtual_server 2001:2::10 80 {
 lb_kind DR
 ~SEQx(i, 9, $STEP, 0x10) real_server 2001:2::$i 80 { weight 1 }
 @lb1 ~SEQ ( j , 2 ) real_server 2001:2:1::${j}0 80 { weight 2 }
 @^lb1 ~SEQ(j, 5) real_server 2001:2:2::$j 80 { weight 3 }
 @lb1\t~SEQ(a, 1, 2) ~SEQ(b, 2, 1) real_server 2001:2:${a}::$b 80 { weight 4 }
}
"""
    assert servers(text) == {"[2001:2::10]:80": [
        ("2001:2::9", 1), ("2001:2::c", 1), ("2001:2::f", 1),           # hex values; 0x10 is 16
        ("2001:2:1::10", 2), ("2001:2:1::20", 2),
        ("2001:2:1::2", 4), ("2001:2:1::1", 4), ("2001:2:2::2", 4), ("2001:2:2::1", 4)]}


def test_what_keepalived_refuses_in_a_seq_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    body = """virtual_server 198.18.0.10 80 {
 lb_kind DR
 real_server 198.18.1.1 80 { weight 1 }
 ~SEQ(k, 1, 0, 3) real_server 198.18.9.$k 80 { weight 1 }
 ~SEQx(k, -1, 1) real_server 198.18.9.$k 80 { weight 1 }
 ~SEQ(k, 3, 1, 1) x
 ~SEQ(k, $UNDEFINED) x
 ~SEQ k, 1) x
 ~SEQ(k, 1, 2, 3, 4) x
 ~SEQ(k, 1, 1000000) real_server 198.18.9.1 80 { weight 1 }
}
"""
    got = issues(body)
    assert [(p, line) for p, line, _ in got] == [("k.conf", n) for n in range(7, 14)]
    assert [m.split(":")[0] for _, _, m in got] == [
        "invalid ~SEQ values", "~SEQx is only for numbers not below 0", "invalid ~SEQ values",
        "invalid ~SEQ line", "invalid ~SEQ line", "invalid ~SEQ line",
        f"~SEQ lines expand to more than {keepalived.MAX_SEQ_LINES} lines"]
    # in an included file, that file's name and line
    (tmp_path / "rs.conf").write_text("\n~SEQ(k, 2, 0, 3) real_server 198.18.9.$k 80 { weight 1 }\n")
    (tmp_path / "k.conf").write_text(HEAD + "virtual_server 198.18.0.10 80 {\n lb_kind DR\n include rs.conf\n}\n")
    with pytest.raises(ConfigError) as e:
        keepalived.load(tmp_path / "k.conf", config_id="lb1")
    assert [(Path(i.path).name, i.line) for i in e.value.issues] == [("rs.conf", 2)]
