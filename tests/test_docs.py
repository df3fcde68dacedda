"""README.md and docs/*.md (and the comments of configs/) against the code, as an operator
following them would find it: each `lb ...` command and option they show exists and parses, each
TOML example uses keys the loader takes and loads, each repository file they name exists, each
data-path or HA counter they name is one, and the architecture's module map names every module.
(Metric names: tests/test_metrics.py; configs/ themselves: tests/test_config.py.)"""

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

from lb.cli.main import build_parser, ipvsadm_edit
from lb.config import ConfigError, loads
from lb.config import toml as loader

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _lines():
    """(file name, line number, line, where in it) of every doc -- where: "block" in a ``` block,
    "text" else -- and of every comment line of configs/ ("comment")."""
    for f in DOCS:
        block = False
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                block = not block
                continue
            yield f.name, n, line, "block" if block else "text"
    for f in sorted((ROOT / "configs").iterdir()):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.lstrip().startswith(("#", "!")):
                yield f"configs/{f.name}", n, line.lstrip("#! "), "comment"


def _subcommands(p: argparse.ArgumentParser) -> dict:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def _commands():
    """Every `lb SUB ...` the docs show: in a code span, a ``` block's line up to its comment, or
    a config's comment up to the prose after it; (where, [subcommand alternatives], the words
    after them)."""
    subs = "|".join(re.escape(s) for s in _subcommands(build_parser()))
    # "lb run/check --config", "lb realserver check|setup": one command each
    cmd = re.compile(rf"(?:^|[\s(`])(?:\S*/)?lb ((?:{subs})(?:/(?:{subs}))*)(?![\w-])(.*)")
    for name, n, line, where in _lines():
        # a ``` block's line: the command before its comment, and code spans in the comment
        code, comment = (re.split(r"(?:^|\s)#", line, maxsplit=1) + [""])[:2] if where == "block" else ("", line)
        texts = ([code] if code.strip() else []) + re.findall(r"`([^`]+)`", comment)
        if where == "comment" and line.startswith("lb "):     # "#   lb run --config X   # what it does"
            texts.append(re.split(r"\s{2,}|\s#|\s->", line)[0])
        for text in texts:
            if m := cmd.search(text):
                yield f"{name}:{n}", m.group(1).split("/"), shlex.split(m.group(2).replace("'", " "))


def test_every_lb_command_and_option_the_docs_show_exists():
    top = _subcommands(build_parser())
    wrong, seen = [], set()
    for where, cmds, words in _commands():
        for sub in cmds:
            p, rest = top[sub], list(words)
            nested = _subcommands(p)
            if nested and rest and re.fullmatch(r"[a-z|/-]+", rest[0]):
                names = re.split(r"[|/]", rest.pop(0))
                wrong += [f"{where}: lb {sub} {s}: no such command" for s in names if s not in nested]
                p = nested.get(names[0], p)
            known = _options(p)
            for word in rest:
                if word == "--":                   # lb lab exec NODE -- CMD
                    break
                for opt in word.strip("[](),.;:").split("=")[0].split("/"):    # "-t/-u", "[-c]"
                    # ipvsadm's table-editing options are answered with what to do instead
                    if re.fullmatch(r"--?[A-Za-z][\w-]*", opt) and opt not in known \
                            and ipvsadm_edit([sub, opt]) is None:
                        wrong.append(f"{where}: lb {sub}: no option {opt}")
            seen.add(sub)
            # and the words as the parser takes them: a word it has no place for (a positional
            # argument written where an option goes) is wrong; a placeholder (VIP, NODE) is not
            argv = [sub] + [w for w in (x.strip("[]") for x in words) if w]
            argv = argv[:next((i for i, w in enumerate(argv) if w in (">", "<", "|", "&&")), len(argv))]
            if "..." in argv or any("|" in w for w in argv) or ipvsadm_edit(argv) is not None:
                continue
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    build_parser().parse_args(argv)
            except SystemExit:
                if "unrecognized arguments" in err.getvalue():
                    wrong.append(f"{where}: lb {' '.join(argv)}: {err.getvalue().splitlines()[-1]}")
    assert not wrong, wrong
    # the walk read the docs' commands (not nothing): most subcommands are shown somewhere
    assert {"run", "check", "list", "status", "reload", "weight", "realserver", "decap", "lab"} <= seen, seen


