"""Lock and fence tokens: distinct, also between a process and the children it forks."""

from __future__ import annotations

import os

from pipeline.adapters.tokens import fresh_token


def test_tokens_are_32_hex_digits_and_distinct() -> None:
    tokens = {fresh_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in tokens)


def test_a_forked_child_does_not_repeat_its_parent_s_tokens() -> None:
    # A prefork pool child starts with its parent's generator state; unless reseeded it
    # would hand out the very tokens the parent (or its sibling) hands out next.
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        os.write(write_end, fresh_token().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    child_token = os.read(read_end, 64).decode()
    os.close(read_end)
    assert len(child_token) == 32
    assert child_token != fresh_token()
