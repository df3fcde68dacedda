"""Any input gives a Config or a ConfigError naming the file (and a line where there is one).

A seeded fuzz of both loaders: the shipped configurations and the lvs.cf fixtures, mutated the way
hands and tools break files (a key dropped, duplicated, retyped, moved into another block, nested,
made huge; the file cut short; random bytes).  Nothing else may escape: a RecursionError or a
ValueError from a 5000-digit number would reach `lb check` as a traceback.  Seeded by each
file's name and LB_FUZZ_SEED (a fresh seed each run otherwise; a failure names it).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from lb.config import ConfigError, keepalived, load, lvscf, toml

from fuzzseed import SEED, named

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
TOML_SEEDS = sorted(CONFIGS.glob("*.toml"))
CF_SEEDS = [CONFIGS / "example-lvs.cf", HERE / "lvscf" / "full.cf", HERE / "lvscf" / "ipv6.cf",
            HERE / "lvscf" / "piranha-forms.cf"]   # inet_aton forms, a zero pmask, keys kept without effect
# keepalived.conf (`lb import`, `lb run --config`): the fixtures that include nothing
KA_SEEDS = [HERE / "keepalived" / n for n in ("dr-checkers.conf", "fwmark-ftp.conf", "nat-persistence.conf",
                                              "tun-group.conf", "vrrp-primary.conf")]
# at least 1,000 mutated files of each format per run (issue 15), spread over the seeds
MUTANTS_PER_FORMAT = 1050

TOML_VALUES = ['"x"', "1", "-7", "0", "true", "3.5", "[]", "[1, 2]", '["a", 1]', "{}", '{ a = 1 }',
               "1979-05-27", '"198.18.0.300"', '"::"', '"2001:2::1"', '"/64"', '"[::1]:80"', "inf", "nan"]
TOML_HUGE = ["9" * 5000, "0x" + "f" * 5000, '"' + "s" * 20000 + '"', "[" * 3000 + "]" * 3000,
             "{ a = " * 600 + "1" + " }" * 600, "1" + "0" * 400 + ".0", '"' + "(" * 2000 + ')" ' * 2000]
CF_VALUES = ["x", "1", "0", "-1", "yes", "1.5", "198.18.0.300", "2001:2::1 eth0", "10.0.0.1 eth0:",
             '"quoted', "255.0.255.0", "/64", "tcp 10.0.0.1 1-99999, udp", "a,,b", "sh-port,mh-port",
             "200-999", "[2001:2::1]:80", "10.1", "0x0a.0.0.08", "0x", "4294967296", "0.0.0.0", "[ /a",
             "[ ]"]
# keepalived's keyword lines: a value after the keyword, its macros and ~SEQ lines among them
KA_VALUES = ["x", "1", "0", "-1", "1.5", "198.18.0.300", "2001:2::1 80", "{", "}", "$X", "$X=1", "@ID weight 2",
             "~SEQ(i, 1, 3) real_server 198.18.1.$i 80 { }", "~SEQ(i, 0, 1, 3) x", "~SEQ(i, 1, 99999999) x",
             "~SEQx(i, -1) x", "~SEQ(", "~SEQ(i, 1, 3) ~SEQ(j, 1, 3) ~SEQ(k, 1, 3) ~SEQ(l, 1, 3) ~SEQ(m, 1, 3) x",
             "include /nonexistent/{a,b}.conf", "include {", "lb_algo rr", "weight 5"]
KA_HUGE = ["9" * 5000, "s" * 20000, "{ " * 3000, "~SEQ(i, 1, " + "9" * 400 + ") x", "$" + "X" * 5000]
CF_HUGE = ["9" * 5000, "9" * 400 + ".5", "s" * 20000, '"' + "s" * 5000 + '"', "[" * 3000, "1" * 30 + "-2"]


def _line_mutants(text: str, rng: random.Random, values: list[str], huge: list[str], sep: str) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    op = rng.randrange(10)
    if op == 0:  # a key dropped
        del lines[i]
    elif op == 1:  # duplicated
        lines.insert(i, lines[i])
    elif op in (2, 3):  # retyped, or made huge
        key, eq, _ = lines[i].partition(sep)
        if eq:
            lines[i] = f"{key}{eq} {rng.choice(values if op == 2 else huge)}"
    elif op == 9:  # moved elsewhere (into another table or block)
        lines.insert(rng.randrange(len(lines)), lines.pop(i))
    elif op == 4:  # nested
        lines.insert(i, rng.choice(["[[virtual_server.real_server]]", "[global.x]", "[[a.b.c]]", "[web]",
                                    "virtual v {", "server s {", "}", "failover f {"]))
    elif op == 5:  # the file cut short
        return text[: rng.randrange(len(text) + 1)]
    elif op == 6:  # random bytes (written back as they are: invalid UTF-8 included)
        pos = rng.randrange(len(text) + 1)
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        return text[:pos] + junk.decode("utf-8", "surrogateescape") + text[pos:]
    elif op == 7:  # a line's characters shuffled
        chars = list(lines[i])
        rng.shuffle(chars)
        lines[i] = "".join(chars)
    else:  # a key copied from elsewhere in the file
        lines.insert(i, rng.choice(lines))
    return "\n".join(lines)


def _mutants(seed: Path, values: list[str], huge: list[str], count: int, sep: str = "=") -> list[str]:
    rng = random.Random(f"{seed.name}-lb-{SEED}")
    text = seed.read_text()
    out = []
    for _ in range(count):
        t = text
        for _ in range(rng.randrange(1, 4)):
            t = _line_mutants(t, rng, values, huge, sep)
        out.append(t)
    return out


def _check(path: Path, text: str, loader, lineless_if_nested: bool = False) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        loader(path)
    except ConfigError as e:
        assert e.issues
        for issue in e.issues:
            assert issue.path == str(path), issue
            assert issue.message and "\n" not in issue.message, issue
            if issue.line is None:  # only a field of a table (or block) the file lacks has no line
                head = re.split(r"[.\[]", issue.field)[0]
                # (keepalived.conf: a block left open earlier swallows the keyword's own block, which
                # the file then lacks at the top though its text is there)
                assert head and (lineless_if_nested or
                                 not re.search(rf"^\s*\[*\s*{re.escape(head)}\b", text, re.M)), issue
            else:
                assert 1 <= issue.line <= len(text.splitlines()) + 1, issue


@pytest.mark.parametrize("seed", TOML_SEEDS, ids=lambda p: p.name)
def test_mutated_toml_loads_or_names_file_and_line(seed: Path, tmp_path: Path) -> None:
    with named():
        for n, text in enumerate(_mutants(seed, TOML_VALUES, TOML_HUGE, -(-MUTANTS_PER_FORMAT // len(TOML_SEEDS)))):
            _check(tmp_path / f"{n}.toml", text, toml.load)


@pytest.mark.parametrize("seed", CF_SEEDS, ids=lambda p: p.name)
def test_mutated_lvscf_loads_or_names_file_and_line(seed: Path, tmp_path: Path) -> None:
    with named():
        for n, text in enumerate(_mutants(seed, CF_VALUES, CF_HUGE, -(-MUTANTS_PER_FORMAT // len(CF_SEEDS)))):
            _check(tmp_path / f"{n}.cf", text, lvscf.load)


@pytest.mark.parametrize("seed", KA_SEEDS, ids=lambda p: p.name)
def test_mutated_keepalived_loads_or_names_file_and_line(seed: Path, tmp_path: Path) -> None:
    """keepalived.conf the same way (a keyword's value retyped: the line's first word kept), with
    its macros among the values: $NAME, @ID lines, ~SEQ expansions (nested, endless, malformed)."""
    with named():
        for n, text in enumerate(_mutants(seed, KA_VALUES, KA_HUGE, -(-MUTANTS_PER_FORMAT // len(KA_SEEDS)), " ")):
            _check(tmp_path / f"{n}.conf", text, keepalived.load, lineless_if_nested=True)


@pytest.mark.parametrize("text, line, message", [
    ("[global]\npublic_interface = \"e\"\n[tables]\nconnections = " + "9" * 5000 + "\n", 4,
     "integer too large (more than 19 digits)"),
    ("[global]\npublic_interface = \"e\"\n[tables]\nconnections = 0x" + "f" * 5000 + "\n", 4,
     "tables.connections: integer too large (more than 19 digits)"),
    ("[global]\npublic_interface = \"e\"\nx = " + "[" * 3000 + "]" * 3000 + "\n", 3,
     "arrays or inline tables nested too deeply (at most 8 levels)"),
    ("[global]\npublic_interface = \"e\"\nx = " + "[" * 20 + "]" * 20 + "\n", 3,
     "global.x[0][0][0][0][0][0]: tables and arrays nested too deeply (at most 8 levels)"),
    ("[global]\npublic_interface = \"" + "e" * 5000 + "\"\n", 2,
     "global.public_interface: string longer than 4096 characters"),
])
def test_toml_limits(tmp_path: Path, text: str, line: int, message: str) -> None:
    f = tmp_path / "lb.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load(f)
    (issue,) = ei.value.issues
    assert (issue.line, str(issue).split(": ", 1)[1]) == (line, message)


def test_lvscf_limits(tmp_path: Path) -> None:
    head = "network = direct\nvirtual web {\n address = 10.0.0.1 eth0\n port = 80\n"
    for extra, line, message in [
        (" lb_mh_size = " + "9" * 5000, 5, "virtual[web].lb_mh_size: integer too large (more than 19 digits)"),
        (" lb_monitor_timeout = " + "9" * 5000, 5,
         "virtual[web].lb_monitor_timeout: integer too large (more than 19 digits)"),
        (' send = "' + "x" * 5000 + '"', 5, "virtual[web].send: string longer than 4096 characters"),
        (" send = " + "x" * 9000, 5, "line longer than 8192 characters"),
    ]:
        f = tmp_path / "lvs.cf"
        f.write_text(head + extra + "\n}\n")
        with pytest.raises(ConfigError) as ei:
            load(f)
        (issue,) = ei.value.issues
        assert (issue.line, str(issue).split(": ", 1)[1]) == (line, message)


def test_file_size_limit(tmp_path: Path) -> None:
    f = tmp_path / "big.toml"
    f.write_text("# " + "x" * (toml.MAX_FILE_BYTES + 1) + "\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert str(ei.value) == f"{f}: larger than 1024 KiB: not a configuration file"