def _toml_blocks():
    for f in DOCS:
        text = f.read_text()
        for m in re.finditer(r"^```toml\n(.*?)^```", text, re.S | re.M):
            yield f"{f.name}:{text[:m.start()].count(chr(10)) + 2}", m.group(1)


def test_the_docs_toml_examples_use_the_loaders_keys_and_load():
    """Each ```toml block: every table and key where the loader's SCHEMA has it, and the block
    loads (a fragment given the one required key it leaves out, [global] public_interface)."""
    wrong, blocks = [], 0
    for where, text in _toml_blocks():
        blocks += 1
        table: tuple = ()
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if h := re.fullmatch(r"\[\[?([\w.]+)\]\]?", line):
                table = tuple(h.group(1).split("."))
                if table not in loader.SCHEMA:
                    wrong.append(f"{where}: no table [{h.group(1)}]")
            elif (k := re.match(r"(\w+)\s*=", line)) and table in loader.SCHEMA \
                    and k.group(1) not in loader.SCHEMA[table]:
                wrong.append(f"{where}: [{'.'.join(table)}] has no key {k.group(1)}")
        if "public_interface" not in text:
            text = (text.replace("[global]\n", '[global]\npublic_interface = "eth0"\n', 1) if "[global]" in text
                    else '[global]\npublic_interface = "eth0"\n' + text)
        try:
            loads(text, where)
        except ConfigError as e:
            wrong.append(str(e))
    assert blocks >= 6 and not wrong, wrong


def test_the_files_the_docs_name_exist():
    # lb/bpf is the installed package's copy of bpf/ (setup.py), not in a checkout
    built = {"lb/bpf"}
    path = re.compile(r"(?<![\w/.-])((?:lb|tests|configs|docs|scripts|bench|bpf|cext)/[\w./@<>*-]*[\w*>@])")
    missing = []
    for name, n, line, _ in _lines():
        for p in path.findall(line):
            pattern = re.sub(r"<[^>]*>", "*", p)
            if p not in built and not (ROOT / p).exists() and not list(ROOT.glob(pattern)):
                missing.append(f"{name}:{n}: {p}")
        # a template unit (lb@.service, lb-web@<instance>.service) is one lb/systemd/ ships
        for unit, kind in re.findall(r"\b(lb[\w-]*)@[\w<>%]*\.(service)\b", line):
            if not (ROOT / "lb" / "systemd" / f"{unit}@.{kind}").exists():
                missing.append(f"{name}:{n}: {unit}@.{kind}")
    assert not missing, missing


def test_the_counters_the_docs_name_are_counted():
    """"counted `X`" and "`X` in `lb status`": X is a counter the data path, the decapsulator or
    pulse keeps (what `lb status`, `lb list --counters` and the metrics show)."""
    from lb import metrics
    from lb.dataplane import decap, layout
    from lb.ha import pulse

    known = (set(layout.COUNTER_NAMES) | set(layout.CT_EVENTS) | set(decap.COUNTERS)
             | metrics.HA_ACCEPTED | set(metrics.HA_OTHER) | set(pulse.REFUSED_TEXT))
    named = [(f"{name}:{n}", c) for name, n, line, _ in _lines()
             for c in re.findall(r"counted (?:as )?`(\w+)`|`(\w+)` in `lb status`", line) for c in c if c]
    # and the events docs/metrics.md lists for lb_dataplane_events_total are the data path's
    row = next(line for line in (ROOT / "docs" / "metrics.md").read_text().splitlines()
               if line.startswith("| `lb_dataplane_events_total`"))
    named += [("metrics.md: lb_dataplane_events_total", c) for c in re.findall(r"`([a-z][a-z0-9_]*)`", row)
              if c not in ("lb_dataplane_events_total", "event")]   # (its label)
    assert len(named) >= 15, named
    assert [x for x in named if x[1] not in known] == []


