"""The fuzzers' seed: LB_FUZZ_SEED, or a fresh one each run, so that every run (CI's included)
tries inputs no run before it tried; a failure names the seed, which repeats it."""
from __future__ import annotations

import contextlib
import os
import random

SEED = int(os.environ.get("LB_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32))))


@contextlib.contextmanager
def named(seed: int = SEED):
    """a failure inside (an assertion, or an exception the code under test let out) names the seed"""
    try:
        yield
    except Exception as e:
        e.add_note(f"fuzz seed {seed} (LB_FUZZ_SEED={seed} to repeat)")
        raise
