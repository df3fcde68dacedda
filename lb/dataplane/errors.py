"""Errors every data plane raises (the engine catches these, whatever the backend)."""
from __future__ import annotations


class DataplaneError(Exception):
    """A data plane could not load, attach or apply; the message is for the operator."""


class TableDoesNotFit(DataplaneError):
    """Dataplane.plan: the table cannot be written (a table full, counting draining real
    servers' slots; an unknown scheduler; ...).  Nothing was written; the message says what
    does not fit, one problem per line."""


class ProgramLoadFailed(DataplaneError):
    """Dataplane.apply: a program the table needs (a scheduler's, loaded when a table first
    uses it) did not load.  Nothing of the table was written."""


class ApplyFailed(DataplaneError):
    """Dataplane.apply: a write failed part-way.  ``restored``: the previous table was written
    back (nothing changed), or restoring it failed too and the data plane holds part of each."""

    def __init__(self, message: str, restored: bool):
        super().__init__(message)
        self.restored = restored
