"""No test asserts on elapsed time: speed lives in bench/ (a slow or loaded machine must not fail
a behaviour test).  This reads every test file (tests/, tests/vm/) and fails on an `assert` that
compares a clock difference -- time.monotonic(), time.time(), time.perf_counter() (or their
_ns twins) minus something, or a name or call that holds one -- with an upper bound; and one
that bounds from above a value whose name says it is elapsed time, however it was measured
(`res.duration`, `elapsed`, `took_s`, `stats["latency"]`: a result's own clock).

A lower bound (`elapsed >= timeout`: a timer did not fire early) stays allowed: load can only
make it truer.  Loops that wait until a deadline are not assertions and are not looked at."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "time", "perf_counter", "monotonic_ns", "time_ns", "perf_counter_ns", "now", "utcnow"}
# names of elapsed times: a word of the name (split at "_") is one of these
ELAPSED_WORDS = {"duration", "elapsed", "took", "latency", "runtime", "walltime"}


def _elapsed_name(name: str) -> bool:
    return any(w in ELAPSED_WORDS for w in name.lower().split("_"))


def _is_clock_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return name in CLOCKS


def _reads_clock(node: ast.AST, stamps: set[str]) -> bool:
    """node is (or contains) a clock reading: a clock call, or a name that holds one (t0, deadline)."""
    return any(_is_clock_call(n) or (isinstance(n, ast.Name) and n.id in stamps) for n in ast.walk(node))


def _timed(node: ast.AST, names: set[str], funcs: set[str], stamps: frozenset[str] = frozenset()) -> bool:
    """node is (or contains) a clock difference (a clock call, or two readings, minus something), a
    name holding one, or a call returning one."""
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and (
                _is_clock_call(n.left) or _is_clock_call(n.right) or
                (_reads_clock(n.left, stamps) and _reads_clock(n.right, stamps))):
            return True
        if isinstance(n, ast.Name) and (n.id in names or _elapsed_name(n.id)):
            return True
        if isinstance(n, ast.Attribute) and _elapsed_name(n.attr):
            return True
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and \
                isinstance(n.slice.value, str) and _elapsed_name(n.slice.value):
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in funcs:
            return True
    return False


def timed_asserts(source: str) -> list[tuple[int, str]]:
    """(line, text) of every assert in `source` that bounds elapsed time from above."""
    tree = ast.parse(source)
    names: set[str] = set()
    funcs: set[str] = set()
    # names that hold a clock reading (t0 = time.monotonic(), deadline = time.monotonic() + 5):
    # not elapsed times themselves, but two of them subtracted are one
    stamps: set[str] = set()
    deadlines: set[str] = set()                  # ... a reading plus a limit
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and \
                any(_is_clock_call(n) for n in ast.walk(node.value)) and \
                not (isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Sub)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(t, ast.Name):
                    stamps.add(t.id)
                    if isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Add):
                        deadlines.add(t.id)
    frozen = frozenset(stamps)
    for _ in range(3):                       # a name from a function from a name: settle
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(isinstance(r, ast.Return) and r.value is not None and _timed(r.value, names, funcs, frozen)
                       for r in ast.walk(node)):
                    funcs.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                if _timed(node.value, names, funcs, frozen):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        for n in ast.walk(t):
                            if isinstance(n, ast.Name):
                                names.add(n.id)
    # asserts in a loop's body may hold it to a deadline (`assert time.monotonic() < deadline`
    # while waiting for something): a wait, not a measurement
    in_loop: set[int] = set()
    for loop in (n for n in ast.walk(tree) if isinstance(n, (ast.While, ast.For, ast.AsyncFor))):
        in_loop.update(id(n) for n in ast.walk(loop) if isinstance(n, ast.Assert))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [cmp.left, *cmp.comparators]
            for op, a, b in zip(cmp.ops, operands, operands[1:]):
                upper = ((isinstance(op, (ast.Lt, ast.LtE)) and _timed(a, names, funcs, frozen)) or
                         (isinstance(op, (ast.Gt, ast.GtE)) and _timed(b, names, funcs, frozen)))
                # now < start + limit: a clock reading bounded by another, outside a wait loop
                if not upper and id(node) not in in_loop:
                    lo, hi = (a, b) if isinstance(op, (ast.Lt, ast.LtE)) else (b, a) \
                        if isinstance(op, (ast.Gt, ast.GtE)) else (None, None)
                    upper = lo is not None and _reads_clock(lo, frozen) and _reads_clock(hi, frozen) and \
                        any((isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add)) or
                            (isinstance(n, ast.Name) and n.id in deadlines) for n in ast.walk(hi))
                if upper:
                    out.append((node.lineno, ast.unparse(node.test)))
    return sorted(set(out))


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p.name != Path(__file__).name)


@pytest.mark.parametrize("path", _test_files(), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_assertion_on_elapsed_time(path):
    found = timed_asserts(path.read_text())
    assert not found, (f"{path.relative_to(TESTS.parent)} asserts on elapsed time (move the measurement "
                       f"to bench/, assert the behaviour): " + "; ".join(f"line {n}: {t}" for n, t in found))


@pytest.mark.parametrize("src", [
    "t0 = time.monotonic()\nf()\nassert time.monotonic() - t0 < 2.0\n",
    "t0 = time.time()\nassert 0.4 < time.time() - t0 < 5\n",
    "def go():\n    t0 = time.perf_counter()\n    return time.perf_counter() - t0\ntook = go()\nassert took <= 3\n",
    "def fo():\n    t = time.monotonic()\n    return time.monotonic() - t\nx = fo()\nassert x <= DEADTIME + 0.5, x\n",
    "t0 = time.monotonic()\nelapsed = time.monotonic() - t0\nassert 5 > elapsed\n",
    # a value named as elapsed time, measured elsewhere (a result's own clock)
    "res = run_check(spec)\nassert not res.ok and res.duration < 1.5\n",
    "assert 0.2 <= r.elapsed <= 2\n",
    "assert took_s < LIMIT\n",
    'assert stats["latency"] < 0.01\n',
    "assert 3.0 > result.wall_duration\n",
    # two clock readings: their difference is elapsed time, however it is spelled
    "t0 = time.monotonic(); time.sleep(0.01); t1 = time.monotonic()\nassert t1 - t0 < 0.5\n",
    "t0 = time.monotonic()\nt1 = time.monotonic()\ndt = t1 - t0\nassert dt < 2\n",
    "start = time.monotonic()\nassert time.monotonic() < start + 0.5\n",
    "deadline = time.monotonic() + 2\nf()\nassert time.monotonic() < deadline\n",
    "t0 = datetime.now()\nassert (datetime.now() - t0).total_seconds() < 2\n",
])
def test_the_guard_finds_upper_bounds(src):
    assert timed_asserts(src)


@pytest.mark.parametrize("src", [
    "t0 = time.monotonic()\nassert time.monotonic() - t0 >= 0.8\n",         # a timer did not fire early
    "deadline = time.monotonic() + 5\nwhile time.monotonic() < deadline:\n    pass\n",
    "t0 = time.monotonic()\nassert n < 5\n",
    "res = run_check(spec)\nassert res.duration >= 0.3\n",                    # not early
    "assert len(durations) > 3 and tooks == 1\n",                             # not an elapsed time
    # a wait: the deadline bounds the loop, the assertion says what never came
    "deadline = time.monotonic() + 10\nwhile not ready():\n    assert time.monotonic() < deadline, 'never'\n",
    "t0 = time.monotonic()\nt1 = time.monotonic()\nassert t1 > t0\n",                  # the clock moves on
])
def test_the_guard_allows_lower_bounds_and_deadlines(src):
    assert not timed_asserts(src)
