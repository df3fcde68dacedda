"""ipvsadm's command anywhere among its options: `ipvsadm -nL`, `-n -L`, `-cnL`, `-n -S`, `-n -Z`
(popt takes them in any order; monitoring scripts often say `ipvsadm -nL`).  lb took the
command only first (`-Ln`), and answered `lb -nL` with argparse's "invalid choice"."""
import pytest

from lb.cli import main as cli_main
from lb.cli.main import main as lb_main


@pytest.fixture
def seen(monkeypatch):
    got = []
    for name in ("cmd_list", "cmd_zero"):
        monkeypatch.setattr(cli_main, name, lambda args, name=name: got.append((name, args)) or 0)
    return got


@pytest.mark.parametrize("argv, cmd, flags", [
    (["-nL"], "cmd_list", {"numeric"}),
    (["-n", "-L"], "cmd_list", {"numeric"}),
    (["-cnL"], "cmd_list", {"numeric", "connection"}),
    (["-n", "-Lc"], "cmd_list", {"numeric", "connection"}),
    (["-n", "--list", "--stats"], "cmd_list", {"numeric", "stats"}),
    (["--exact", "-nL", "--rate"], "cmd_list", {"numeric", "exact", "rate"}),
    (["-n", "-S"], "cmd_list", {"numeric", "save"}),
    (["-nS"], "cmd_list", {"numeric", "save"}),
    (["-Z", "-nL", "--stats"], "cmd_list", {"numeric", "zero", "stats"}),
    (["-n", "-Z"], "cmd_zero", set()),
])
def test_command_after_options(seen, argv, cmd, flags):
    assert lb_main(argv + ["--instance", "x9", "--dataplane", "xdp"]) == 0
    ((name, args),) = seen
    assert name == cmd
    on = {f for f in ("numeric", "connection", "stats", "rate", "exact", "save", "zero") if getattr(args, f, False)}
    assert on == flags
    assert args.instance == "x9"


def test_service_after_options(seen):
    assert lb_main(["-n", "-Lt", "198.18.0.1:80", "--dataplane", "xdp"]) == 0
    assert seen[0][1].service == ("TCP", "198.18.0.1:80") and seen[0][1].numeric
    seen.clear()
    assert lb_main(["-6", "-f", "5", "-nL", "--dataplane", "xdp"]) == 0
    assert seen[0][1].service == ("FWM", "5") and seen[0][1].ipv6


def test_subcommands_and_help_untouched():
    assert cli_main._command_first(["list", "-n", "-L"]) == ["list", "-n", "-L"]
    assert cli_main._command_first(["-h"]) == ["-h"]
    assert cli_main._command_first(["-n", "--", "-L"]) == ["-n", "--", "-L"]
    assert cli_main._command_first(["-Lnc"]) == ["-Lnc"]