def test_the_module_map_names_every_module():
    """docs/architecture.md's "Packages" table names each module of lb/ (by path, or by file name
    in its package's row) and each unit of lb/systemd/."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("## Packages"):]
    table = table[:table.index("\n## ")]
    modules = [p for p in (ROOT / "lb").rglob("*.py") if p.name != "__init__.py"]
    modules += list((ROOT / "lb" / "systemd").iterdir())
    assert len(modules) > 50
    unnamed = [str(p.relative_to(ROOT)) for p in modules
               if str(p.relative_to(ROOT)) not in table and f"`{p.name}`" not in table
               and not re.search(rf"`{re.escape(str(p.parent.relative_to(ROOT)))}/`[^\n]*\b{re.escape(p.name)}\b", table)]
    assert unnamed == []
    # and lb/cli/main.py's row names every subcommand
    row = re.search(r"^\| `lb/cli/main.py` \| `lb ([\w/-]+)`", table, re.M)
    assert row and sorted(row.group(1).split("/")) == sorted(_subcommands(build_parser()))


NANNY_CF = """\
serial_no = 1
service = lvs
network = direct
virtual udp80 {
     active = 1
     address = 198.18.0.10 eth0:1
     protocol = udp
     port = 80
     load_monitor = rup
     server rs1 {
         address = 198.18.1.11
         active = 1
         weight = 10
     }
}
virtual tcp80 {
     active = 1
     address = 198.18.0.11 eth0:1
     port = 80
     server rs1 {
         address = 198.18.1.11
         active = 1
         weight = 10
     }
}
"""


def test_the_nanny_differences_say_what_lb_does():
    """README's "lb's health checks and Piranha's nanny": its numbers and its claims about lb are
    the code's (an lvs.cf as a Piranha user has it)."""
    from lb import weight
    from lb.config import lvscf
    from lb.engine import check_spec
    from lb.health.load import dynamic_weight, parse_report

    text = (ROOT / "README.md").read_text()
    sect = text[text.index("### lb's health checks and Piranha's nanny"):]
    sect = " ".join(sect[:sect.index("\n## ")].split())
    cfg = lvscf.loads(NANNY_CF)
    udp, tcp = cfg.virtual_servers
    # a UDP virtual on port 80 without a check: lb's UDP check, empty, no expect; nanny's HTTP for TCP
    spec, policy = check_spec(udp, udp.real_servers[0])
    assert (spec.kind, spec.port, spec.send, spec.expect) == ("udp", 80, "", "")
    assert f"real server's port every {policy.interval:g} s" in sect
    assert f"within {udp.monitor.connect_timeout:g} s (`lb_monitor_connect_timeout`)" in sect
    tspec, _ = check_spec(tcp, tcp.real_servers[0])
    assert (tspec.kind, tspec.send, tspec.expect) == ("send_expect", lvscf.NANNY_HTTP_SEND, lvscf.NANNY_HTTP_EXPECT)
    # load_monitor = rup: rup %h, its interval, weight / (1 + load), min_weight 1
    lm = udp.load_monitor
    assert (lm.kind, lm.program, lm.min_weight) == ("program", "rup %h", 1)
    assert f"ask every {lm.interval:g} s (`lb_load_monitor_interval`)" in sect
    assert "(1 by default)" in sect and "a load of 1 halves it, a load of 9 makes it a tenth" in sect
    out = "rs1: up 3 days, load average: {}, 0.50, 0.40"
    assert [dynamic_weight(parse_report(out.format(x)), 10, lm.min_weight) for x in ("1.00", "9.00", "99")] == [5, 1, 1]
    # no slow start: a server back up has its full weight at once
    assert "No slow start." in sect
    assert weight.effective(10, up=True).value == 10 and weight.effective(10, up=True, load=4).value == 4
