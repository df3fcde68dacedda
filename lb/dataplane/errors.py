"""Errors every data plane raises (the engine catches these, whatever the backend)."""
from __future__ import annotations


class DataplaneError(Exception):
    """A data plane could not load, attach or apply; the message is for the operator."""
