"""Map field paths of a parsed TOML document back to source line numbers.

tomllib returns plain dicts without positions, so error messages would have
no line numbers.  This module re-scans the source text just enough to know,
for every ``[table]`` / ``[[array]]`` header and every ``key = value`` line,
which path in the parsed document it defines.

A path mirrors how the parsed document is indexed, e.g.
``("virtual_server", 1, "real_server", 0, "weight")``.  Lookups of absent
keys fall back to the closest enclosing entry that exists (usually the table
header), which is where a "missing key" error should point.

Elements of arrays and keys of inline tables are found too (an issue in the
second element of a multi-line ``real_server = [ {...}, {...} ]`` names its line).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from typing import Any

PathElem = str | int

_BARE_DOTTED = re.compile(r"\s*[A-Za-z0-9_-]+(\s*\.\s*[A-Za-z0-9_-]+)*\s*")
FieldPath = tuple[PathElem, ...]
# arrays and inline tables nested deeper than this inside one value: their elements' lines are not
# recorded (the configuration's deepest is 2, real_server = [{ ... }])
MAX_RECORD_DEPTH = 4


def _split_key(raw: str) -> tuple[str, ...] | None:
    """Split a (possibly dotted, possibly quoted) TOML key into its parts.

    Letting tomllib parse ``<key> = 0`` gets quoting and escapes right
    without a second implementation of the key grammar; plain keys (the
    common case) take a fast path.
    """
    if _BARE_DOTTED.fullmatch(raw):
        return tuple(part.strip() for part in raw.split("."))
    try:
        doc: Any = tomllib.loads(f"{raw} = 0")
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):  # not a key (a header "[a=[[[...")
        return None
    parts: list[str] = []
    while isinstance(doc, dict) and len(doc) == 1:
        (name, doc), = doc.items()
        parts.append(name)
    return tuple(parts) if parts else None


class Locator:
    """Index of the lines on which the paths of one TOML document are defined."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[FieldPath, int] = {}
        # For each array of tables (resolved path without index): the index
        # of its latest element, so that later headers nest under it.
        self._latest: dict[FieldPath, int] = {}
        self._last_line = text.count("\n") + 1
        # where a value nests deepest, and where its longest bare word (a number) is: the lines
        # to name when tomllib gives up on a file (RecursionError, an integer Python cannot read)
        self._deepest: tuple[int, int | None] = (0, None)
        self._longest_word: tuple[int, int | None] = (0, None)
        self._scan()

    # -- lookup -------------------------------------------------------------

    def line(self, path: Sequence[PathElem]) -> int | None:
        """The 1-based line defining ``path``, or of its closest ancestor that is written down."""
        p = tuple(path)
        while p:
            if p in self._lines:
                return self._lines[p]
            p = p[:-1]
        return None

    @property
    def last_line(self) -> int:
        return self._last_line

    @property
    def deepest_line(self) -> int | None:
        """The first line on which a value's arrays and inline tables nest deepest."""
        return self._deepest[1]

    @property
    def longest_word_line(self) -> int | None:
        """The first line holding the longest unquoted word of a value (number, boolean, date)."""
        return self._longest_word[1]

    # -- scanning -----------------------------------------------------------

    def _record(self, path: FieldPath, line: int) -> None:
        # The first definition wins; a prefix (e.g. ("virtual_server",)) maps
        # to the line that first mentions it.
        for n in range(1, len(path) + 1):
            self._lines.setdefault(path[:n], line)

    def _resolve(self, parts: tuple[str, ...]) -> FieldPath:
        """Insert the current array index after every array-of-tables segment."""
        out: list[PathElem] = []
        for name in parts:
            out.append(name)
            idx = self._latest.get(tuple(out))
            if idx is not None:
                out.append(idx)
        return tuple(out)

    def _scan(self) -> None:
        text = self._text
        n = len(text)
        i = 0
        line = 1
        table: FieldPath = ()
        while i < n:
            c = text[i]
            if c in " \t\r":
                i += 1
            elif c == "\n":
                line += 1
                i += 1
            elif c == "#":
                i = self._eol(i)
            elif c == "[":
                array = text.startswith("[[", i)
                start = i + (2 if array else 1)
                end = self._find_unquoted(start, "]")
                if end < 0:  # malformed (tomllib reports it): skip the line
                    i = self._eol(i)
                    continue
                parts = _split_key(text[start:end])
                if parts is not None:
                    table = self._header(parts, array, line)
                # Only a comment may follow a header.
                i = self._eol(end)
            else:
                eq = self._find_unquoted(i, "=")
                if eq < 0:  # malformed (tomllib reports it): skip the line
                    i = self._eol(i)
                    continue
                parts = _split_key(text[i:eq])
                if parts is not None:
                    self._record(table + parts, line)
                i, line = self._skip_value(eq + 1, line, table + parts if parts is not None else None)

    def _header(self, parts: tuple[str, ...], array: bool, line: int) -> FieldPath:
        if array:
            parent = self._resolve(parts[:-1])
            arr = parent + (parts[-1],)
            idx = self._latest.get(arr, -1) + 1
            self._latest[arr] = idx
            path: FieldPath = arr + (idx,)
        else:
            path = self._resolve(parts)
        self._record(path, line)
        return path

    def _eol(self, i: int) -> int:
        """Index of the newline ending the line that contains ``i`` (or the end of text)."""
        nl = self._text.find("\n", i)
        return len(self._text) if nl < 0 else nl

    def _find_unquoted(self, i: int, target: str) -> int:
        """Index of ``target`` on the current line outside of quotes, or -1."""
        text = self._text
        n = len(text)
        while i < n:
            c = text[i]
            if c == target:
                return i
            if c == "\n":
                return -1
            if c == '"':
                i = self._skip_basic(i + 1)
                continue
            if c == "'":
                j = text.find("'", i + 1)
                i = n if j < 0 else j + 1
                continue
            i += 1
        return -1

    def _skip_basic(self, i: int) -> int:
        """From just after an opening '"', return the index just after the closing one."""
        text = self._text
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == '"' or c == "\n":
                return i + 1
            i += 1
        return n

    def _skip_value(self, i: int, line: int, path: FieldPath | None = None) -> tuple[int, int]:
        """Skip a value (with nested arrays, inline tables and multi-line strings), recording the
        line of each element of its arrays and each key of its inline tables under ``path`` (the
        value's own path; None: not recorded), so that an issue in the second element of a
        multi-line ``real_server = [ {...}, {...} ]`` names that element's line.

        Returns the index of the newline ending the value and the line
        number at that point.
        """
        text = self._text
        n = len(text)
        depth = 0
        word = 0  # length of the unquoted word that ends at i
        # the open arrays and inline tables: [kind ("a" or "t"), path or None, element index,
        # an element (array) or a key (inline table) comes next]
        stack: list[list[Any]] = []
        expect = path  # the path of the value that starts at the next token
        while i < n:
            c = text[i]
            if stack and stack[-1][3] and c not in " \t\r\n#,]}":
                top = stack[-1]
                top[3] = False
                if top[0] == "a":
                    expect = top[1] + (top[2],) if top[1] is not None else None
                    if expect is not None:
                        self._record(expect, line)
                else:
                    eq = self._find_unquoted(i, "=")
                    if eq >= 0:
                        parts = _split_key(text[i:eq])
                        expect = top[1] + parts if top[1] is not None and parts is not None else None
                        if expect is not None:
                            self._record(expect, line)
                        word = 0
                        i = eq + 1
                        continue
            if c.isalnum() or c in "_+-.:":
                word += 1
                if word > self._longest_word[0]:
                    self._longest_word = (word, line)
                i += 1
                continue
            word = 0
            if c == "\n":
                if depth == 0:
                    return i, line
                line += 1
                i += 1
            elif c == "#":
                i = self._eol(i)
            elif text.startswith('"""', i) or text.startswith("'''", i):
                delim = text[i:i + 3]
                j = i + 3
                while j < n:
                    if delim == '"""' and text[j] == "\\":
                        j += 2
                        continue
                    if text.startswith(delim, j):
                        break
                    j += 1
                # A closing delimiter may be followed by up to two quotes
                # that belong to the content.
                j += 3
                for _ in range(2):
                    if j < n and text[j] == delim[0]:
                        j += 1
                line += text.count("\n", i, min(j, n))
                i = j
            elif c == '"':
                i = self._skip_basic(i + 1)
            elif c == "'":
                j = text.find("'", i + 1)
                i = n if j < 0 else j + 1
            elif c in "[{":
                depth += 1
                if depth > self._deepest[0]:
                    self._deepest = (depth, line)
                # (bounded: a value nested thousands deep records nothing below MAX_RECORD_DEPTH)
                stack.append(["a" if c == "[" else "t", expect if len(stack) < MAX_RECORD_DEPTH else None, 0, True])
                expect = None
                i += 1
            elif c in "]}":
                depth = max(0, depth - 1)
                if stack:
                    stack.pop()
                i += 1
            elif c == "," and stack:
                stack[-1][2] += 1
                stack[-1][3] = True
                i += 1
            else:
                i += 1
        return n, line


def locate(text: str, path: Sequence[PathElem]) -> int | None:
    """The 1-based line of ``text`` where ``path`` is written.

    Falls back to the line of the closest enclosing table header (or key)
    when ``path`` itself is absent; None if nothing of it appears.
    """
    return Locator(text).line(path)
