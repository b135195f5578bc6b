"""Tokens that tell one lock acquisition or one claim from every other, without a syscall.

`uuid.uuid4()` reads 16 bytes from the kernel (getrandom) per token; a stage delivery
makes two (its lock's and its claim's fence), and each system call releases the GIL,
which in a threads worker hands it to another thread (issue 15). These tokens only
need to differ from each other, not to be secret: nobody guesses them to take a lock.
128 bits from a generator of this process, seeded from the kernel's randomness once
and again in each forked child (a pool child must not repeat its parent's tokens).
"""

from __future__ import annotations

import os
import random

_generator = random.Random()
os.register_at_fork(after_in_child=_generator.seed)


def fresh_token() -> str:
    """32 hex digits, as `uuid.uuid4().hex` (128 random bits, where uuid4 has 122)."""
    return f"{_generator.getrandbits(128):032x}"
