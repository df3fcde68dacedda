"""keepalived.conf's `$NAME=VALUE` parameters as keepalived's parser reads them (parser.c:
read_line, check_definition, decomment, replace_param): the line decommented before it is a
definition, no blank before '=', the value's leading blanks not part of it, an empty value an
empty parameter; a multi-line definition (lines ending in a backslash) ended by an empty line
or by the file's end, skipping comment and blank-only lines; a multi-line parameter expanded
only at the end of a line; ${_HASH} and ${_BANG}."""
from __future__ import annotations

from pathlib import Path

import pytest

from lb.config import ConfigError, keepalived

HEAD = "global_defs {\n  lb_public_interface eth0\n}\n"  # lines 1-3


def load(text: str):
    return keepalived.loads(HEAD + text, "k.conf", config_id="lb1")


def issues(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigError) as ei:
        load(text)
    return [(i.line, i.message) for i in ei.value.issues]


def reals(cfg) -> list[tuple[str, int]]:
    return [(str(r.address), r.weight) for vs in cfg.virtual_servers for r in vs.real_servers]


VS = "virtual_server 198.18.0.1 80 {{\n lb_kind DR\n{body}\n}}\n"


def test_a_comment_after_a_value_is_not_part_of_it() -> None:
    # lb took "198.18.1.5 # web one": the rest of the line where it was used became a comment
    cfg = load("$IP=198.18.1.5   # web one\n" + VS.format(body=" real_server $IP 80 {\n  weight 2\n }"))
    assert reals(cfg) == [("198.18.1.5", 2)]
    # \# outside quotes is a '#' of the value, as keepalived's decomment makes it
    cfg = load('$P=/a\\#b\n' + VS.format(body=' real_server 198.18.1.5 80 {\n  HTTP_GET {\n   url {\n'
                                               '    path "${P}"\n   }\n  }\n }'))
    assert cfg.virtual_servers[0].monitor.path == "/a#b"


def test_blanks_around_the_equals_sign() -> None:
    # after '=': not part of the value (it showed in quoted uses: path " /health")
    cfg = load("$P=   /health\n" + VS.format(body=' real_server 198.18.1.5 80 {\n  HTTP_GET {\n   url {\n'
                                                     '    path "${P}"\n   }\n  }\n }'))
    assert cfg.virtual_servers[0].monitor.path == "/health"
    # before '=': no definition at all to keepalived (the keyword '$IP', refused): said at its line,
    # not as a bad address where $IP is used
    assert issues("$IP =198.18.1.5\n" + VS.format(body=" real_server $IP 80 {\n }")) == [
        (4, "not a parameter definition: keepalived takes $IP=VALUE with no blank before '=' (it reads this "
            "line as the keyword '$IP', which it refuses); write $IP=198.18.1.5")]


def test_an_empty_value_is_an_empty_parameter() -> None:
    cfg = load("$W=\n$EXTRA=   # nothing\n"
               + VS.format(body=" real_server 198.18.1.5 80 {\n  weight 3${W}\n  $EXTRA\n }"))
    assert reals(cfg) == [("198.18.1.5", 3)]


RS = "$RS=real_server 198.18.1.5 80 {   \\\n{inside}   weight 4 \\\n }\n"


def test_multi_line_definitions_skip_comment_and_blank_lines() -> None:
    """A comment line or a line of blanks inside a multi-line definition is skipped (keepalived's
    read_line reads on to the next line): lb ended the definition there."""
    for inside in ("   # its weight\n", "   \n", "! note \\\n"):
        cfg = load(RS.replace("{inside}", inside) + VS.format(body=" $RS"))
        assert reals(cfg) == [("198.18.1.5", 4)], inside


def test_an_empty_line_ends_a_multi_line_definition() -> None:
    # the definition is "real_server ... {" and "weight 4"; the '}' after the empty line is a line of
    # its own, one '}' too many for keepalived ("Extra '}' found") as for lb
    text = RS.replace("{inside}", "").replace("weight 4 \\\n", "weight 4 \\\n\n") + VS.format(body=" $RS")
    assert issues(text) == [(7, "unexpected '}' (no block is open)")]
    # ... and what follows is read as the file's own lines
    text = "$RS=real_server 198.18.1.5 80 { \\\n weight 5 \\\n\n" + VS.format(body=" $RS\n }")
    assert reals(load(text)) == [("198.18.1.5", 5)]


def test_the_files_end_ends_a_multi_line_definition(tmp_path: Path) -> None:
    (tmp_path / "main.conf").write_text(HEAD + "include rs.conf\n" + VS.format(body=" $RS"))
    (tmp_path / "rs.conf").write_text("$RS=real_server 198.18.1.5 80 { weight 6 } \\\n")
    # an included file's: keepalived would go on reading the including file into it
    with pytest.raises(ConfigError) as ei:
        keepalived.load(tmp_path / "main.conf", config_id="lb1")
    (issue,) = ei.value.issues
    assert (Path(issue.path).name, issue.line) == ("rs.conf", 1)
    assert issue.message.startswith("multi-line parameter $RS not finished at the end of this included file")
    # the main file's: the definition is complete (lb refused it)
    cfg = keepalived.loads(HEAD + VS.format(body=" $RS") + "$RS=x \\\n", "k.conf", config_id="lb1")
    assert reals(cfg) == []
    cfg = keepalived.loads(HEAD + VS.format(body=" real_server 198.18.1.5 80 {\n }") + "$RS=x \\\n", "k.conf",
                           config_id="lb1")
    assert reals(cfg) == [("198.18.1.5", 1)]


def test_a_multi_line_parameter_is_expanded_at_the_end_of_a_line_only() -> None:
    text = RS.replace("{inside}", "") + VS.format(body=" $RS # the one")
    assert reals(load(text)) == [("198.18.1.5", 4)]
    assert issues(RS.replace("{inside}", "") + VS.format(body=" $RS weight 2")) == [
        (9, "$RS is a multi-line parameter: keepalived expands one only at the end of a line (it leaves $RS "
            "here as written)")]


def test_standard_parameters() -> None:
    cfg = load(VS.format(body=' real_server 198.18.1.5 80 {\n  HTTP_GET {\n   url {\n    path "/a${_HASH}b${_BANG}"'
                              '\n   }\n  }\n }'))
    assert cfg.virtual_servers[0].monitor.path == "/a#b!"
    # a definition of the file's own wins over keepalived's, as there
    cfg = load("$_HASH=x\n" + VS.format(body=' real_server 198.18.1.5 80 {\n  HTTP_GET {\n   url {\n'
                                              '    path "/${_HASH}"\n   }\n  }\n }'))
    assert cfg.virtual_servers[0].monitor.path == "/x"
    assert issues(VS.format(body=" real_server 198.18.1.5 80 {\n  weight ${_RANDOM 1 9}\n }")) == [
        (7, "$_RANDOM (keepalived's random number, another at each load) is not supported: write the number")]


def test_an_unterminated_quote_in_a_definition() -> None:
    assert issues('$P="/x\n' + VS.format(body=" real_server 198.18.1.5 80 {\n }")) == [
        (4, "unterminated quote in the definition of $P (keepalived refuses it)")]
